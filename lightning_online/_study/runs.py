"""One life cycle for a run: its states, the allowed transitions, and the record of one launch.

Every path goes through it: a Python solver on an MPI worker and an external program alike end
in :meth:`Run.move`, so the counters, retries, timeouts, the monitor, a resume and the tests read
the same truth. An illegal transition raises :class:`IllegalTransition` (a bug, never a user
error).

::

    launched ──▶ streaming ──▶ completed
        │            │
        ├────────────┴──▶ failed ──▶ (retried: a new Run, same θ, attempt + 1,
        │                               up to max_retries; then its permit is redrawn)
        └────────────┴──▶ stopped    (ended in flight when fit ended)

A run is *launched* when a worker or the launch helper takes it, *streaming* from its first
sample; a run that ends without a sample is *failed* (it trained nothing), on every path. Timed
out is a failure whose reason says so. Runs not yet launched are not runs: they are permits and
drawn parameters in the ledger (``_study.ledger``).

Code here runs under the ledger's lock, on the receiver thread (launch, samples, end) or the
training thread (stop).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import numpy as np

__all__ = ["TERMINAL", "TRANSITIONS", "IllegalTransition", "Run", "RunState"]


class RunState(str, enum.Enum):
    """The state of one launch (a ``str``: ``run.status == "completed"`` reads as before)."""

    LAUNCHED = "launched"
    STREAMING = "streaming"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value


#: The allowed transitions, in one place.
TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    RunState.LAUNCHED: frozenset({RunState.STREAMING, RunState.FAILED, RunState.STOPPED}),
    RunState.STREAMING: frozenset({RunState.COMPLETED, RunState.FAILED, RunState.STOPPED}),
    RunState.COMPLETED: frozenset(),
    RunState.FAILED: frozenset(),
    RunState.STOPPED: frozenset(),
}
#: States a run never leaves.
TERMINAL = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
#: States of a run in flight (holding a worker or a program).
IN_FLIGHT = frozenset({RunState.LAUNCHED, RunState.STREAMING})


class IllegalTransition(RuntimeError):
    """A run was moved along a transition that :data:`TRANSITIONS` does not allow."""


@dataclass
class Run:
    """One launch of the solver: its parameters, its state and how it ended."""

    sim_id: int
    theta: np.ndarray
    attempt: int
    rank: int
    status: RunState = RunState.LAUNCHED
    n_steps: int = 0
    n_samples: int = 0  # samples of the run taken into the buffer
    reason: str = ""
    launched_at: float = field(default_factory=time.time)
    validation: bool = False

    @property
    def in_flight(self) -> bool:
        return self.status in IN_FLIGHT

    def move(self, to: RunState, reason: str = "") -> None:
        """Move to ``to``; raises :class:`IllegalTransition` if the life cycle does not allow it."""
        if to not in TRANSITIONS[self.status]:
            raise IllegalTransition(
                f"run {self.sim_id} cannot go from {self.status.value} to {to.value}"
            )
        self.status = to
        if reason:
            self.reason = reason
