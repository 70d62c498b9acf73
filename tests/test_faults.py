"""The fault matrix: every way a solver run can fail, with real processes (docs/fault-tolerance.md).

For each fault: training goes on, the run is counted as failed with its reason (naming the run and
its parameters in the log), retried with the same parameters, then redrawn; the budget of completed
runs is still met; no process is left behind.
"""

from __future__ import annotations

import numpy as np
import pytest
from _models import Regressor, quiet_trainer
from _solvers import FaultAt

from lightning_online import FIFO, OnlineDataModule, ParameterSpace, StudyError, Uniform

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_orphans")]

ROWS = {
    "raise": "RuntimeError: solver diverged",
    "exit": "exited with code 3",
    "os_exit": "exited with code 7",
    "sigkill": "killed by SIGKILL",
    "sigsegv": "killed by SIGSEGV",
    "hang": "timed out after 1 s",
    "nan": "NaN or Inf",
    "inf": "NaN or Inf",
    "shape": "differ from the first step",
    "dtype": "differ from the first step",
    "first_shape": "shape or dtype changed",
    "fewer": "yielded 2 of 6 announced time steps",
    "none": "yielded no sample",
}


def fit(kind: str, **kw):
    opts = dict(
        n_simulations=5,
        batch_size=4,
        n_workers=2,
        sampler=Uniform(seed=11),
        buffer=FIFO(32, watermark=4),
        run_timeout=1.0,
        max_retries=1,
        max_failed_fraction=0.95,
    )
    opts.update(kw)
    dm = OnlineDataModule(FaultAt(kind), ParameterSpace([0.0, 0.0], [1.0, 1.0]), **opts)
    trainer = quiet_trainer()
    trainer.fit(Regressor(2, 1), dm)
    return dm, trainer


@pytest.mark.parametrize("kind", list(ROWS))
def test_fault_is_counted_retried_redrawn_and_the_budget_met(kind, caplog):
    with caplog.at_level("WARNING", logger="lightning_online"):
        dm, trainer = fit(kind)
    stats = dm.stats
    assert stats["completed"] == 5  # the budget counts completed runs only
    assert trainer.global_step > 0  # training went on
    failed = [r for r in dm.runs.values() if r.status == "failed"]
    assert stats["failed"] == len(failed) >= 1
    assert stats["launched"] == stats["completed"] + stats["failed"]
    for r in failed:
        assert r.theta[0] < 0.5, r  # only the faulty half of the box failed
        assert ROWS[kind] in r.reason, (kind, r.reason)
    for r in dm.runs.values():
        if r.status == "completed":
            assert r.theta[0] >= 0.5
    # retried once with the same parameters, then redrawn (never a third time)
    thetas = [tuple(r.theta) for r in dm.runs.values()]
    for r in failed:
        assert thetas.count(tuple(r.theta)) <= 2
        if r.attempt == 0 and len(dm.runs) > len(failed) + 5:
            assert thetas.count(tuple(r.theta)) == 2
    # the log names the run, its parameters and the cause
    assert any(
        f"solver run {failed[0].sim_id} failed" in m and "theta=" in m for m in caplog.messages
    )
    # no faulty sample ever reached the buffer
    assert stats["samples_received"] >= 5 * 6 and np.isfinite(stats["buffer_fill"])


def test_too_many_failures_stop_with_the_list_of_failures():
    with pytest.raises(StudyError) as info:
        fit("raise", n_simulations=20, max_failed_fraction=0.2, sampler=Uniform(seed=5))
    msg = str(info.value)
    assert "max_failed_fraction=0.2" in msg and "RuntimeError: solver diverged" in msg
    assert "theta=[" in msg and "run " in msg
