"""The fault matrix: every way a solver run can fail, with real processes (docs/fault-tolerance.md).

For each fault: training goes on, the run is counted as failed with its reason (naming the run and
its parameters in the log), retried with the same parameters, then redrawn; the budget of completed
runs is still met; no process is left behind.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _models import fit_study
from _solvers import FaultAt
from lightning.pytorch.callbacks import Callback

from lightning_online import StudyError, Uniform

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


class Trained(Callback):
    """Keeps a copy of every batch the model trained on (batch memory is reused)."""

    def __init__(self) -> None:
        self.x: list[torch.Tensor] = []
        self.y: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        x, y = batch
        self.x.append(x.detach().clone())
        self.y.append(y.detach().clone())


def fit(kind: str, **kw):
    opts = dict(
        n_simulations=5,
        sampler=Uniform(seed=11),
        run_timeout=1.0,
        max_retries=1,
        max_failed_fraction=0.95,
    )
    trained = Trained()
    dm, trainer = fit_study(FaultAt(kind), callbacks=[trained], **{**opts, **kw})
    trainer.trained = trained  # what reached training, for the test
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
    # retried once with the same parameters, then redrawn (never a third time): every first
    # attempt that failed has exactly one retry, a later run with the same parameters
    runs = [r for r in dm.runs.values() if not r.validation]
    for r in failed:
        same = [o for o in runs if np.array_equal(o.theta, r.theta)]
        assert sorted(o.attempt for o in same) == [0, 1], (r, same)
        first, retry = sorted(same, key=lambda o: o.attempt)
        assert retry.sim_id > first.sim_id and retry.status == "failed", (first, retry)
    # the log names the run, its parameters and the cause
    assert any(
        f"solver run {failed[0].sim_id} failed" in m and "theta=" in m for m in caplog.messages
    )
    # no faulty sample ever reached the buffer: what training saw is finite, of the study's
    # layout, and from a faulty run only its steps before the fault (steps 0 and 1)
    x = torch.cat(trainer.trained.x)
    y = torch.cat(trainer.trained.y)
    assert stats["samples_received"] >= 5 * 6 and len(trainer.trained.x) == trainer.global_step
    assert x.shape[1:] == (2,) and y.shape[1:] == (1,) and y.dtype == torch.float32
    assert torch.isfinite(x).all() and torch.isfinite(y).all()
    from_faulty = x[:, 0] < 0.5
    steps = torch.round(x[:, 1] * 6)
    assert (steps[from_faulty] < 2).all(), x[from_faulty]
    if kind in ("first_shape", "none"):  # nothing of a faulty run is valid
        assert not from_faulty.any()


def test_too_many_failures_stop_with_the_list_of_failures():
    with pytest.raises(StudyError) as info:
        fit("raise", n_simulations=20, max_failed_fraction=0.2, sampler=Uniform(seed=5))
    msg = str(info.value)
    assert "max_failed_fraction=0.2" in msg and "RuntimeError: solver diverged" in msg
    assert "theta=[" in msg and "run " in msg
