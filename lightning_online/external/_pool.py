"""A rank's pool of external programs in flight, and one run for ``ExternalSolver(...)(theta)``.

Where code runs: :class:`ExternalPool` is built and stopped on the training thread of a rank; its
receiver thread runs the :class:`~lightning_online.external._hub._Hub` event loop, hands samples to
the study (``_study.ledger``) and reports how each run ended. :func:`run_once` runs in the thread
that iterates its generator. The limit on open files is raised while pools are in flight and put
back when the last one stops (training thread).
"""

from __future__ import annotations

import logging
import resource
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from lightning_online._transport.pool import ReceiverPool, _live_pools
from lightning_online._wire.samples import check_step, encode_sample
from lightning_online.errors import ExternalRunError
from lightning_online.external._hub import Program, _Hub, _Run

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

__all__ = ["ExternalPool", "run_once"]


# -- a pool of runs for a study ----------------------------------------------------------------


_fd_lock = threading.Lock()
_fd_users = 0  # pools that hold the raised limit
_fd_saved: tuple[int, int] | None = None  # the limit before the first of them raised it
_fd_set: tuple[int, int] | None = None  # the limit they set


def _ensure_fd_limit(needed: int) -> None:
    """Lift this process's soft limit on open files to ``needed`` (at most the hard limit) while
    a pool runs: one socket per connection of a run in flight. Training thread, at a pool's
    start; :func:`_release_fd_limit` at its stop puts the limit back when the last pool stops."""
    global _fd_users, _fd_saved, _fd_set
    with _fd_lock:
        _fd_users += 1
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY or soft >= needed:
            return
        new = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if new > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            if _fd_saved is None:
                _fd_saved = (soft, hard)
            _fd_set = (new, hard)
            log.info(
                "raised the soft limit on open files from %d to %d while runs are in flight",
                soft,
                new,
            )
        if new < needed:
            log.warning(
                "runs in flight may need %d open files, but the hard limit is %d; "
                "raise it (ulimit -Hn) or lower n_workers",
                needed,
                hard,
            )


def _release_fd_limit() -> None:
    """A pool stopped: when it was the last one, put back the limit :func:`_ensure_fd_limit`
    found (unless someone changed it meanwhile). Training thread."""
    global _fd_users, _fd_saved, _fd_set
    with _fd_lock:
        _fd_users = max(0, _fd_users - 1)
        if _fd_users or _fd_saved is None:
            return
        if resource.getrlimit(resource.RLIMIT_NOFILE) == _fd_set:
            resource.setrlimit(resource.RLIMIT_NOFILE, _fd_saved)
        _fd_saved = _fd_set = None


class ExternalPool(ReceiverPool[Program]):
    """Up to ``n_workers`` runs of an :class:`~lightning_online.ExternalSolver` in flight, their
    programs streaming straight into this training rank; a drop-in for ``WorkerPool``.

    Where code runs: ``start``/``wake``/``stop`` in the training thread; everything else, and
    every call of the ``handler`` (``next_task``, ``has_room``, ``on_sample``, ``on_end``), in
    the pool's receiver thread. The programs are started by one ``_launchd`` helper process.
    ``on_sample`` gets a ``_wire.encode_sample`` blob; runs ended by :meth:`stop` get no
    ``on_end``.
    """

    THREAD_NAME = "lightning-online-external"

    def _init(self) -> None:
        handler = self.handler
        self._hub: _Hub | None = None
        self._scratch = np.empty(0, dtype=np.uint8)  # samples are encoded into it...
        # ...or into a slot of the handler's sample memory, when it has slots_for/on_slots
        self._slots_for = getattr(handler, "slots_for", None)
        self._slot: int | None = None
        self.max_in_flight = 0  # most runs in flight at once so far

    # -- training thread -------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> None:
        """Open the listening socket, start the receiver thread and the launcher helper."""
        _live_pools.add(self)
        _ensure_fd_limit(self.n_workers * max(1, self.solver.n_procs) + 256)
        hub = _Hub(
            self.solver,
            deliver=self._deliver,
            finished=self._finished,
            has_room=self.handler.has_room,
            run_timeout=self.run_timeout,
        )
        try:
            hub.listen()
        except BaseException:
            hub.close()
            raise
        self._hub = hub
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError(f"the launcher helper did not start within {timeout} s")
        if self.error is not None:
            raise RuntimeError("could not start the launcher helper") from self.error

    @property
    def address(self) -> str:
        """``host:port`` the programs connect to."""
        return self._hub.address if self._hub is not None else ""

    @property
    def in_flight(self) -> int:
        return self._hub.in_flight if self._hub is not None else 0

    @property
    def connections(self) -> int:
        """Open connections of the runs in flight (safe to read from any thread)."""
        hub = self._hub
        return hub.connections if hub is not None and not hub.closed else 0

    def wake(self) -> None:
        """New work may be available: skip the current wait."""
        if self._hub is not None:
            self._hub.wake()

    def stop(self, timeout: float = 30.0) -> None:
        """End every run in flight (their process groups), close every socket and the helper,
        and wait for the receiver thread to exit."""
        self._stop.set()
        self.wake()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("the external solver pool did not stop within %.0f s", timeout)
        elif not self._thread.is_alive() and self._hub is not None:
            self._hub.close()  # never started
        if self in _live_pools:
            _release_fd_limit()
        _live_pools.discard(self)

    # -- receiver thread ---------------------------------------------------------------------
    def _main(self) -> None:
        hub = self._hub
        assert hub is not None
        try:
            hub.start_helper()
        except BaseException as exc:
            self.error = exc
            self._started.set()
            hub.close()
            return
        self._started.set()
        try:
            self._loop(hub)
        except BaseException as exc:
            log.exception("the external solver pool's receiver thread failed")
            self.error = exc
        finally:
            hub.close()

    def _loop(self, hub: _Hub) -> None:
        handler = self.handler
        while not self._stop.is_set():
            while hub.in_flight < self.n_workers:
                task = handler.next_task()
                if task is None:
                    break
                sim_id, theta = task
                hub.launch(int(sim_id), theta)
            self.max_in_flight = max(self.max_in_flight, hub.in_flight)
            # Without room nothing is read: look again soon. Otherwise events wake the thread.
            self._drain()
            hub.poll(self.poll_interval if not handler.has_room() else 0.1)

    def _deliver(self, run: _Run, step: int, fields: tuple[np.ndarray, ...]) -> str | None:
        reason = check_step(fields, step, run.first)  # NaN/Inf, dtype or shape changed
        if reason is not None:
            return reason
        if run.first is None:
            run.first = [(a.dtype.str, a.shape) for a in fields]
        # Encoded straight into a slot of the handler's sample memory when it offers one (one
        # copy from the socket's buffer), else into one scratch buffer reused for every sample
        # (the handler may use a blob only during the call).
        self._slot = None
        blob = encode_sample(run.sim_id, step, fields, bare=False, alloc=self._alloc)
        if self._slot is not None:
            self.handler.on_slots([self._slot])
        else:
            self.handler.on_sample(blob)
        return None

    def _alloc(self, nbytes: int) -> np.ndarray:
        if self._slots_for is not None:
            got = self._slots_for(1, nbytes)
            if got is not None:
                (self._slot,), memory = got
                return memory[0]
        if self._scratch.nbytes < nbytes:
            self._scratch = np.empty(nbytes, dtype=np.uint8)
        return self._scratch[:nbytes]

    def _finished(self, run: _Run, ok: bool, reason: str) -> None:
        assert self._hub is not None
        seconds = self._hub.busy(run, time.monotonic())
        self.handler.on_end(run.sim_id, ok, run.step, seconds, reason)


# -- one run, for ExternalSolver.__call__ ---------------------------------------------------


def run_once(solver: Program, theta: np.ndarray) -> Iterator[tuple[np.ndarray, ...]]:
    """The steps of one run, as a generator, on the same machinery as a pool (in the thread
    that iterates it). Closing the generator ends the program's process group."""
    steps: deque[tuple[np.ndarray, ...]] = deque()
    result: list[tuple[bool, str]] = []

    def deliver(run: _Run, step: int, fields: tuple[np.ndarray, ...]) -> None:
        # The caller may keep the arrays: copies, not views of the connection's buffer.
        steps.append(tuple(np.array(a, copy=True) for a in fields))

    def finished(run: _Run, ok: bool, reason: str) -> None:
        result.append((ok, reason))

    hub = _Hub(solver, deliver=deliver, finished=finished, has_room=lambda: not steps)
    try:
        hub.listen()
        hub.start_helper()
        hub.launch(0, theta)
        while True:
            while steps:
                yield steps.popleft()
            if result:
                break
            hub.poll(0.1)
        ok, reason = result[0]
        if not ok:
            raise ExternalRunError(f"run with parameters {theta.tolist()}: {reason}")
    finally:
        hub.close()
