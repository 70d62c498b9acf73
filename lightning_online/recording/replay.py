"""Replaying a recording as the stream of a study: ``OnlineDataModule(Replay(path), ...)``.

Where code runs: on each training rank. :class:`ReplayPool` takes the place of the MPI workers:
one thread (the receiver of a replayed study) takes each run the ledger launches, reads that
run's samples from the recording and hands them to the study in the wire format, as a worker
would, asking for room first (the same buffer, the same backpressure). No MPI, no process.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from typing import Any

import numpy as np

from lightning_online._transport.pool import ReceiverPool
from lightning_online._wire.samples import (
    coalesce_limit,
    encode_sample,
    read_header,
    set_record_ids,
)
from lightning_online.recording._h5 import open_read
from lightning_online.recording.reader import RecordingIndex
from lightning_online.sampling.samplers import ParameterSpace, Sampler

__all__ = ["Recorded", "Replay", "ReplayPool"]


class Replay:
    """A recorded study as the solver of a new one: ``OnlineDataModule(Replay("study.h5"),
    replay.space, n_simulations=replay.n_runs, ...)`` serves the recorded runs, in the order
    they ended, through the same buffer and batches as the study that recorded them, without
    running any solver. The sampler is :class:`Recorded` (the recorded parameters, in order);
    ``n_simulations`` may be at most :attr:`n_runs`.

    Called as a solver (``replay(theta)``), it yields the recorded samples of the run with
    exactly these parameters.

    Args:
        path: the recording (its per-rank files are found from it) or a list of files.
    """

    def __init__(self, path: str | os.PathLike | list[str | os.PathLike]) -> None:
        self.path = path
        self._index: RecordingIndex | None = None
        self._index = RecordingIndex(path)  # the recording is readable now, not at fit

    @property
    def index(self) -> RecordingIndex:
        if self._index is None:
            self._index = RecordingIndex(self.path)
        return self._index

    @property
    def space(self) -> ParameterSpace:
        """The recorded study's parameter space."""
        return self.index.space

    @property
    def n_runs(self) -> int:
        """Completed runs in the recording."""
        return len(self.index)

    def sampler(self) -> Recorded:
        return Recorded(self.path)

    def find(self, theta: np.ndarray) -> int | None:
        """The row of the recorded run with exactly these parameters (the first not yet
        found when several have them), or None."""
        return self._lookup().get(np.asarray(theta, dtype=np.float64).tobytes())

    def _lookup(self) -> dict[bytes, int]:
        table = getattr(self, "_by_theta", None)
        if table is None:
            table = {}
            for i, theta in enumerate(self.index.runs["theta"]):
                table.setdefault(np.asarray(theta, dtype=np.float64).tobytes(), i)
            self._by_theta = table
        return table

    def __call__(self, theta: np.ndarray) -> Iterator[Any]:
        run = self.find(theta)
        if run is None:
            raise KeyError(f"no recorded run has the parameters {theta}")
        index = self.index
        with open_read(index.files[int(index.file_of_run[run])]) as f:
            _, _, fields = index.read(run, f)
        for k in range(len(fields[0])):
            row = tuple(a[k] for a in fields)
            yield row[0] if index.bare else row

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_index": None}

    def __repr__(self) -> str:
        return f"Replay({str(self.path)!r})"


class Recorded(Sampler):
    """Draws the parameters of a recording's completed runs, in the order they ended (then
    from the first again); its state is how many it has drawn."""

    def __init__(self, path: str | os.PathLike | list[str | os.PathLike], seed: int | None = 0):
        super().__init__(seed)
        self.path = str(path) if not isinstance(path, list | tuple) else [str(p) for p in path]
        self._thetas = np.asarray(RecordingIndex(path).runs["theta"], dtype=np.float64)
        self._drawn = 0

    def draw(self, space: ParameterSpace, n: int) -> np.ndarray:
        if n < 0:
            raise ValueError(f"Recorded.draw: n must be >= 0, got {n}")
        m = len(self._thetas)
        idx = (self._drawn + np.arange(n)) % max(1, m)
        self._drawn += n
        return self._thetas[idx].reshape(n, space.dim)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "drawn": self._drawn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._drawn = int(state["drawn"])


class ReplayPool(ReceiverPool["Replay"]):
    """The receiver of a replayed study: one thread that serves each launched run from the
    recording (``solver``, a :class:`Replay`), one run at a time, in launch order."""

    THREAD_NAME = "lightning-online-replay"

    def _init(self) -> None:
        self.replay = self.solver
        self._wake = threading.Event()
        self._files: dict[int, Any] = {}
        self._used: defaultdict[bytes, deque[int]] = defaultdict(deque)

    def start(self, timeout: float = 120.0) -> None:
        self._thread.start()
        self._started.wait(timeout)
        if self.error is not None:
            raise RuntimeError(f"the replay could not start: {self.error}") from self.error

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _main(self) -> None:
        try:
            index = self.replay.index
            for i, theta in enumerate(index.runs["theta"]):  # runs of equal theta: in order
                self._used[np.asarray(theta, np.float64).tobytes()].append(i)
        except BaseException as exc:
            self.error = exc
            self._started.set()
            return
        self._started.set()
        try:
            while not self._stop.is_set():
                self._drain()  # what waits for room (the rest of a message) goes first
                task = self.handler.next_task()
                if task is None:
                    self._wake.wait(self.poll_interval)
                    self._wake.clear()
                    continue
                self._serve(*task)
        except BaseException as exc:
            self.error = exc
        finally:
            for f in self._files.values():
                f.close()

    def _serve(self, sim_id: int, theta: np.ndarray) -> None:
        t0 = time.perf_counter()
        queue = self._used.get(np.asarray(theta, np.float64).tobytes())
        if not queue:
            self.handler.on_end(
                sim_id, False, 0, 0.0, f"no recorded run (left) has the parameters {theta}"
            )
            return
        run = queue.popleft()
        queue.append(run)  # drawn again (a sampler that wraps around): served again
        index = self.replay.index
        k = int(index.file_of_run[run])
        f = self._files.get(k)
        if f is None:
            f = self._files[k] = open_read(index.files[k])
        _, steps, fields = index.read(run, f)
        records = _records(sim_id, steps, fields, index.bare)
        per = coalesce_limit(records.shape[1])
        drain = self._drain
        for lo in range(0, len(records), per):
            while True:
                drain()
                if self.handler.has_room():
                    break
                if self._stop.is_set():
                    return
                self._wake.wait(self.poll_interval)
                self._wake.clear()
            self.handler.on_samples(records[lo : lo + per])
        self.handler.on_end(sim_id, True, len(records), time.perf_counter() - t0, "")


def _records(sim_id: int, steps: np.ndarray, fields: list[np.ndarray], bare: bool) -> np.ndarray:
    """The wire records of a recorded run (``_wire.samples``), made as the solver's process
    makes them, with this study's run id."""
    n = len(steps)
    first = encode_sample(sim_id, int(steps[0]), tuple(a[0] for a in fields), bare)
    out = np.empty((n, len(first)), dtype=np.uint8)
    out[:] = first
    set_record_ids(out, sim_id, steps)
    _, layout = read_header(first)
    for a, fl in zip(fields, layout, strict=True):
        out[:, fl.offset : fl.offset + fl.nbytes] = (
            np.ascontiguousarray(a).reshape(n, -1).view(np.uint8)
        )
    return out
