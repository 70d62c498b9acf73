"""Wire format of one training sample: a fixed int64 header, then the raw array bytes.

No pickles on the data path: a sample is encoded once in the solver's process, forwarded as an
opaque byte buffer by the MPI worker, and decoded on the training rank into zero-copy numpy views
of the received buffer. The header is checked (magic number, field count, dtype codes, sizes) so a
corrupted or foreign message fails loudly instead of being misread.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "DTYPES",
    "MAX_DIMS",
    "MAX_FIELDS",
    "MAX_REASON",
    "Field",
    "Sample",
    "all_finite",
    "cap_text",
    "check_step",
    "coalesce_limit",
    "decode_end",
    "decode_sample",
    "encode_end",
    "encode_sample",
    "read_header",
    "signature",
]

MAGIC = 0x4C4F4E4C  # "LONL": the solver yielded a tuple of arrays
MAGIC_BARE = 0x4C4F4E42  # "LONB": the solver yielded one bare array (collated to a tensor)
MAX_DIMS = 8
MAX_FIELDS = 16
# Samples of one run travel several to a message when they queue up (fewer, larger messages):
# at most COALESCE_SAMPLES of them and about COALESCE_BYTES per message.
COALESCE_SAMPLES = 64
COALESCE_BYTES = 1 << 20
#: Bytes of UTF-8 kept of any failure reason or program output (a solver's 64 MiB exception
#: message or a program's endless line must not live in memory, the log and every checkpoint).
MAX_REASON = 8192
# MPI message tags between a rank's receiver and its workers.
TAG_TASK, TAG_STOP, TAG_END, TAG_BYE, TAG_FATAL = range(11, 16)
# A message of k samples (1 <= k <= COALESCE_SAMPLES) of equal size has tag TAG_SAMPLES + k.
TAG_SAMPLES = 100
TAG_SAMPLES_MAX = TAG_SAMPLES + COALESCE_SAMPLES
#: Why a run that ended without error but sent no sample fails, on every path (a Python solver's
#: sandbox, an external program, the study's ledger): it cannot train anything.
NO_SAMPLE = "the solver yielded no sample"
_HEAD = 4  # magic, sim_id, step, n_fields
_FIELD = 2 + MAX_DIMS  # dtype code, ndim, shape[MAX_DIMS]

# Fixed codes rather than dtype strings: the header stays int64-only and checkable.
DTYPES: tuple[np.dtype, ...] = tuple(
    np.dtype(t)
    for t in (
        "float32",
        "float64",
        "float16",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "bool",
        "complex64",
        "complex128",
    )
)
_CODE = {dt: i for i, dt in enumerate(DTYPES)}


class Sample(NamedTuple):
    """One decoded time step of one simulation."""

    sim_id: int
    step: int
    fields: tuple[np.ndarray, ...]
    signature: tuple[int, ...]
    bare: bool = False


def all_finite(a: np.ndarray) -> bool:
    """No NaN or Inf in a float or complex array (other dtypes always are). Two reductions
    that propagate NaN and show +-Inf, without a temporary the size of the array."""
    if a.dtype.kind not in "fc" or a.size == 0:
        return True
    if a.dtype.kind == "c":
        a = np.ascontiguousarray(a).view(a.real.dtype)
    return bool(np.isfinite(a.max()) and np.isfinite(a.min()))


def check_step(fields: tuple[np.ndarray, ...], step: int, first: list[tuple] | None) -> str | None:
    """Why a solver's time step must be rejected, or None: a field with NaN or Inf, or dtypes
    and shapes that differ from the run's first step (``first``: its ``(dtype.str, shape)``
    list). Checked where samples are produced: in the solver's sandbox for a Python solver,
    in the receiver for an external program; the training rank checks every message against
    the study's first sample (``_store.SlotStore.check``)."""
    for i, a in enumerate(fields):
        if not all_finite(a):
            return f"step {step}: field {i} contains NaN or Inf"
    sig = [(a.dtype.str, a.shape) for a in fields]
    if first is not None and sig != first:
        return (
            f"step {step}: fields {_readable(sig)} differ from the first step's "
            f"{_readable(first)} (dtype or shape)"
        )
    return None


def _readable(sig: list[tuple]) -> str:
    """``float32(6,), float32(16, 16)`` for ``[("<f4", (6,)), ("<f4", (16, 16))]``."""
    return ", ".join(f"{np.dtype(code).name}{tuple(shape)}" for code, shape in sig)


def cap_text(
    text: str | bytes | bytearray | memoryview | np.ndarray, limit: int = MAX_REASON
) -> str:
    """``text`` (a str, or UTF-8 bytes of any length) cut to at most ``limit`` bytes of UTF-8:
    its first quarter and its end (a traceback ends with what matters), joined by a note of how
    much was cut. Only what is kept is copied or decoded. Any process."""
    if isinstance(text, str):
        if len(text) <= limit // 4:  # at most 4 bytes a character: short enough as it is
            return text
        raw: bytes | bytearray | memoryview | np.ndarray = text.encode("utf-8", "replace")
    else:
        raw = text
    n = len(raw)
    if n <= limit:
        if isinstance(text, str):
            return text
        # undecodable bytes become 3-byte replacement characters: cap the text once more
        return cap_text(bytes(raw).decode("utf-8", "replace"), limit)
    note = f"\n[... {n} bytes in all, cut ...]\n"
    room = max(0, limit - len(note))
    head, tail = room // 4, room - room // 4
    # str: cut characters at the ends are dropped; bytes: bad bytes show as U+FFFD (3 bytes
    # each), so the text is capped once more
    errors = "ignore" if isinstance(text, str) else "replace"
    out = (
        bytes(raw[:head]).decode("utf-8", errors)
        + note
        + bytes(raw[n - tail :]).decode("utf-8", errors)
    )
    return out if isinstance(text, str) else cap_text(out, limit)


def coalesce_limit(sample_bytes: int) -> int:
    """How many samples of this size one message may carry (at least one)."""
    return max(1, min(COALESCE_SAMPLES, COALESCE_BYTES // max(1, sample_bytes)))


def _pad8(n: int) -> int:
    return (n + 7) & ~7


_IDS = struct.Struct("<qq")  # sim_id and step, at bytes 8..24 of the header
#: The fixed header every sample record starts with (magic, sim_id, step, n_fields: int64 each):
#: the smallest record the receiver takes.
HEADER_BYTES = 8 * _HEAD


def set_record_ids(records: np.ndarray, sim_ids: Any, steps: Any) -> None:
    """Write ``sim_ids`` and ``steps`` (scalars or one per row) into ``(k, size)`` uint8 sample
    records, in place (a C-contiguous array)."""
    ids = records[:, 8 : 8 + _IDS.size].view(np.int64)
    ids[:, 0] = sim_ids
    ids[:, 1] = steps


def record_ids(records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sim_ids, steps)`` of ``(k, size)`` uint8 sample records (size >= HEADER_BYTES)."""
    ids = np.ascontiguousarray(records[:, 8 : 8 + _IDS.size]).view(np.int64)
    return ids[:, 0].copy(), ids[:, 1].copy()


_LAYOUTS: dict[tuple, tuple[np.ndarray, list[tuple[int, int, int]], int]] = {}


def _layout(
    arrays: list[np.ndarray], bare: bool
) -> tuple[np.ndarray, list[tuple[int, int, int]], int]:
    """The header bytes (sim_id and step 0), each field's (offset, bytes, padded bytes), and
    the total size of a sample of these arrays; refuses what the wire cannot carry."""
    header = np.zeros(_HEAD + _FIELD * len(arrays), dtype=np.int64)
    header[:_HEAD] = (MAGIC_BARE if bare else MAGIC, 0, 0, len(arrays))
    offsets = []
    pos = header.nbytes
    for i, a in enumerate(arrays):
        code = _CODE.get(a.dtype)
        if code is None:
            raise TypeError(
                f"field {i} has dtype {a.dtype}, which cannot be streamed; "
                f"use one of {[str(d) for d in DTYPES]}"
            )
        if a.ndim > MAX_DIMS:
            raise ValueError(f"field {i} has {a.ndim} dimensions; at most {MAX_DIMS} are supported")
        off = _HEAD + _FIELD * i
        header[off] = code
        header[off + 1] = a.ndim
        header[off + 2 : off + 2 + a.ndim] = a.shape
        offsets.append((pos, a.nbytes, _pad8(a.nbytes)))
        pos += _pad8(a.nbytes)
    return header.view(np.uint8), offsets, pos


def encode_sample(
    sim_id: int,
    step: int,
    fields: tuple[np.ndarray, ...],
    bare: bool = False,
    alloc: Callable[[int], np.ndarray] | None = None,
) -> np.ndarray:
    """Pack arrays into one contiguous uint8 buffer (a single copy of the data).

    ``alloc(nbytes)`` gives the buffer to write into (e.g. a region of shared memory); by
    default a new array.

    Raises ``TypeError``/``ValueError`` for what the wire cannot carry (object arrays, too many
    dimensions or fields), with a message meant for the author of the solver.
    """
    if not 1 <= len(fields) <= MAX_FIELDS:
        raise ValueError(f"a sample must have between 1 and {MAX_FIELDS} arrays, got {len(fields)}")
    arrays = [np.ascontiguousarray(a) for a in fields]
    arrays = [a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("=")) for a in arrays]
    # The header is the same for every step of a study but for sim_id and step: made once per
    # signature (a solver's Python per step is what bounds small samples), then copied.
    key = (bare, *((a.dtype, a.shape) for a in arrays))
    layout = _LAYOUTS.get(key)
    if layout is None:
        layout = _layout(arrays, bare)
        if len(_LAYOUTS) >= 64:
            _LAYOUTS.clear()
        _LAYOUTS[key] = layout
    header, offsets, total = layout
    buf = np.empty(total, dtype=np.uint8) if alloc is None else alloc(total)
    buf[: len(header)] = header
    _IDS.pack_into(buf, 8, sim_id, step)  # type: ignore[arg-type]
    for a, (pos, size, padded) in zip(arrays, offsets, strict=True):
        buf[pos : pos + size] = a.reshape(-1).view(np.uint8)
        if padded != size:
            buf[pos + size : pos + padded] = 0
    return buf


class Field(NamedTuple):
    """Where one field of a sample lies in its wire buffer."""

    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int  # bytes from the start of the buffer
    nbytes: int


def read_header(buf: np.ndarray) -> tuple[np.ndarray, list[Field]]:
    """The checked int64 header of a buffer made by :func:`encode_sample` and the place of each
    field; raises ``ValueError`` for anything that is not a whole, sound sample."""
    if buf.nbytes < 8 * _HEAD:
        raise ValueError(f"sample message too short ({buf.nbytes} bytes)")
    head = np.frombuffer(buf, dtype=np.int64, count=_HEAD)
    if head[0] not in (MAGIC, MAGIC_BARE):
        raise ValueError("sample message has a bad magic number (not a lightning_online sample)")
    n_fields = int(head[3])
    if not 1 <= n_fields <= MAX_FIELDS:
        raise ValueError(f"sample message announces {n_fields} fields")
    if buf.nbytes < 8 * (_HEAD + _FIELD * n_fields):
        raise ValueError(
            f"sample message of {buf.nbytes} bytes is too short for the header of {n_fields} fields"
        )
    header = np.frombuffer(buf, dtype=np.int64, count=_HEAD + _FIELD * n_fields)
    pos = header.nbytes
    fields = []
    for i in range(n_fields):
        off = _HEAD + _FIELD * i
        code, ndim = int(header[off]), int(header[off + 1])
        if not 0 <= code < len(DTYPES) or not 0 <= ndim <= MAX_DIMS:
            raise ValueError(f"sample message field {i} has a bad header ({code=}, {ndim=})")
        dtype = DTYPES[code]
        shape = tuple(int(s) for s in header[off + 2 : off + 2 + ndim])
        if any(n < 0 for n in shape):
            raise ValueError(f"sample message field {i} has a negative extent {shape}")
        nbytes = math.prod(shape) * dtype.itemsize  # Python integers: no wrap-around
        if pos + nbytes > buf.nbytes:
            raise ValueError(f"sample message field {i} runs past the end of the message")
        fields.append(Field(dtype, shape, pos, nbytes))
        pos += _pad8(nbytes)
    return header, fields


def decode_sample(buf: np.ndarray) -> Sample:
    """Decode a buffer made by :func:`encode_sample`; the arrays are views into ``buf``."""
    header, fields = read_header(buf)
    arrays = tuple(
        np.frombuffer(
            buf, dtype=f.dtype, count=f.nbytes // f.dtype.itemsize, offset=f.offset
        ).reshape(f.shape)
        for f in fields
    )
    bare = bool(header[0] == MAGIC_BARE)
    return Sample(int(header[1]), int(header[2]), arrays, (bare, *signature(header)), bare)


def signature(header: np.ndarray) -> tuple[int, ...]:
    """What must match between samples of one study: field count, dtypes and shapes."""
    return tuple(int(v) for v in header[3:])


def describe(sig: tuple[int, ...]) -> str:
    """Readable form of a signature for error messages: ``float32(6,), float32(1024,)``."""
    bare, n = sig[0], sig[1]
    parts = []
    for i in range(n):
        off = 2 + _FIELD * i
        code, ndim = sig[off], sig[off + 1]
        shape = tuple(sig[off + 2 : off + 2 + ndim])
        parts.append(f"{DTYPES[code]}{shape}")
    return parts[0] if bare else "(" + ", ".join(parts) + ")"


_END = struct.Struct("<qqqd")  # sim_id, ok, n_steps, seconds


def encode_end(sim_id: int, ok: bool, n_steps: int, seconds: float, reason: str = "") -> np.ndarray:
    """End-of-run report from a worker: fixed struct followed by a UTF-8 reason (capped)."""
    data = _END.pack(sim_id, int(ok), n_steps, seconds) + cap_text(reason).encode(
        "utf-8", "replace"
    )
    return np.frombuffer(data, dtype=np.uint8).copy()


def decode_end(buf: np.ndarray) -> tuple[int, bool, int, float, str]:
    """``(sim_id, ok, n_steps, seconds, reason)`` of :func:`encode_end`'s report, the reason
    capped (:data:`MAX_REASON`); ``ValueError`` for a report that is not one."""
    if buf.nbytes < _END.size:
        raise ValueError(f"run report of {buf.nbytes} bytes (at least {_END.size} expected)")
    # numpy arrays are buffers (typed so for Python >= 3.12 only)
    sim_id, ok, n_steps, seconds = _END.unpack_from(buf)  # type: ignore[arg-type]
    if ok not in (0, 1) or n_steps < 0 or not math.isfinite(seconds):
        raise ValueError(f"run report with {ok=}, {n_steps=}, {seconds=}")
    # Only what is kept is copied and decoded: a reason of gigabytes costs no more than a short one.
    reason = cap_text(buf[_END.size :])
    return sim_id, bool(ok), n_steps, seconds, reason
