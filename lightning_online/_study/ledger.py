"""The bookkeeping of an online study on one training rank, and the per-step agreement between ranks.

(Over 400 lines: one class, the ledger of a rank, whose state (runs, permits, queues, the
buffer's slots) both threads share under one lock, and whose checkpoint export and restore need
all of it; the agreement's pure functions are in ``agreement``, the run life cycle in ``runs``.)

Two threads meet here. The receiver thread (``_transport``) asks for the next run to launch, hands
over samples and reports how runs ended. The training thread calls :meth:`Study.sync` once per
batch: every rank contributes a short vector of counters, all ranks gather the same matrix and
derive the same decisions from it, so no rank ever needs a broadcast and no rank can disagree:

* *launch permits*: the budget ``n_simulations`` is a global pool of permits. A permit becomes a
  running run, a running run becomes a completed run or (on failure) a permit again. Grants are
  computed from the gathered sum, which these transitions never change, so the budget is met
  exactly, and runs go to the ranks that have free workers (slow ranks get fewer runs);
* *parameters*: every rank draws the same parameters from identical sampler states and keeps its
  slice, so sampler state stays identical on every rank without communication;
* *whether to serve a batch and when to stop*: all ranks serve together and stop together, which
  makes the classic hang of iterable datasets under DDP (ranks yielding different numbers of
  batches) impossible.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from typing import Any

import numpy as np
import torch

from lightning_online._study.agreement import (
    COLUMNS,
    COUNTERS,
    MAX_EVERY,
    SAVED,
    Counters,
    Decision,
    batches_per_agreement,
    grant_permits,
    is_starved,
    lender,
    serve_or_finish,
)
from lightning_online._study.runs import Run, RunState
from lightning_online._transport.store import TRIM_EVERY, SlotStore, fields_of, trim_heap
from lightning_online._util.dist import Group
from lightning_online._wire.samples import (
    HEADER_BYTES,
    MAX_REASON,
    NO_SAMPLE,
    cap_text,
    decode_sample,
    record_ids,
)
from lightning_online.buffers import Buffer
from lightning_online.errors import StudyError
from lightning_online.sampling.samplers import ParameterSpace, Sampler
from lightning_online.sampling.steering import steered_rows

log = logging.getLogger("lightning_online")

__all__ = [
    "MAX_FAILURES",
    "MIN_FAILED_TO_STOP",
    "NO_SAMPLE",
    "Decision",
    "Run",
    "Study",
    "StudyError",
]


#: Failed runs kept with their reasons per rank (and in a checkpoint), the most recent: a
#: study of a million runs with a flaky solver must not carry every reason forever.
MAX_FAILURES = 256
#: The study never stops for ``max_failed_fraction`` before this many runs failed (over all
#: ranks): one or two early failures of a fresh study are 100 % of what was launched so far, and
#: must not end it. From this many on, ``failed > max_failed_fraction * launched`` stops it.
MIN_FAILED_TO_STOP = 3


class Study:
    def __init__(
        self,
        *,
        space: ParameterSpace,
        sampler: Sampler,
        buffer: Buffer,
        n_simulations: int,
        n_workers: int,
        batch_size: int,
        max_retries: int,
        max_failed_fraction: float,
        group: Group,
    ) -> None:
        self.space = space
        self.sampler = sampler
        self.buffer = buffer
        self.n_simulations = n_simulations
        self.n_workers = n_workers
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.max_failed_fraction = max_failed_fraction
        self.group = group
        self.pool: Any = None  # set by the DataModule once workers are up
        self.pin_memory = False  # batches in page-locked memory (set by the DataModule)
        # The recording's tee (OnlineDataModule(record=...)), or None: it gets a copy of every
        # sample accepted and every run's end, on this (the receiver) thread, and never waits.
        self.recorder: Any = None
        # Samples live in preallocated slots; the buffer's policy moves slot indices only.
        self.store = SlotStore(buffer.capacity)
        buffer.on_release = self.store.release
        # Slots received beyond the buffer's room (the rest of a message of several samples):
        # they enter the buffer first, before anything else is received.
        self._stash: deque[int] = deque()
        self._close_pending = False

        self._lock = threading.RLock()
        self.runs: dict[int, Run] = {}
        # Drawn, not yet launched: (theta, steered). "steered" marks draws a loss-driven sampler
        # made from its statistics (Breed's bred share); only those go stale on an update.
        self._pending: deque[tuple[np.ndarray, bool]] = deque()
        self._retry: deque[tuple[np.ndarray, int]] = deque()
        self._val_queue: deque[tuple[int, np.ndarray]] = deque()
        self.val_samples: dict[int, list[Any]] = {}
        self._next_local = 0
        self.permits = 0
        self.count = Counters()  # this rank's, this session's
        self._rejected_sims: dict[int, str] = {}
        self.failures: deque[Run] = deque(maxlen=MAX_FAILURES)  # the most recent
        self._last: tuple[list[torch.Tensor], tuple[np.ndarray, np.ndarray]] | None = None
        self._taken = 0
        # Whether a checkpoint carries the buffer's contents (OnlineDataModule's
        # checkpoint_buffer); without, completed runs with samples not trained on run again.
        self.keep_buffer = True
        # Batches handed to training and maybe not trained on yet (Lightning fetches ahead):
        # (number, tensors, ids, bare, repeated), trimmed by consumed(); and batches restored
        # from a checkpoint (taken but not trained on, or beyond the buffer's capacity), which
        # are served before anything else.
        self._taken_base = 0
        self._unconsumed: deque[
            tuple[int, list[torch.Tensor], tuple[np.ndarray, np.ndarray], bool, bool]
        ] = deque()
        self._replay: deque[tuple[list[torch.Tensor], tuple[np.ndarray, np.ndarray], bool]] = (
            deque()
        )
        # Parameters of earlier sessions' runs whose samples a checkpoint carried.
        self.restored_thetas: dict[int, np.ndarray] = {}
        # Bounded: without a consumer (no steering callback) it must not grow with the stream.
        self.batch_info: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=64)
        self.stats: dict[str, float] = {}
        self.complete = False
        # The cost of the agreement against the time spent per batch between two agreements
        # (moving averages), from which this rank proposes how often to agree.
        self._sync_s = self._batch_s = 0.0
        self._sync_end = 0.0
        self._granted_batches = 0
        self.every = 1
        # The rank whose next batch every rank that has nothing borrows (the same on every
        # rank; None: no one borrows), and how many batches this rank borrowed.
        self._lender: int | None = None
        self.borrowed = 0
        # What a resumed study inherits from its checkpoint (identical on every rank).
        self.base = Counters()
        self._restored_launched: list[tuple[float, np.ndarray]] = []
        self.restored_completed: list[tuple[int, list[float]]] = []
        self.failures_before: list[Any] = []
        self.next_id_floor = 0

    # ------------------------------------------------------------------ receiver thread
    def next_task(self) -> tuple[int, np.ndarray] | None:
        with self._lock:
            if self._val_queue:
                sim_id, theta = self._val_queue.popleft()
                self.runs[sim_id] = Run(sim_id, theta, 0, self.group.rank, validation=True)
                self.count.running += 1
                return sim_id, theta
            if self.permits <= 0:
                return None
            if self._retry:
                theta, attempt = self._retry.popleft()
            elif self._pending:
                theta, attempt = self._pending.popleft()[0], 0
            else:
                return None
            sim_id = self.group.rank + self.group.size * self._next_local
            self._next_local += 1
            self.permits -= 1
            self.count.running += 1
            self.count.launched += 1
            self.runs[sim_id] = Run(sim_id, theta, attempt, self.group.rank)
            return sim_id, theta

    def stop_in_flight(self) -> int:
        """The runs still in flight end as *stopped* (fit ended while they ran; training
        thread, after the pool stopped): counted in ``stopped``, no longer in ``running``.
        Returns how many training runs were stopped."""
        n = 0
        with self._lock:
            for run in self.runs.values():
                if run.in_flight:
                    run.move(RunState.STOPPED)
                    self.count.running -= 1
                    if not run.validation:
                        self.count.stopped += 1
                        n += 1
        return n

    def has_room(self) -> bool:
        """Whether a message of samples may be received now (receiver thread; a query that
        changes nothing: call :meth:`drain` first). Never while samples wait in the stash."""
        if self._stash:
            return False
        store = self.store
        if self.recorder is not None and not self.recorder.room():  # its writer lags
            return False
        return self.buffer.has_room() and (not store.configured or store.n_free >= store.spare)

    def drain(self) -> None:
        """Move the samples waiting for room (the rest of a message) into the buffer, as far as
        there is room, and close the buffer if its close waited for them (receiver thread,
        before it asks :meth:`has_room`)."""
        if not self._stash:
            return
        with self._lock:
            if self.buffer.closed:
                self.store.release(list(self._stash))
                self._stash.clear()
                return
            added = self.buffer.put_many(list(self._stash))
            for _ in range(added):
                self._stash.popleft()
            if not self._stash and self._close_pending:
                self._close_pending = False
                self.buffer.close()

    def on_sample(self, blob: np.ndarray) -> None:
        """One sample in the ``_wire`` format (receiver thread; valid only during the call)."""
        blob = np.asarray(blob, dtype=np.uint8)
        self.on_samples(blob.reshape(1, -1))

    def slots_for(self, k: int, nbytes: int) -> tuple[list[int], np.ndarray] | None:
        """k free slots, back to back, to receive k samples of ``nbytes`` straight into, and
        their memory as one ``(k, nbytes)`` array; None when there are none (receiver thread)."""
        store = self.store
        if not store.configured or nbytes != store.size:
            return None
        slots = store.take_run(k)
        if slots is None:
            return None
        return slots, store.mem[slots[0] : slots[0] + k, :nbytes]  # type: ignore[index]

    def on_slots(self, slots: list[int]) -> None:
        """The samples received into ``slots`` (from :meth:`slots_for`) are complete."""
        store = self.store
        rows = store.mem[slots[0] : slots[0] + len(slots), : store.size]  # type: ignore[index]
        self.on_samples(rows, slots)

    def on_samples(self, blobs: np.ndarray, slots: list[int] | None = None) -> None:
        """``(k, size)`` samples in the ``_wire`` format, in step order (receiver thread; the
        memory is only valid during the call: what is kept is copied into slots). With
        ``slots``, the samples already lie in those slots, which are given back if refused."""
        if slots is not None:
            kept: list[int] = []
            try:
                self._accept(blobs, kept, slots)
            finally:
                self.store.release([s for s in slots if s not in kept])
            return
        self._accept(blobs, [], None)

    def _accept(self, blobs: np.ndarray, kept: list[int], slots: list[int] | None) -> None:
        k = len(blobs)
        if k == 0:
            return
        if blobs.shape[1] < HEADER_BYTES:
            with self._lock:
                self.count.samples_rejected += k
            log.warning("dropped %d malformed sample message(s) of %d bytes", k, blobs.shape[1])
            return
        sims = record_ids(blobs)[0]
        if k > 1 and (sims != sims[0]).any():  # several runs in one message: one at a time
            for sim in dict.fromkeys(sims.tolist()):
                rows = np.flatnonzero(sims == sim)
                sub = None if slots is None else [slots[i] for i in rows]
                self._accept(blobs[rows], kept, sub)
            return
        sim_id = int(sims[0])
        run = self.runs.get(sim_id)
        if run is None or sim_id in self._rejected_sims or not run.in_flight:
            with self._lock:
                self.count.samples_rejected += k
            return
        if run.status is RunState.LAUNCHED:  # its first sample
            with self._lock:
                run.move(RunState.STREAMING)
        try:  # a message that cannot be decoded fails its run, never the receiver thread
            if run.validation:
                for blob in blobs:
                    sample = decode_sample(blob)
                    fields = tuple(a.copy() for a in sample.fields)
                    item = fields[0] if sample.bare else fields
                    self.val_samples.setdefault(sim_id, []).append(item)
                return
            if not self.store.configured:  # the first sample fixes the layout (checked)
                self.store.configure(blobs[0])
        except ValueError as exc:
            with self._lock:
                self._rejected_sims[sim_id] = f"a sample could not be decoded: {exc}"
                self.count.samples_rejected += k
            return
        store = self.store
        bad = store.check(blobs)
        good = blobs if bad is None else blobs[: bad[0]]
        if slots is None:
            slots = store.write(good) if len(good) else []
        else:
            slots = slots[: len(good)]
        with self._lock:
            if bad is not None:
                self._rejected_sims[sim_id] = bad[1]
                self.count.samples_rejected += k - len(good)
            if self.buffer.closed:  # the study ended meanwhile: nothing more is taken
                store.release(slots)
                self.count.samples_rejected += len(slots)
                return
            self.count.samples_received += len(slots)
            run.n_samples += len(slots)
            kept.extend(slots)
            if self._stash:
                self._stash.extend(slots)
            else:
                added = self.buffer.put_many(slots)
                self._stash.extend(slots[added:])
        if self.recorder is not None and len(slots):
            self.recorder.samples(sim_id, good[: len(slots)])

    def on_reject(self, sim_id: int, reason: str) -> None:
        """A message of the run could not be taken: the run fails with ``reason`` when it ends
        (receiver thread); the first reason stands."""
        with self._lock:
            if sim_id in self.runs:
                self._rejected_sims.setdefault(sim_id, cap_text(reason))

    def on_end(self, sim_id: int, ok: bool, n_steps: int, seconds: float, reason: str) -> None:
        with self._lock:
            run = self.runs.get(sim_id)
            if run is None or not run.in_flight:
                log.warning("the end of run %d was reported, which is not in flight", sim_id)
                return
            self.count.running -= 1
            reason = cap_text(reason, 2 * MAX_REASON)  # a cause and a program's output tail
            if sim_id in self._rejected_sims:
                ok, reason = False, self._rejected_sims.pop(sim_id)
            elif ok and (n_steps == 0 or run.status is RunState.LAUNCHED):
                ok, reason = False, NO_SAMPLE  # nothing to train on: a failure, on every path
            run.n_steps = n_steps
            run.move(RunState.COMPLETED if ok else RunState.FAILED, reason)
            if run.validation:
                return
            if self.recorder is not None:
                self.recorder.end(sim_id, run.theta, ok, run.attempt, seconds)
            if ok:
                self.count.completed += 1
                return
            self.count.failed += 1
            self.count.samples_from_failed += run.n_samples
            self.failures.append(run)
            # The failed run gives its permit back: it is retried, or its parameters redrawn.
            self.permits += 1
            retry = run.attempt < self.max_retries
            if retry:
                self._retry.append((run.theta, run.attempt + 1))
        log.warning(
            "solver run %d failed (attempt %d, theta=%s) after %d steps, %s: %s",
            sim_id,
            run.attempt + 1,
            np.array2string(run.theta, precision=6),
            n_steps,
            "retrying" if retry else "redrawing its parameters",
            # The whole reason: for a crashed program its last output is what explains it.
            reason.strip().replace("\n", "\n    ") if reason.strip() else "no reason given",
        )

    # ------------------------------------------------------------------ training thread
    def _snapshot(self, error: bool) -> np.ndarray:
        b, n = self.buffer, self.batch_size
        with self._lock:
            replay = len(self._replay)  # restored batches are served first
            ready = b.ready(min(n, b.capacity)) or replay > 0
            agreement = [
                self.permits,
                len(self._pending),
                len(self._retry),
                ready,
                min(MAX_EVERY, replay + b.ready_batches(min(n, b.capacity), MAX_EVERY)),
                self.every,
                b.exhausted and not replay,
                self._last is not None,
                len(b),
                b.stats()["unique_served"],
                error,
            ]
            return np.array(
                self.count.vector() + agreement,
                dtype=np.int64,
            )

    def _gather(self, error: bool) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        m = self.group.all_gather(self._snapshot(error))
        col = {name: m[:, i] for name, i in COLUMNS.items()}
        tot = {name: int(v.sum()) for name, v in col.items()}
        for name in COUNTERS:
            tot[name] += getattr(self.base, name)
        self.stats = {name: tot[name] for name in COUNTERS}
        self.stats["mean_reuse"] = (
            tot["samples_served"] / tot["unique_served"] if tot["unique_served"] else 0.0
        )
        self.stats["buffer_fill"] = float(col["buffer_size"].sum()) / float(
            self.buffer.capacity * self.group.size
        )
        return col, tot

    def gather_stats(self) -> dict[str, float]:
        """Study-wide counters, without any decision (collective: every rank calls it)."""
        self._gather(False)
        return self.stats

    def sync(self, error: bool = False) -> Decision:
        """One agreement round between all ranks (a single all-gather of a few integers)."""
        t0 = time.perf_counter()
        if self._granted_batches and self._sync_end:
            per_batch = (t0 - self._sync_end) / self._granted_batches
            self._batch_s = (
                per_batch if not self._batch_s else 0.8 * self._batch_s + 0.2 * per_batch
            )
        col, tot = self._gather(error)
        took = time.perf_counter() - t0
        self._sync_s = took if not self._sync_s else 0.8 * self._sync_s + 0.2 * took
        if tot["error"]:
            raise StudyError(
                "the solver workers failed on rank(s) "
                f"{np.flatnonzero(col['error']).tolist()}; see the log of those ranks"
            )
        self._check_failures(tot)

        # Grants: the permits not yet handed out go to the ranks with free worker slots, the
        # ranks with the fewest runs first, up to two runs' worth per worker so that a worker
        # that finishes finds its next run waiting.
        held = col["completed"] + col["running"] + col["permits"]
        remaining = self.n_simulations - self.base.completed - int(held.sum())
        room = np.maximum(0, 2 * self.n_workers - col["running"] - col["permits"])
        grants = grant_permits(remaining, held, room)
        remaining -= int(grants.sum())
        want = np.maximum(0, col["permits"] + grants - col["pending"] - col["retry"])
        mine: list[tuple[np.ndarray, bool]] = []
        if want.sum() > 0:
            thetas = self.sampler.draw(self.space, int(want.sum()))
            steered = steered_rows(self.sampler, len(thetas))
            start = int(want[: self.group.rank].sum())
            stop = start + int(want[self.group.rank])
            mine = list(zip(thetas[start:stop], steered[start:stop].tolist(), strict=True))
        complete = tot["completed"] >= self.n_simulations
        me = self.group.rank
        with self._lock:
            self.permits += int(grants[me])
            self._pending.extend(mine)
        if complete and not self.complete:
            self.complete = True
            self._close_buffer()
        starved = is_starved(
            complete,
            remaining,
            bool(col["ready"][me]),
            int(col["running"][me]),
            int(col["permits"][me]),
            int(grants[me]),
        )
        if starved and not self.buffer.closed:
            self._close_buffer()
        if self.pool is not None and (grants[me] or len(mine)):
            self.pool.wake()

        every = int(col["every"].max())  # the same on every rank
        n, finish = serve_or_finish(
            col["batches"], col["exhausted"], col["has_last"], complete, every
        )
        self._lender = lender(col["exhausted"], col["has_last"]) if n else None
        self.every = batches_per_agreement(self._sync_s, self._batch_s)
        self._granted_batches = n
        self._sync_end = time.perf_counter()
        return Decision(n, finish, self.stats)

    def _check_failures(self, tot: dict[str, int]) -> None:
        failed, launched = tot["failed"], max(1, tot["launched"])
        if failed >= MIN_FAILED_TO_STOP and failed > self.max_failed_fraction * launched:
            lines = [
                f"  run {r.sim_id} (attempt {r.attempt + 1}) theta={np.array2string(r.theta, precision=6)}: "
                + (r.reason.strip().splitlines()[0] if r.reason.strip() else "no reason")
                for r in list(self.failures)[-20:]
            ]
            raise StudyError(
                f"{failed} of {tot['launched']} solver runs failed, more than "
                f"max_failed_fraction={self.max_failed_fraction:g}; the study stops. Failures on "
                f"rank {self.group.rank} (most recent last):\n" + "\n".join(lines)
            )

    def _close_buffer(self) -> None:
        """End of stream; samples still waiting for room enter the buffer first."""
        with self._lock:
            if self._stash:
                self._close_pending = True
            else:
                self.buffer.close()

    def take(self) -> torch.Tensor | list[torch.Tensor]:
        """The batch this rank serves after a ``serve`` decision: each field of the chosen
        slots, stacked by one vectorised copy per field (pinned memory when asked)."""
        store = self.store

        def gather(items: list[int]) -> tuple[list[torch.Tensor], tuple[np.ndarray, np.ndarray]]:
            idx = np.asarray(items, dtype=np.int64)
            return store.gather(idx, self.pin_memory), store.ids(idx)

        repeated, bare = False, store.bare
        with self._lock:
            restored = self._replay.popleft() if self._replay else None
        got: tuple[list[torch.Tensor], tuple[np.ndarray, np.ndarray]] | None
        if restored is not None:
            got, bare = (restored[0], restored[1]), restored[2]
        else:
            got = self.buffer.get(min(self.batch_size, self.buffer.capacity), gather=gather)
        borrowed = None
        if self._lender is not None:
            # Collective (every rank serves the same batches): a rank that never received a
            # sample borrows the lender's batch once, then repeats it as any drained rank.
            lender, self._lender = self._lender, None
            mine = got if got is not None else self._last
            borrowed = self.group.broadcast_object(
                mine if self.group.rank == lender else None, src=lender
            )
        with self._lock:
            if got is not None:
                self._last = got
                self.count.samples_served += len(got[1][0])
            elif self._last is None:  # nothing ever received: the lender's batch (once)
                assert borrowed is not None
                got = self._last = borrowed
                self.borrowed += 1
                self.count.samples_replayed += len(got[1][0])
            else:  # exhausted while others still serve: repeat the last batch (documented)
                got = self._last
                repeated = True
                self.count.samples_replayed += len(got[1][0])
            tensors, info = got
            self._taken += 1
            self._unconsumed.append((self._taken, tensors, info, bare, repeated))
        self.batch_info.append(info)
        if self._taken % TRIM_EVERY == 0:
            trim_heap()  # memory stays flat over a long stream (see trim_heap)
        return tensors[0] if bare else tensors

    def start_serving(self) -> None:
        """A new pass over the stream begins (training thread): batches handed to an earlier
        pass and not trained on are served again first."""
        with self._lock:
            back = [(t, info, bare) for _, t, info, bare, rep in self._unconsumed if not rep]
            self._unconsumed.clear()
            self._replay.extendleft(reversed(back))
            self._taken_base = self._taken

    def consumed(self, n: int | None) -> None:
        """Training has trained on ``n`` batches of this pass (None: unknown): the batches
        handed before are no longer kept for a checkpoint (training thread)."""
        with self._lock:
            q = self._unconsumed
            if n is None:  # nobody says: keep the last few, as many as a loader fetches ahead
                while len(q) > 4:
                    q.popleft()
                return
            while q and q[0][0] <= self._taken_base + n:
                q.popleft()

    # ------------------------------------------------------------------ validation runs
    def queue_validation(self, thetas: np.ndarray) -> list[int]:
        """Queue the validation runs of this rank (index i goes to rank i % size)."""
        ids = []
        with self._lock:
            for i in range(self.group.rank, len(thetas), self.group.size):
                sim_id = -(i + 1)
                self._val_queue.append((sim_id, np.asarray(thetas[i], dtype=np.float64)))
                ids.append(sim_id)
        return ids

    def requeue_validation(self, sim_id: int) -> None:
        with self._lock:
            run = self.runs.pop(sim_id)
            self.val_samples.pop(sim_id, None)
            self._val_queue.append((sim_id, run.theta))

    def refresh(self) -> None:
        """The sampler changed: forget steered draws not yet launched (they followed the old
        statistics). Exploration draws (the non-breed share) and retries are kept, so that an
        update does not skip points of a quasi-random exploration sequence."""
        with self._lock:
            self._pending = deque(p for p in self._pending if not p[1])

    def launched_parameters(self) -> list[tuple[float, np.ndarray]]:
        with self._lock:
            own = [(r.launched_at, r.theta) for r in self.runs.values() if not r.validation]
        return self._restored_launched + own

    # ------------------------------------------------------------------ checkpoints
    def _unserved_runs(self, fetched: list[tuple[np.ndarray, np.ndarray]]) -> set[int]:
        """Runs with samples in this rank's buffer (or waiting for room) never served, or in
        batches handed to training but not trained on (lock held): without the buffer in the
        checkpoint, such a completed run is recorded as unfinished, so that a resume runs it
        again instead of losing what training had not seen of it."""
        sims = {int(i) for ids, _ in fetched for i in ids}
        items = [*self.buffer.unserved_items(), *self._stash]
        if not items or not self.store.configured:
            return sims
        return sims | set(self.store.ids(np.asarray(items, dtype=np.int64))[0].tolist())

    def _held(self, fetched: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, list[int]]:
        """What this rank's buffer holds (then what waits for room), as ``_wire`` rows, and how
        often each was served (lock held). Samples of runs not over are left out: those runs
        run again whole. A policy that keeps served samples counts the batches not trained on
        as not served."""
        store = self.store
        items, counts = self.buffer.contents()
        items, counts = items + list(self._stash), counts + [0] * len(self._stash)
        if not items or not store.configured:
            return np.zeros((0, store.size), dtype=np.uint8), []
        sims, steps = store.ids(np.asarray(items, dtype=np.int64))
        untrained = Counter(
            (int(i), int(k)) for ids, ks in fetched for i, k in zip(ids, ks, strict=True)
        )
        keep, kept_counts = [], []
        for item, count, sim, step in zip(
            items, counts, sims.tolist(), steps.tolist(), strict=True
        ):
            run = self.runs.get(sim)
            if run is not None and run.status not in (RunState.COMPLETED, RunState.FAILED):
                continue
            if count and untrained[sim, step]:
                untrained[sim, step] -= 1
                count -= 1
            keep.append(item)
            kept_counts.append(count)
        return store.rows(keep), kept_counts

    def _theta(self, sim_id: int) -> list[float]:
        run = self.runs.get(sim_id)
        theta = run.theta if run is not None else self.restored_thetas[sim_id]
        return [float(v) for v in theta]

    def export(self, consumed: int | None = None) -> dict[str, Any]:
        """The whole study's state, identical on every rank (collective: every rank calls it);
        ``consumed``: how many batches of this pass training has trained on (None: unknown).

        Completed runs are recorded so a resumed study never runs them again; what the buffer
        of each rank still holds (bounded by its capacity) and the batches handed to training
        but not trained on yet are saved with them, and served first by the resumed study
        (``keep_buffer``; without it, a completed run with samples training has not seen is
        recorded as unfinished and runs again). Runs in flight, stopped or waiting for a retry
        are recorded as unfinished and relaunched with the same parameters; parameters drawn
        but not launched yet are kept in their order.
        """
        self.consumed(consumed)
        with self._lock:
            batches = [(t, info, bare) for _, t, info, bare, rep in self._unconsumed if not rep]
            batches += list(self._replay)
            fetched = [info for _, info, _ in batches]
            unserved = set() if self.keep_buffer else self._unserved_runs(fetched)
            own = [r for r in self.runs.values() if not r.validation]
            rows, counts = self._held(fetched) if self.keep_buffer else (None, [])
            if not self.keep_buffer:
                batches = []
            held_sims = {int(i) for _, (ids, _), _ in batches for i in ids}
            if rows is not None and len(rows):
                held_sims |= set(record_ids(rows)[0].tolist())
            buffer = {
                "rows": torch.from_numpy(
                    rows if rows is not None else np.zeros((0, 0), dtype=np.uint8)
                ),
                "counts": counts,
                "batches": [
                    ([t.clone() for t in ts], ids.tolist(), ks.tolist(), bare)
                    for ts, (ids, ks), bare in batches
                ],
            }
            counters = {name: getattr(self.count, name) for name in SAVED}
            # batches handed out but not trained on are served again by the resumed study
            counters["samples_served"] -= sum(len(ids) for ids, _ in fetched)
            local = {
                "completed": [
                    (r.sim_id, r.theta.tolist())
                    for r in own
                    if r.status is RunState.COMPLETED and r.sim_id not in unserved
                ],
                "unfinished": [
                    (r.theta.tolist(), r.attempt)
                    for r in own
                    if r.in_flight
                    or r.status is RunState.STOPPED
                    or (r.status is RunState.COMPLETED and r.sim_id in unserved)
                ]
                + [(t.tolist(), a) for t, a in self._retry],
                "rerun": sum(
                    1 for r in own if r.status is RunState.COMPLETED and r.sim_id in unserved
                ),
                "pending": [(t.tolist(), bool(steered)) for t, steered in self._pending],
                "failures": [
                    (r.sim_id, r.theta.tolist(), r.attempt, r.reason) for r in self.failures
                ],
                "launched": [(t, th.tolist()) for t, th in self.launched_parameters()],
                "max_id": max(self.runs, default=-1),
                "counters": counters,
                "buffer": buffer,
                "thetas": {i: self._theta(i) for i in sorted(held_sims)},
            }
        parts = self.group.all_gather_object(local)
        merged: dict[str, Any] = {"completed": [], "unfinished": [], "failures": [], "pending": []}
        for p in parts:
            for key in merged:
                merged[key].extend(p[key])
        merged["completed"].sort()
        merged["rerun"] = sum(p["rerun"] for p in parts)
        # what each rank's buffer holds, in rank order; the parameters of the runs it is from
        merged["buffers"] = [p["buffer"] for p in parts]
        merged["thetas"] = {i: th for p in parts for i, th in p["thetas"].items()}
        # launched parameters from earlier sessions appear once (every rank holds them)
        launched = {(t, tuple(th)) for p in parts for t, th in p["launched"]}
        merged["launched"] = [(t, list(th)) for t, th in sorted(launched)]
        merged["next_id"] = max(p["max_id"] for p in parts) + 1
        counters = {
            k: getattr(self.base, k) + sum(p["counters"].get(k, 0) for p in parts) for k in SAVED
        }
        # completed runs are counted from the ledger (a run in flight at the save is not, nor
        # is a completed run recorded as unfinished: it runs again)
        counters["completed"] = self.base.completed + len(merged["completed"])
        merged["counters"] = counters
        merged["completed"] = self.restored_completed + merged["completed"]
        merged["failures"] = (self.failures_before + merged["failures"])[-MAX_FAILURES:]
        merged["next_id"] = max(merged["next_id"], self.next_id_floor)
        return merged

    def restore(self, state: dict[str, Any]) -> None:
        """Continue a study from :meth:`export`'s state (on every rank, before training starts)."""
        with self._lock:
            self.base = Counters(**{k: int(state["counters"].get(k, 0)) for k in SAVED})
            self.restored_completed = [(i, list(t)) for i, t in state["completed"]]
            self._restored_launched = [(t, np.asarray(th)) for t, th in state["launched"]]
            self.next_id_floor = int(state["next_id"])
            rank, size = self.group.rank, self.group.size
            self._next_local = max(self._next_local, -(-(self.next_id_floor - rank) // size))
            self._pending.clear()
            for i, (theta, attempt) in enumerate(state["unfinished"]):
                if i % size == rank:
                    self._retry.append((np.asarray(theta, dtype=np.float64), int(attempt)))
            # drawn, not launched: launched first, in their order (the sampler continues after
            # them), spread over the ranks
            for i, (theta, steered) in enumerate(state.get("pending", [])):
                if i % size == rank:
                    self._pending.append((np.asarray(theta, dtype=np.float64), bool(steered)))
            self.failures_before = [
                (i, t, a, cap_text(str(r), 2 * MAX_REASON))
                for i, t, a, r in state["failures"][-MAX_FAILURES:]
            ]
            self.restored_thetas.update(
                {
                    int(i): np.asarray(t, dtype=np.float64)
                    for i, t in state.get("thetas", {}).items()
                }
            )
            self._restore_buffer(state.get("buffers", []))

    def _restore_buffer(self, buffers: list[dict[str, Any]]) -> None:
        """Each rank takes back what its buffer held (lock held); saved by another number of
        ranks, the samples and batches are spread over the ranks. What does not fit in the
        buffer is served first, in batches, with the batches that were not trained on."""
        rank, size = self.group.rank, self.group.size
        parts = [b for b in buffers if len(b["rows"]) or b["batches"]]
        if not parts:
            return
        if len(buffers) == size:
            parts = [buffers[rank]]
        rows_list = [np.asarray(b["rows"].numpy(), dtype=np.uint8) for b in parts if len(b["rows"])]
        counts = [int(c) for b in parts if len(b["rows"]) for c in b["counts"]]
        batches = [x for b in parts for x in b["batches"]]
        rows = np.concatenate(rows_list) if rows_list else np.zeros((0, 0), dtype=np.uint8)
        if len(buffers) != size:
            rows, counts, batches = rows[rank::size], counts[rank::size], batches[rank::size]
        for tensors, ids, steps, bare in batches:
            ts = [t.pin_memory() if self.pin_memory else t for t in tensors]
            info = (np.asarray(ids, dtype=np.int64), np.asarray(steps, dtype=np.int64))
            self._replay.append((ts, info, bool(bare)))
        if not len(rows):
            return
        store = self.store
        if not store.configured:
            store.configure(rows[0])
        if rows.shape[1] != store.size:
            log.warning(
                "the checkpoint's %d buffered samples are of another size: dropped", len(rows)
            )
            return
        n = min(len(rows), self.buffer.capacity - len(self.buffer))
        slots = store.write(rows[:n]) if n else []
        added = self.buffer.restore(slots, counts[:n])
        store.release(slots[added:])
        rest = rows[added:]
        for i in range(0, len(rest), self.batch_size):  # beyond the capacity: served first
            ts, info, bare = fields_of(rest[i : i + self.batch_size])
            self._replay.append(
                ([t.pin_memory() if self.pin_memory else t for t in ts], info, bare)
            )
