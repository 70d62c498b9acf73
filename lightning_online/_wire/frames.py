"""The two pipe framings of the package, in one place (standard library only: the launch helper
imports this module under ``python -S``).

* **Sandbox frames** (a worker and its solver sandbox, ``_transport.runner`` and
  ``_transport.worker``): ``uint64 length, uint8 kind`` then ``length`` bytes. Kinds: ``S`` a
  sample in the ``samples`` format, ``R`` a sample left in the shared ring (:data:`REF`), ``D``
  the run is done (``int64`` steps), ``E`` it failed (text), ``K`` the sandbox is ready; to the
  sandbox: ``P`` the pickled solver, ``T`` a parameter vector to run.
* **Launch frames** (a training rank and its launch helper, ``external._hub`` and
  ``external._launchd``): ``uint32 length`` then that many bytes of JSON, in both directions.

Code here runs in whichever process reads or writes the pipe: a worker, a sandbox, the receiver
thread of a rank, the launch helper.
"""

from __future__ import annotations

import json
import select
import struct
import time
from collections.abc import Callable
from typing import Any, BinaryIO

__all__ = [
    "MAX_FRAME",
    "REF",
    "FrameReader",
    "encode_frame",
    "read_exact",
    "read_frame",
    "write_frame",
]

# -- sandbox frames ---------------------------------------------------------------------------
_LEN = struct.Struct("<QB")
REF = struct.Struct("<QQQ")  # an R frame: offset in the ring, bytes, ring position after it


def write_frame(out: BinaryIO, kind: bytes, payload: Any) -> None:
    # numpy arrays are buffers (typed so for Python >= 3.12 only)
    data = memoryview(payload).cast("B") if not isinstance(payload, bytes) else payload
    out.write(_LEN.pack(len(data), kind[0]))
    out.write(data)
    out.flush()


_GROW = 1 << 20  # a frame's buffer grows with the bytes that arrive, this much at first


def read_exact(
    inp: BinaryIO, n: int, idle: Callable[[float], None] | None = None
) -> bytearray | None:
    """Read exactly n bytes, or None at end of file (the other side died or closed the pipe).

    The buffer grows (doubling) as bytes arrive rather than being allocated from ``n``: a frame
    that announces gigabytes and then ends costs no more memory than what was really sent.
    With ``idle``, it is called (with the seconds since bytes last arrived) every 50 ms that
    nothing arrives, and may raise to give up: a writer that stops mid-frame cannot hold the
    reader forever."""
    buf = bytearray(min(n, _GROW))
    view = memoryview(buf)
    got = 0
    since = time.monotonic()
    while got < n:
        if got == len(buf):
            view.release()
            buf.extend(bytes(min(len(buf), n - len(buf))))
            view = memoryview(buf)
        if idle is not None:
            while not select.select([inp], [], [], 0.05)[0]:
                idle(time.monotonic() - since)
        k = inp.readinto(view[got:])  # type: ignore[attr-defined]
        if not k:
            return None
        got += k
        since = time.monotonic()
    view.release()
    return buf


def read_frame(
    inp: BinaryIO, idle: Callable[[float], None] | None = None
) -> tuple[bytes, bytearray] | None:
    """One frame, or None at end of file; ``idle`` as for :func:`read_exact`."""
    head = read_exact(inp, _LEN.size, idle)
    if head is None:
        return None
    length, kind = _LEN.unpack(head)
    payload = read_exact(inp, length, idle) if length else bytearray()
    if payload is None:
        return None
    return bytes([kind]), payload


# -- launch frames ----------------------------------------------------------------------------
_FRAME = struct.Struct("<I")
MAX_FRAME = 64 << 20  # a launch frame carries a whole environment; nothing legitimate is near


def encode_frame(obj: Any) -> bytes:
    """One frame of the pipe protocol (both directions)."""
    data = json.dumps(obj, separators=(",", ":")).encode()
    return _FRAME.pack(len(data)) + data


class FrameReader:
    """Splits a byte stream into frames; ``feed`` returns the decoded objects it completed."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        self._buf += data
        out = []
        pos = 0
        while len(self._buf) - pos >= _FRAME.size:
            (n,) = _FRAME.unpack_from(self._buf, pos)
            if n > MAX_FRAME:
                raise ValueError(f"launcher pipe: a frame of {n} bytes (at most {MAX_FRAME})")
            if len(self._buf) - pos - _FRAME.size < n:
                break
            start = pos + _FRAME.size
            out.append(json.loads(bytes(self._buf[start : start + n])))
            pos = start + n
        del self._buf[:pos]
        return out
