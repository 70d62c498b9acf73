"""One life cycle for a run (``_study/runs.py``): the transitions the table allows and nothing
else, and the same end for a run without a sample on every path."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_online._study.runs import (
    IN_FLIGHT,
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    Run,
    RunState,
)


def _run() -> Run:
    return Run(sim_id=3, theta=np.zeros(2), attempt=0, rank=0)


def test_a_run_is_launched_then_streams_then_completes() -> None:
    run = _run()
    assert run.status is RunState.LAUNCHED and run.in_flight
    run.move(RunState.STREAMING)
    run.move(RunState.COMPLETED)
    assert run.status == "completed" and not run.in_flight  # reads as the string it was


@pytest.mark.parametrize("start", list(RunState))
@pytest.mark.parametrize("to", list(RunState))
def test_every_transition_outside_the_table_raises(start: RunState, to: RunState) -> None:
    run = _run()
    run.status = start
    if to in TRANSITIONS[start]:
        run.move(to, "why")
        assert run.status is to and run.reason == "why"
    else:
        with pytest.raises(IllegalTransition, match=f"from {start.value} to {to.value}"):
            run.move(to)
        assert run.status is start


def test_the_table_covers_every_state_and_ends_in_terminal_states() -> None:
    assert set(TRANSITIONS) == set(RunState)
    assert TERMINAL == {RunState.COMPLETED, RunState.FAILED, RunState.STOPPED}
    assert IN_FLIGHT == {RunState.LAUNCHED, RunState.STREAMING}
    # a run cannot complete before its first sample: a run without one fails
    assert RunState.COMPLETED not in TRANSITIONS[RunState.LAUNCHED]
    assert all(s in TRANSITIONS[RunState.LAUNCHED] for s in (RunState.FAILED, RunState.STOPPED))
