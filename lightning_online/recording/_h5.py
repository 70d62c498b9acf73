"""The recording's file format (HDF5, one file per training rank) and the few HDF5 file
operations the writer, the replay and the dataset share.

Where code runs: any thread of any process that opens a recording (the writer thread of a
training rank, the replay's thread, a DataLoader worker, a user's notebook); numpy and h5py
only, h5py imported on first use so that the package imports without it.

Layout (``docs/recording.md``)::

    /                attrs: format, format_version, package_version, created, rank, world_size,
                            solver, study (JSON), fingerprint (JSON), sampler (JSON), seeds (JSON),
                            space_names, space_low, space_high, space_log, bare, n_fields
    /fields/<i>      (N, *shape_i)  every sample's field i, the rows of a run back to back
    /sim_id, /step   (N,)  int64    the run and the time step of each row
    /runs            (R,)  compound sim_id, theta (d,), start, count, status, attempt, session,
                                    seconds: one row per run that ended, in the order they ended
    /n_runs          (1,)  int64    how many rows of /runs are committed (read runs[:n_runs])

Crash safety: the file is created whole (under a temporary name, then renamed), then only ever
appended to in HDF5's single-writer/multiple-reader (SWMR) mode, which orders its writes so that
the file is consistent at every instant; a run's rows are written and flushed before its row of
``/runs``, and ``/n_runs`` last. Between commits the file is closed. A process killed in the
middle of a commit leaves HDF5's "open for writing" flags set: :func:`repair` clears them (what
``h5clear -s --increment`` does), and until then the file opens with ``swmr=True``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "COMPLETED",
    "FAILED",
    "FORMAT",
    "FORMAT_VERSION",
    "SUPERSEDED",
    "files_of",
    "h5py",
    "open_read",
    "rank_path",
    "repair",
    "runs_dtype",
]

FORMAT = "lightning_online.recording"
FORMAT_VERSION = 1
#: ``/runs`` status codes: the run completed; it failed (its samples were streamed all the
#: same); it completed, but a resumed study ran it again (a checkpoint without the buffer).
COMPLETED, FAILED, SUPERSEDED = 1, 2, 3
STATUS_NAMES = {COMPLETED: "completed", FAILED: "failed", SUPERSEDED: "superseded"}

INSTALL_HINT = "recording needs h5py: pip install 'lightning-online[record]' (or pip install h5py)"


def h5py() -> Any:
    """The ``h5py`` module, or an ImportError that says how to install it."""
    try:
        import h5py as mod
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return mod


def runs_dtype(dim: int) -> np.dtype:
    return np.dtype(
        [
            ("sim_id", "<i8"),
            ("theta", "<f8", (dim,)),
            ("start", "<i8"),
            ("count", "<i8"),
            ("status", "i1"),
            ("attempt", "<i4"),
            ("session", "<i4"),
            ("seconds", "<f8"),
        ]
    )


def rank_path(path: str | os.PathLike, rank: int, world_size: int) -> Path:
    """The file of one rank: ``path`` itself for a single rank, ``stem.rank<r>.h5`` under DDP."""
    p = Path(path)
    if world_size <= 1:
        return p
    return p.with_name(f"{p.stem}.rank{rank}{p.suffix}")


def files_of(path: str | os.PathLike | list[str | os.PathLike]) -> list[Path]:
    """The files of a recording: ``path`` (or a list of paths) itself when it exists, else its
    per-rank files ``stem.rank<r>.h5`` in rank order."""
    if isinstance(path, list | tuple):
        out = [q for p in path for q in files_of(p)]
    else:
        p = Path(path)
        if p.exists():
            return [p]
        ranks = sorted(
            p.parent.glob(f"{p.stem}.rank*{p.suffix}"),
            key=lambda q: int(q.stem.rpartition(".rank")[2] or 0),
        )
        out = [q for q in ranks if q.stem.rpartition(".rank")[2].isdigit()]
    if not out:
        raise FileNotFoundError(f"no recording at {path} (nor per-rank files beside it)")
    return out


# ---------------------------------------------------------------------- superblock repair
_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_M = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M


def _lookup3(data: bytes) -> int:
    """Bob Jenkins' lookup3 ``hashlittle`` (initval 0): HDF5's metadata checksum."""
    n = len(data)
    a = b = c = (0xDEADBEEF + n) & _M
    i = 0
    while n > 12:
        x, y, z = struct.unpack_from("<III", data, i)
        a, b, c = (a + x) & _M, (b + y) & _M, (c + z) & _M
        a = (a - c) & _M ^ _rot(c, 4)
        c = (c + b) & _M
        b = (b - a) & _M ^ _rot(a, 6)
        a = (a + c) & _M
        c = (c - b) & _M ^ _rot(b, 8)
        b = (b + a) & _M
        a = (a - c) & _M ^ _rot(c, 16)
        c = (c + b) & _M
        b = (b - a) & _M ^ _rot(a, 19)
        a = (a + c) & _M
        c = (c - b) & _M ^ _rot(b, 4)
        b = (b + a) & _M
        n -= 12
        i += 12
    if n == 0:
        return c
    x, y, z = struct.unpack("<III", data[i : i + n] + b"\0" * (12 - n))
    a, b, c = (a + x) & _M, (b + y) & _M, (c + z) & _M
    c = (c ^ b) - _rot(b, 14) & _M
    a = (a ^ c) - _rot(c, 11) & _M
    b = (b ^ a) - _rot(a, 25) & _M
    c = (c ^ b) - _rot(b, 16) & _M
    a = (a ^ c) - _rot(c, 4) & _M
    b = (b ^ a) - _rot(a, 14) & _M
    c = (c ^ b) - _rot(b, 24) & _M
    return c


class WriterLock:
    """An exclusive open-file-description lock on a byte far past the data of a recording,
    held by its writer for as long as it writes (released by the kernel when the process
    dies, even by kill -9; it does not touch the locks HDF5 takes itself)."""

    _BYTE = 1 << 62

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR)
        if not hasattr(fcntl, "F_OFD_SETLK"):  # not Linux: no such lock, nothing checked
            return
        try:
            fcntl.fcntl(self.fd, fcntl.F_OFD_SETLK, _lock_struct(fcntl.F_WRLCK, self._BYTE))
        except OSError as exc:
            os.close(self.fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise BlockingIOError(
                    f"{path} is being written by another process (a study recording to it)"
                ) from exc
            raise

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _lock_struct(kind: int, start: int) -> bytes:
    # struct flock: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid (0)
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, start, 1, 0)


def repair(path: str | os.PathLike) -> bool:
    """Clear the "open for writing" flags a killed writer left in ``path``'s superblock and set
    its end-of-file address to the file's size (``h5clear -s --increment``); False when there
    was nothing to clear. Refused while a writer holds the file."""
    path = Path(path)
    lock = WriterLock(path)  # raises while a study writes it
    try:
        with open(path, "r+b") as fh:
            raw = bytearray(fh.read(64))
            if raw[:8] != _SIGNATURE or raw[8] < 2:
                raise ValueError(f"{path} is not an HDF5 file of superblock version >= 2")
            o = raw[9]
            end = 12 + 4 * o
            if raw[11] == 0:
                return False
            eof_at = 12 + 2 * o
            fmt = {4: "<I", 8: "<Q"}[o]
            eof = struct.unpack_from(fmt, raw, eof_at)[0]
            raw[11] = 0
            struct.pack_into(fmt, raw, eof_at, max(eof, os.fstat(fh.fileno()).st_size))
            struct.pack_into("<I", raw, end, _lookup3(bytes(raw[:end])))
            fh.seek(0)
            fh.write(raw[: end + 4])
        return True
    finally:
        lock.release()


def open_read(path: str | os.PathLike) -> Any:
    """``path`` opened read-only: plainly, or with ``swmr=True`` when a killed writer left its
    flags set (consistent all the same; nothing is changed)."""
    h5 = h5py()
    try:
        return h5.File(path, "r")
    except OSError as exc:
        if "h5clear" not in str(exc):
            raise
        return h5.File(path, "r", libver="latest", swmr=True)


def committed_runs(f: Any) -> np.ndarray:
    """The committed rows of ``/runs`` of an open recording."""
    return f["runs"][: int(f["n_runs"][0])]


def read_json(f: Any, name: str) -> Any:
    raw = f.attrs.get(name)
    return None if raw is None else json.loads(raw)
