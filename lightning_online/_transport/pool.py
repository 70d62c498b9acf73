"""Trainer side of the transport: spawn MPI workers, hand them runs, receive what they stream.

Runs on every training rank. One background thread (the *receiver*) makes every MPI call of the
training process, so the rest of the package never touches MPI and DataLoader processes never fork
an MPI process. It polls with ``Iprobe`` and a short sleep rather than a blocking ``Recv`` (which
would busy-spin a core), and it stops receiving samples while the buffer has no room, so workers
block in their synchronous sends (backpressure) instead of the training process's memory growing.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import numpy as np

from lightning_online._util.mpienv import mark_spawned, spawn_environment
from lightning_online._wire.samples import (
    HEADER_BYTES,
    TAG_BYE,
    TAG_END,
    TAG_FATAL,
    TAG_SAMPLES,
    TAG_SAMPLES_MAX,
    TAG_STOP,
    TAG_TASK,
    cap_text,
    decode_end,
)

log = logging.getLogger(__name__)

__all__ = ["PoolHandler", "ReceiverPool", "WorkerPool"]


class PoolHandler(Protocol):
    """What the pool asks of the study; every method is called from the receiver thread."""

    def next_task(self) -> tuple[int, np.ndarray] | None: ...

    def has_room(self) -> bool:
        """Whether a message of samples may be received now: a query that changes nothing."""

    def drain(self) -> None:
        """Optional: move what waits for room into the buffer. The receiver calls it before it
        asks :meth:`has_room` (a handler without it has nothing waiting)."""

    def on_sample(self, blob: np.ndarray) -> None:
        """One sample (``_wire`` format); ``blob`` is only valid during the call."""

    def on_samples(self, blobs: np.ndarray) -> None:
        """``(k, size)`` samples of one run in step order; only valid during the call."""

    def slots_for(self, k: int, nbytes: int) -> tuple[list[int], np.ndarray] | None:
        """k free slots and their memory, ``(k, nbytes)`` and contiguous, to receive k samples
        of ``nbytes`` straight into; or None (then :meth:`on_samples` copies them)."""

    def on_slots(self, slots: list[int]) -> None:
        """The samples received into ``slots`` (from :meth:`slots_for`) are complete."""

    def on_end(self, sim_id: int, ok: bool, n_steps: int, seconds: float, reason: str) -> None: ...

    def on_reject(self, sim_id: int, reason: str) -> None:
        """A message of the run could not be taken (malformed): the run fails with ``reason``
        when it ends; nothing more of it is taken."""


_live_pools: weakref.WeakSet[ReceiverPool] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    # Last line of defence (an exception that bypassed teardown): never leave workers behind.
    for pool in list(_live_pools):
        pool.stop(timeout=10.0)


S = TypeVar("S")


class ReceiverPool(Generic[S]):
    """What both pools share: ``n_workers`` runs in flight driven for a :class:`PoolHandler` by
    one receiver thread (``_main``), registered so that interpreter exit stops it.

    Subclasses: :class:`WorkerPool` (Python solvers on spawned MPI workers) and
    ``external._pool.ExternalPool`` (external programs connected straight to this rank).
    """

    #: The receiver thread's name (in tracebacks and py-spy).
    THREAD_NAME = "lightning-online-receiver"

    def __init__(
        self,
        solver: S,
        n_workers: int,
        handler: PoolHandler,
        *,
        run_timeout: float | None = None,
        poll_interval: float = 5e-3,
    ) -> None:
        self.solver = solver
        self.n_workers = n_workers
        self.handler = handler
        self.run_timeout = run_timeout
        self.poll_interval = poll_interval
        self.error: BaseException | None = None
        self._drain: Callable[[], None] = getattr(handler, "drain", None) or (lambda: None)
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name=self.THREAD_NAME, daemon=True)
        self._init()

    def _init(self) -> None:
        """What a subclass adds to the pool's state (called at the end of ``__init__``)."""

    def start(self, timeout: float = 120.0) -> None:
        """Start the receiver thread (training thread); raise if it cannot start."""
        raise NotImplementedError

    def wake(self) -> None:
        """New work may be available (training thread)."""
        raise NotImplementedError

    def stop(self, timeout: float = 30.0) -> None:
        """End every run in flight and wait for the receiver thread (training thread)."""
        raise NotImplementedError

    def _main(self) -> None:
        raise NotImplementedError

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


class WorkerPool(ReceiverPool[bytes]):
    """``n_workers`` spawned MPI workers (running the cloudpickled ``solver``) and the receiver
    thread that drives them."""

    def _init(self) -> None:
        self._wake = threading.Event()

    # -- called from the training thread -------------------------------------------------------
    def start(self, timeout: float = 120.0) -> None:
        _live_pools.add(self)
        # What MPI's process manager must start with reaches it, not this process for good.
        with spawn_environment():
            self._thread.start()
            if not self._started.wait(timeout):
                raise TimeoutError(
                    f"spawning {self.n_workers} MPI workers took more than {timeout} s"
                )
        if self.error is not None:
            raise RuntimeError("could not start the solver workers") from self.error

    def wake(self) -> None:
        """New work may be available: skip the current idle sleep."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every worker (ending runs in flight) and wait for the receiver thread to exit."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("the solver workers did not stop within %.0f s", timeout)
        _live_pools.discard(self)

    # -- receiver thread -----------------------------------------------------------------------
    def _spawn(self):  # type: ignore[no-untyped-def]
        # MPI's process manager gets what it needs from spawn_environment (training thread)
        from mpi4py import MPI

        # The worker must import this package even when it is not installed (a source checkout).
        root = str(Path(__file__).resolve().parents[2])
        code = f"import sys; sys.path.insert(0, {root!r}); from lightning_online._transport.worker import main; main()"
        info = MPI.Info.Create()
        info.Set("wdir", os.getcwd())
        comm = MPI.COMM_SELF.Spawn(sys.executable, ["-c", code], maxprocs=self.n_workers, info=info)
        info.Free()
        mark_spawned()
        python_path = [root, *[p for p in sys.path if p]]
        config = {
            "solver": self.solver,
            "python_path": python_path,
            "run_timeout": self.run_timeout,
            "poll_interval": self.poll_interval,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        comm.bcast(config, root=MPI.ROOT)
        return MPI, comm

    def _main(self) -> None:
        try:
            MPI, comm = self._spawn()
        except BaseException as exc:
            self.error = exc
            self._started.set()
            return
        self._started.set()
        try:
            self._loop(MPI, comm)
        except BaseException as exc:
            log.exception("the receiver thread failed")
            self.error = exc
        finally:
            self._shutdown(MPI, comm)

    def _loop(self, MPI, comm) -> None:  # type: ignore[no-untyped-def]
        handler = self.handler
        status = MPI.Status()
        idle_workers = list(range(self.n_workers))
        running: dict[int, int] = {}  # worker -> sim_id
        # One receive buffer, reused (grown to the largest message): nothing is allocated per
        # message, so memory stays flat over a long stream (no allocator arenas filling up).
        scratch = np.empty(1 << 16, dtype=np.uint8)
        idle_polls = 0
        delay = self.poll_interval
        while not self._stop.is_set():
            while idle_workers:
                task = handler.next_task()
                if task is None:
                    break
                worker = idle_workers.pop()
                sim_id, theta = task
                msg = np.concatenate(([float(sim_id)], np.asarray(theta, dtype=np.float64)))
                comm.Send([msg, MPI.DOUBLE], dest=worker, tag=TAG_TASK)
                running[worker] = sim_id
            got = 0
            while got < 512 and not self._stop.is_set():
                self._drain()  # what waits for room goes first; then ask
                if handler.has_room():
                    found = comm.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG, status)
                else:  # no room: only run reports, which free workers but add no sample
                    found = comm.Iprobe(MPI.ANY_SOURCE, TAG_END, status) or comm.Iprobe(
                        MPI.ANY_SOURCE, TAG_FATAL, status
                    )
                if not found:
                    break
                got += 1
                source, tag = status.Get_source(), status.Get_tag()
                count = status.Get_count(MPI.BYTE)
                if count > len(scratch):
                    scratch = np.empty(max(count, 2 * len(scratch)), dtype=np.uint8)
                if TAG_SAMPLES < tag <= TAG_SAMPLES_MAX:
                    k = tag - TAG_SAMPLES
                    if count % k or count // k < HEADER_BYTES:
                        # Not k whole samples: taken off the wire and dropped; the run that
                        # sent it fails, the study goes on.
                        comm.Recv([scratch[:count], MPI.BYTE], source=source, tag=tag)
                        self._reject(
                            running.get(source),
                            f"a message of {count} bytes cannot hold {k} samples",
                        )
                        continue
                    # Samples of the study's size land directly in free slots (no copy) when
                    # the next free ones lie back to back.
                    into = handler.slots_for(k, count // k)
                    if into is not None:
                        comm.Recv([into[1], MPI.BYTE], source=source, tag=tag)
                        handler.on_slots(into[0])
                        continue
                    buf = scratch[:count]
                    comm.Recv([buf, MPI.BYTE], source=source, tag=tag)
                    handler.on_samples(buf.reshape(k, count // k))
                    continue
                buf = scratch[:count]
                comm.Recv([buf, MPI.BYTE], source=source, tag=tag)
                if tag == TAG_END:
                    if source not in running:  # no run of this worker: nothing to end
                        log.warning("solver worker %d reported the end of no run", source)
                        continue
                    sim_id = running.pop(source)
                    idle_workers.append(source)
                    try:
                        ended, ok, n_steps, seconds, reason = decode_end(buf)
                    except ValueError as exc:
                        ended, ok, n_steps, seconds = sim_id, False, 0, 0.0
                        reason = f"the solver worker sent a malformed run report: {exc}"
                    if ended != sim_id:
                        ok, reason = False, f"the solver worker reported the end of run {ended}"
                    handler.on_end(sim_id, ok, n_steps, seconds, reason)
                elif tag == TAG_FATAL:
                    raise RuntimeError(f"solver worker {source} failed:\n{cap_text(buf)}")
            # Adaptive polling: every wake of this thread takes the GIL from the training
            # thread (measured: polling every 50 us made training steps 2-3x slower, every 5 ms
            # cost ~30 % less than every 1 ms). So sleep longer when few samples arrive per
            # wake, shorter when many do (workers keep up to 16 samples in flight each).
            if got >= 8:
                delay = max(self.poll_interval / 16, delay / 2)
            elif got <= 1:
                delay = min(self.poll_interval, delay * 1.5)
            if not got:
                idle_polls += 1
                if idle_polls > 300:  # long silence (full buffer, slow solvers)
                    delay = 2 * self.poll_interval
            else:
                idle_polls = 0
            if got < 512:
                self._wake.wait(delay)
                self._wake.clear()

    def _reject(self, sim_id: int | None, reason: str) -> None:
        if sim_id is None:
            log.warning("dropped a malformed message of a solver worker with no run: %s", reason)
        else:
            self.handler.on_reject(sim_id, reason)

    def _shutdown(self, MPI, comm, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
        """STOP every worker, discard what they still send, wait for their BYE, disconnect."""
        try:
            for w in range(self.n_workers):
                comm.Send([np.zeros(0, np.uint8), MPI.BYTE], dest=w, tag=TAG_STOP)
            pending = set(range(self.n_workers))
            status = MPI.Status()
            deadline = time.monotonic() + timeout
            while pending and time.monotonic() < deadline:
                if not comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status):
                    time.sleep(self.poll_interval)
                    continue
                buf = np.empty(status.Get_count(MPI.BYTE), dtype=np.uint8)
                comm.Recv([buf, MPI.BYTE], source=status.Get_source(), tag=status.Get_tag())
                if status.Get_tag() == TAG_BYE:
                    pending.discard(status.Get_source())
            if pending:
                log.error("solver workers %s did not answer STOP; abandoning them", sorted(pending))
                return
            comm.Disconnect()
        except Exception:  # best effort at exit; a Ctrl-C (KeyboardInterrupt) goes through
            log.exception("error while stopping the solver workers")
