"""Wire protocol between an external solver program and its :class:`~lightning_online.ExternalSolver`.

The program connects with a TCP socket to the address it finds in its environment and sends
messages; there are no replies. A run may also have several senders, *parts* (each MPI rank of
the program sending its share instead of gathering on one rank): one connection per part; the
receiving side reads step k from every part in part order and concatenates each field along its
first axis (a part without a share of a field sends it with a first extent of 0). Everything is little-endian. Every message starts with the same
32-byte header, checked field by field on the receiving side::

    uint32 magic          0x314E4F4C ("LON1" in memory)
    uint16 version        2
    uint16 kind           1 HELLO, 2 STEP, 3 CLOSE, 4 ERROR
    uint32 n_fields       STEP: number of fields (1..16); otherwise 0
    uint32 reserved       0
    int64  step           STEP: index of the step (0, 1, ...); CLOSE: number of steps sent
    uint64 payload_bytes  bytes that follow the header

HELLO (first message): payload = ``uint32 part, uint32 n_parts``, then the token from
``LIGHTNING_ONLINE_TOKEN`` (ASCII). A single sender is part 0 of 1.
STEP: ``n_fields`` descriptors of 128 bytes, then each field's raw bytes (C order), each padded
with zeros to a multiple of 8 bytes::

    char   name[48]       UTF-8, NUL-padded, at most 47 bytes
    int32  dtype          code in DTYPES (0 float32, 1 float64, ... see ``_wire.DTYPES``)
    int32  ndim           0..8
    int64  shape[8]       unused entries 0
    uint64 nbytes         prod(shape) * itemsize, checked

CLOSE: no payload; this part is complete. ERROR: payload = UTF-8 message; the run failed.
A connection that ends without CLOSE or ERROR is a crashed run. Each part counts its own steps.

This module is the single definition used by the Python client, the receiving side and the
tests; ``csrc/lightning_online.h`` mirrors it for C.

Where code runs: encoding in the solver program (the Python client; the C client mirrors it),
decoding in the receiver thread of a training rank (``external._hub``).
"""

from __future__ import annotations

import math
import struct

import numpy as np

from lightning_online._wire.samples import DTYPES, MAX_DIMS, MAX_FIELDS

__all__ = [
    "CLOSE",
    "DESCRIPTOR",
    "ERROR",
    "HEADER",
    "HELLO",
    "MAGIC",
    "STEP",
    "VERSION",
    "ProtocolError",
    "decode_hello",
    "decode_step",
    "encode_header",
    "encode_hello",
    "encode_step",
    "pad8",
]

#: The environment a launched program finds: where to connect, its token, its parameters.
ENV_ADDRESS = "LIGHTNING_ONLINE_ADDRESS"
ENV_TOKEN = "LIGHTNING_ONLINE_TOKEN"
ENV_PARAMETERS = "LIGHTNING_ONLINE_PARAMETERS"
MAGIC = 0x314E4F4C
VERSION = 2
MAX_PARTS = 65536
HELLO, STEP, CLOSE, ERROR = 1, 2, 3, 4
KINDS = {HELLO: "HELLO", STEP: "STEP", CLOSE: "CLOSE", ERROR: "ERROR"}
NAME_BYTES = 48

HEADER = struct.Struct("<IHHIIqQ")
_HELLO = struct.Struct("<II")
DESCRIPTOR = np.dtype(
    [
        ("name", f"S{NAME_BYTES}"),
        ("dtype", "<i4"),
        ("ndim", "<i4"),
        ("shape", "<i8", (MAX_DIMS,)),
        ("nbytes", "<u8"),
    ]
)
assert HEADER.size == 32 and DESCRIPTOR.itemsize == 128

_CODE = {dt: i for i, dt in enumerate(DTYPES)}


class ProtocolError(ValueError):
    """A message that does not follow the protocol (bad magic, version, sizes, names...)."""


def pad8(n: int) -> int:
    return (n + 7) & ~7


def encode_header(kind: int, payload_bytes: int, n_fields: int = 0, step: int = 0) -> bytes:
    return HEADER.pack(MAGIC, VERSION, kind, n_fields, 0, step, payload_bytes)


def encode_hello(token: str, part: int = 0, n_parts: int = 1) -> bytes:
    """A whole HELLO message (header and payload)."""
    if not 1 <= n_parts <= MAX_PARTS or not 0 <= part < n_parts:
        raise ValueError(f"part must be in [0, n_parts) and 1 <= n_parts <= {MAX_PARTS}")
    payload = _HELLO.pack(part, n_parts) + token.encode("ascii")
    return encode_header(HELLO, len(payload)) + payload


def decode_hello(payload: bytes | bytearray | memoryview) -> tuple[int, int, bytes]:
    """``(part, n_parts, token)`` of a HELLO payload; ``ProtocolError`` for anything else."""
    if len(payload) < _HELLO.size:
        raise ProtocolError(f"HELLO payload of {len(payload)} bytes is too short")
    part, n_parts = _HELLO.unpack_from(payload)
    if not 1 <= n_parts <= MAX_PARTS or not part < n_parts:
        raise ProtocolError(f"HELLO announces part {part} of {n_parts}")
    return part, n_parts, bytes(payload[_HELLO.size :])


def decode_header(data: bytes | bytearray | memoryview) -> tuple[int, int, int, int]:
    """Check a header; return ``(kind, n_fields, step, payload_bytes)``. ``ProtocolError`` for
    anything that is not a sound header (the caller checks ``payload_bytes`` against its limit
    before it allocates anything)."""
    if len(data) != HEADER.size:
        raise ProtocolError(f"a header is {HEADER.size} bytes, got {len(data)}")
    magic, version, kind, n_fields, reserved, step, payload = HEADER.unpack(data)
    if magic != MAGIC:
        raise ProtocolError(
            f"bad magic number {magic:#010x} (expected {MAGIC:#010x}): the program does not "
            "speak the lightning_online protocol, or the stream is out of step"
        )
    if version != VERSION:
        raise ProtocolError(f"protocol version {version}; this side speaks version {VERSION}")
    if kind not in KINDS:
        raise ProtocolError(f"unknown message kind {kind}")
    if reserved != 0:
        raise ProtocolError("the reserved header word is not 0")
    if kind == STEP and not 1 <= n_fields <= MAX_FIELDS:
        raise ProtocolError(f"a step must have 1 to {MAX_FIELDS} fields, got {n_fields}")
    if kind != STEP and n_fields != 0:
        raise ProtocolError(f"a {KINDS[kind]} message announces {n_fields} fields")
    return kind, n_fields, step, payload


def encode_step(step: int, fields: dict[str, np.ndarray]) -> list[bytes | memoryview]:
    """Header, descriptors and data of one step as a list of buffers (no copy of the arrays
    beyond making them contiguous), ready for ``socket.sendmsg``."""
    if not 1 <= len(fields) <= MAX_FIELDS:
        raise ValueError(f"a step must have 1 to {MAX_FIELDS} fields, got {len(fields)}")
    desc = np.zeros(len(fields), dtype=DESCRIPTOR)
    chunks: list[bytes | memoryview] = []
    total = desc.nbytes
    for i, (name, value) in enumerate(fields.items()):
        a = np.ascontiguousarray(value)
        if not a.dtype.isnative:
            a = a.astype(a.dtype.newbyteorder("="))
        code = _CODE.get(a.dtype)
        if code is None:
            raise TypeError(
                f"field {name!r} has dtype {a.dtype}; use one of {[str(d) for d in DTYPES]}"
            )
        raw = name.encode("utf-8")
        if not raw or len(raw) >= NAME_BYTES:
            raise ValueError(f"field name {name!r} must be 1 to {NAME_BYTES - 1} bytes of UTF-8")
        if a.ndim > MAX_DIMS:
            raise ValueError(f"field {name!r} has {a.ndim} dimensions; at most {MAX_DIMS}")
        desc[i]["name"] = raw
        desc[i]["dtype"] = code
        desc[i]["ndim"] = a.ndim
        desc[i]["shape"][: a.ndim] = a.shape
        desc[i]["nbytes"] = a.nbytes
        chunks.append(memoryview(a.reshape(-1).view(np.uint8)))  # type: ignore[arg-type]
        if pad8(a.nbytes) != a.nbytes:
            chunks.append(bytes(pad8(a.nbytes) - a.nbytes))
        total += pad8(a.nbytes)
    head = encode_header(STEP, total, len(fields), step)
    return [head, desc.tobytes(), *chunks]


def decode_step(n_fields: int, payload: bytearray | memoryview) -> dict[str, np.ndarray]:
    """Check the descriptors of a STEP payload and return its fields as views of ``payload``.

    Every size is computed with Python integers (no wrap-around) and checked against the bytes
    present before a view is made; anything unsound raises ``ProtocolError``."""
    view = memoryview(payload).cast("B")
    if not 1 <= n_fields <= MAX_FIELDS:
        raise ProtocolError(f"a step must have 1 to {MAX_FIELDS} fields, got {n_fields}")
    need = n_fields * DESCRIPTOR.itemsize
    if len(view) < need:
        raise ProtocolError(f"step payload of {len(view)} bytes cannot hold {n_fields} fields")
    desc = np.frombuffer(view, dtype=DESCRIPTOR, count=n_fields)
    pos = need
    out: dict[str, np.ndarray] = {}
    for i, d in enumerate(desc):
        try:
            name = bytes(d["name"]).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"field {i} has a name that is not UTF-8") from exc
        code, ndim = int(d["dtype"]), int(d["ndim"])
        if not name:
            raise ProtocolError(f"field {i} has an empty name")
        if name in out:
            raise ProtocolError(f"field {name!r} appears twice in one step")
        if not 0 <= code < len(DTYPES):
            raise ProtocolError(f"field {name!r} has an unknown dtype code {code}")
        if not 0 <= ndim <= MAX_DIMS:
            raise ProtocolError(f"field {name!r} has {ndim} dimensions (at most {MAX_DIMS})")
        shape = tuple(int(s) for s in d["shape"][:ndim])
        if any(s < 0 for s in shape) or any(int(s) != 0 for s in d["shape"][ndim:]):
            raise ProtocolError(f"field {name!r} has a bad shape {list(d['shape'])} ({ndim=})")
        dtype = DTYPES[code]
        count = math.prod(shape)  # Python integers: a huge shape cannot wrap around
        nbytes = count * dtype.itemsize
        if int(d["nbytes"]) != nbytes:
            raise ProtocolError(
                f"field {name!r}: nbytes {int(d['nbytes'])} does not match "
                f"{dtype}{shape} ({nbytes} bytes)"
            )
        if pos + pad8(nbytes) > len(view):
            raise ProtocolError(f"field {name!r} runs past the end of the step message")
        out[name] = np.frombuffer(view, dtype=dtype, count=count, offset=pos).reshape(shape)
        pos += pad8(nbytes)
    if pos != len(view):
        raise ProtocolError(f"step message has {len(view) - pos} bytes after its last field")
    return out
