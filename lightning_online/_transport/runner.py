"""The solver's sandbox: a plain (non-MPI) process that runs solver calls for one MPI worker.

Why a separate process: with the mpich wheel, an MPI process that dies without ``MPI_Finalize``
(segfault, signal, ``os._exit``) makes the process manager kill the whole job, trainer included.
Solver code therefore never runs inside an MPI process; the worker (``_worker.py``) starts this
process, feeds it parameters over a pipe and relays what it yields. If the solver crashes, only this
process dies and the worker reports how it ended.

Pipe protocol, both directions: frames of ``<u8 length><1 byte kind><payload>``.
worker -> runner: ``P`` pickled solver (first frame), ``T`` task (float64 [sim_id, *theta]).
runner -> worker: ``R`` sample written into the shared ring (``<u8 offset, u8 nbytes, u8 end>``),
``S`` sample too large for the ring (wire blob, see ``_wire``), ``D`` run done (int64 n_steps),
``E`` run failed (UTF-8 reason), ``K`` (once, after ``P``) the solver is loaded: its start-up does
not count toward a run's ``run_timeout``.

Samples do not cross the pipe: the runner encodes each one straight into a ring of shared memory
(a ``memfd`` the worker creates and maps too) and sends only its place in the ring; the worker
sends it to the training rank from there and hands the space back by advancing the ring's
``tail`` counter once the send has completed. A full ring blocks the runner (backpressure), a
crashed runner leaves the worker with nothing but whole, announced samples.
"""

from __future__ import annotations

import mmap
import os
import signal
import struct
import sys
import time
import traceback
from typing import BinaryIO

import numpy as np

from lightning_online._wire.frames import REF, read_frame, write_frame
from lightning_online._wire.samples import NO_SAMPLE, cap_text, check_step, encode_sample

RING_BYTES = 16 << 20  # per worker; samples above a quarter of it go through the pipe


class Ring:
    """A ring of shared memory for samples, one writer (runner) and one reader (worker).

    Layout: 64 bytes of header (``uint64 tail`` at 0, written by the reader only), then
    ``size`` bytes of data. The writer owns ``head``; both count bytes since the start, so that
    ``head - tail`` is the space in use. A sample never wraps around the end: the writer skips
    the rest of the ring instead.
    """

    HEAD = 64

    def __init__(self, fd: int) -> None:
        self.mm = mmap.mmap(fd, 0)
        self.size = len(self.mm) - self.HEAD
        self.data = np.frombuffer(self.mm, dtype=np.uint8, offset=self.HEAD)
        self.tail = np.frombuffer(self.mm, dtype=np.uint64, count=1)
        self.head = 0

    @staticmethod
    def create(size: int = RING_BYTES) -> int:
        """A new shared memory file of the right size (the reader's side); its descriptor."""
        fd = os.memfd_create("lightning-online-ring", os.MFD_CLOEXEC)
        os.ftruncate(fd, Ring.HEAD + size)
        return fd

    # -- writer (runner)
    def reserve(self, n: int) -> tuple[int, int] | None:
        """``(offset, end)`` of n free bytes, waiting while the ring is full; None when a
        sample of n bytes is too large for it."""
        if n > self.size // 4:
            return None
        pos = self.head % self.size
        start = self.head + (self.size - pos if pos + n > self.size else 0)
        delay = 1e-5
        while start + n - int(self.tail[0]) > self.size:  # full: the trainer is not taking
            time.sleep(delay)
            delay = min(2 * delay, 2e-3)
        self.head = start + n
        return start % self.size, self.head

    # -- reader (worker)
    def release(self, end: int) -> None:
        """Everything before ring position ``end`` has been sent."""
        self.tail[0] = end

    def used(self, end: int) -> int:
        return end - int(self.tail[0])


# Variables of the MPI process manager: a process started from an MPI process (a solver sandbox,
# an external program's launcher) must not believe it belongs to that MPI job.
_MPI_ENV_PREFIXES = ("PMI_", "PMIX_", "HYDI_", "HYDRA_", "MPIR_", "MPICH_", "OMPI_")


def mpi_free_environ() -> dict[str, str]:
    """This process's environment without the MPI process manager's variables."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_MPI_ENV_PREFIXES)}


def signal_name(returncode: int) -> str:
    """``SIGSEGV`` for a process killed by signal 11 (returncode -11), as subprocess reports it."""
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies, so that no solver is ever
    orphaned. Called by the process itself, not as a ``preexec_fn`` (it imports ctypes, which a
    child forked from a threaded process must not do; ``_launchd`` resolves ``prctl`` before it
    forks)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, sig)  # PR_SET_PDEATHSIG
        except OSError:  # pragma: no cover - best effort
            pass


def _as_fields(item: object, step: int) -> tuple[np.ndarray, ...]:
    if not isinstance(item, tuple | list):
        raise TypeError(
            f"step {step}: the solver yielded a {type(item).__name__}; "
            "yield a tuple of numpy arrays per time step, e.g. (x, y)"
        )
    return tuple(np.asarray(a) for a in item)


def run(inp: BinaryIO, out: BinaryIO, ring: Ring | None = None) -> None:
    frame = read_frame(inp)
    if frame is None or frame[0] != b"P":
        return
    import cloudpickle

    solver = cloudpickle.loads(bytes(frame[1]))
    write_frame(out, b"K", b"")  # ready: the worker starts a run's clock from here
    # A solver may announce how many steps a run yields (an int attribute ``n_steps``, as the
    # shipped solvers do); a run that ends early is then a failure, not a short success.
    announced = getattr(solver, "n_steps", None)
    if isinstance(announced, bool) or not isinstance(announced, int):
        announced = None
    place: list[tuple[int, int] | None] = [None]  # where alloc put the last sample in the ring

    def alloc(n: int) -> np.ndarray:
        place[0] = got = ring.reserve(n) if ring is not None else None
        if got is None:
            return np.empty(n, dtype=np.uint8)
        return ring.data[got[0] : got[0] + n]  # type: ignore[union-attr]

    while True:
        frame = read_frame(inp)
        if frame is None or frame[0] != b"T":
            return
        task = np.frombuffer(frame[1], dtype=np.float64)
        sim_id, theta = int(task[0]), task[1:].copy()
        n_steps = 0
        first: list[tuple] | None = None
        try:
            gen = solver(theta)
            for step, item in enumerate(gen):
                bare = isinstance(item, np.ndarray)
                fields = (item,) if bare else _as_fields(item, step)
                reason = check_step(fields, step, first)
                if reason is not None:
                    if hasattr(gen, "close"):
                        gen.close()
                    write_frame(out, b"E", reason.encode())
                    break
                if first is None:
                    first = [(a.dtype.str, a.shape) for a in fields]
                place[0] = None
                blob = encode_sample(sim_id, step, fields, bare, alloc)
                if place[0] is None:
                    write_frame(out, b"S", blob)
                else:
                    write_frame(out, b"R", REF.pack(place[0][0], blob.nbytes, place[0][1]))
                n_steps += 1
            else:
                if n_steps == 0:
                    write_frame(out, b"E", NO_SAMPLE.encode())
                elif announced is not None and n_steps < announced:
                    msg = f"the solver yielded {n_steps} of {announced} announced time steps"
                    write_frame(out, b"E", msg.encode())
                else:
                    write_frame(out, b"D", struct.pack("<q", n_steps))
        except Exception as exc:
            # The solver's frames only (not this loop's): the user's file and line come first.
            inner = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
            tb = "".join(traceback.format_exception(type(exc), exc, inner, limit=-4))
            try:
                what = f"{type(exc).__name__}: {cap_text(str(exc))}"
            except Exception:  # an exception whose str() fails
                what = type(exc).__name__
            reason = cap_text(f"{what}\n{cap_text(tb)}")
            write_frame(out, b"E", reason.encode("utf-8", "replace"))


def main() -> None:
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when a run stops
    read_fd, write_fd = int(sys.argv[1]), int(sys.argv[2])
    ring = Ring(int(sys.argv[3])) if len(sys.argv) > 3 else None
    with os.fdopen(read_fd, "rb", buffering=0) as inp, os.fdopen(write_fd, "wb") as out:
        try:
            run(inp, out, ring)
        except BrokenPipeError:  # the worker went away: nothing left to report to
            pass
        finally:
            try:
                out.flush()
            except BrokenPipeError:
                pass


if __name__ == "__main__":
    main()
