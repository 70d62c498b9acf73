"""The agreement between training ranks, as pure functions over gathered columns.

At every sync each rank contributes one int64 vector: its :class:`Counters`, then the
:data:`AGREEMENT` columns. Every rank gathers the same matrix and calls the functions here with
the same columns (one entry per rank), so every rank takes the same decisions without another
message: how many launch permits each rank gets, how many batches all serve before they agree
again, when all stop, and which rank lends a batch to one that never received anything.

Where code runs: the training thread of every rank (``ledger.Study.sync``); nothing here keeps
state, so each function is unit-tested on arrays (tests/test_study.py).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np

__all__ = [
    "AGREEMENT",
    "COLUMNS",
    "COUNTERS",
    "MAX_EVERY",
    "SAVED",
    "STATS_KEYS",
    "SYNC_SHARE",
    "Counters",
    "Decision",
    "batches_per_agreement",
    "grant_permits",
    "is_starved",
    "lender",
    "serve_or_finish",
]


class Decision(NamedTuple):
    batches: int  # how many batches every rank serves before the next agreement (0: wait)
    finish: bool
    stats: dict[str, float]


@dataclass
class Counters:
    """The study's counters, defined once: the field names are the keys of ``dm.stats``; each
    rank's are gathered as one int64 vector at every sync (with the agreement's columns,
    :data:`AGREEMENT`) and summed over ranks; all but ``running`` are saved in checkpoints and
    carried over by a resumed study."""

    launched: int = 0
    completed: int = 0
    failed: int = 0
    running: int = 0
    samples_received: int = 0
    samples_rejected: int = 0
    samples_served: int = 0
    samples_replayed: int = 0
    # Samples a run streamed before it failed stay in the buffer (they are valid; some may
    # already be served) and its retry streams its own: these are counted here, so that
    # samples_received = samples of completed runs + samples_from_failed (+ runs in flight).
    samples_from_failed: int = 0
    # Runs ended in flight when fit ended (max_steps, max_time, an interrupt): neither
    # completed nor failed; their samples stay in samples_received.
    stopped: int = 0

    def vector(self) -> list[int]:
        return [getattr(self, name) for name in COUNTERS]


COUNTERS: tuple[str, ...] = tuple(f.name for f in fields(Counters))
SAVED = tuple(name for name in COUNTERS if name != "running")
#: What ranks also exchange at every sync to agree (not counters of the study).
AGREEMENT = (
    "permits",
    "pending",
    "retry",
    "ready",
    "batches",
    "every",
    "exhausted",
    "has_last",
    "buffer_size",
    "unique_served",
    "error",
)
COLUMNS = {name: i for i, name in enumerate((*COUNTERS, *AGREEMENT))}
#: The keys of ``dm.stats``: the counters, then two ratios derived from the gathered vector.
STATS_KEYS = (*COUNTERS, "mean_reuse", "buffer_fill")


# ---------------------------------------------------------------------- the agreement, pure
# Every rank calls these with the same gathered columns (one entry per rank), so every rank
# takes the same decisions without another message.


def grant_permits(remaining: int, held: np.ndarray, room: np.ndarray) -> np.ndarray:
    """Launch permits for each rank out of the ``remaining`` budget: one at a time to the rank
    that holds the fewest runs (``held``: completed + running + permits) among those with
    ``room`` left, so that a small budget is spread over every rank (a rank that never gets a
    run has nothing to train on) and fast ranks take more."""
    grants = np.zeros(len(held), dtype=np.int64)
    room = np.asarray(room, dtype=np.int64)
    while remaining > 0 and (room > grants).any():
        r = int(np.argmin(np.where(room > grants, held + grants, np.iinfo(np.int64).max)))
        grants[r] += 1
        remaining -= 1
    return grants


#: Most batches served between two agreements.
MAX_EVERY = 16
#: The agreement may take this share of the training time; above it, ranks agree less often.
SYNC_SHARE = 0.02


def serve_or_finish(
    batches: np.ndarray,
    exhausted: np.ndarray,
    has_last: np.ndarray,
    complete: bool,
    every: int = 1,
) -> tuple[int, bool]:
    """``(n, finish)``, the same on every rank: all ranks serve ``n`` batches before they agree
    again (``batches[r]``: how many rank r can serve in a row without new samples; a rank that
    has drained repeats its last batch), at most ``every``; n = 0 when one rank has none. All
    stop together once the study is complete and every buffer is drained, or when no rank has
    anything to serve or repeat.

    A rank drained before it ever served (it received nothing: the budget left went to other
    ranks) neither holds the others up nor ends their study: it borrows its first batch from
    another rank (:func:`lender`), then repeats it like any drained rank."""
    batches = np.asarray(batches, dtype=np.int64)
    exhausted, has_last = (np.asarray(v, dtype=bool) for v in (exhausted, has_last))
    empty = exhausted & ~has_last
    finish = bool((complete and exhausted.all()) or empty.all())
    can = np.where(exhausted, every, np.minimum(batches, every))
    return (0 if finish else max(0, int(can.min()))), finish


def lender(exhausted: np.ndarray, has_last: np.ndarray) -> int | None:
    """The rank that lends its next batch to the ranks that have never served and never will
    (drained with nothing to repeat): the first rank that has something; None if no rank needs
    to borrow (or none can lend)."""
    exhausted, has_last = (np.asarray(v, dtype=bool) for v in (exhausted, has_last))
    empty = exhausted & ~has_last
    if not empty.any() or empty.all():
        return None
    return int(np.flatnonzero(~empty)[0])


def batches_per_agreement(sync_s: float, batch_s: float) -> int:
    """How many batches to serve between agreements so that the agreement (``sync_s`` seconds)
    costs at most ``SYNC_SHARE`` of the training time (``batch_s`` seconds per batch)."""
    if sync_s <= 0 or batch_s <= 0:
        return 1
    return int(min(MAX_EVERY, max(1, np.ceil(sync_s / (SYNC_SHARE * batch_s)))))


def is_starved(
    complete: bool, remaining: int, ready: bool, running: int, permits: int, granted: int
) -> bool:
    """A rank that holds no run and no permit once every permit is out will never receive
    again: it drains what it has instead of waiting for a watermark it cannot reach."""
    return not complete and remaining == 0 and not ready and running == 0 and permits + granted == 0
