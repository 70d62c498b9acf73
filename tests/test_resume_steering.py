"""Resume and steering: pending steered draws survive a resume, a relaxed resume takes a new
sampler kind, the callback's window does not outlive its fit, and the sampler's state is saved
once (by the DataModule)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from _models import Regressor, quiet_trainer
from _solvers import Smooth
from lightning.pytorch.callbacks import Callback

from lightning_online import (
    FIFO,
    ActiveSampling,
    Breed,
    ErrorModel,
    Halton,
    OnlineDataModule,
    ParameterSpace,
    Uniform,
)

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("no_orphans")]


def _dm(n: int = 16, **kw) -> OnlineDataModule:
    kw.setdefault("sampler", Breed(start=1.0, end=1.0, seed=2))
    kw.setdefault("buffer", FIFO(32, watermark=4))
    kw.setdefault("n_workers", 2)
    return OnlineDataModule(
        Smooth(n_steps=10), ParameterSpace([0, 0], [1, 1]), n_simulations=n, batch_size=4, **kw
    )


class Slow(Callback):
    """Training slower than the solver: the buffer stays full, both runs in flight wait for
    room, and the parameters drawn for the next runs wait, not launched."""

    def on_train_batch_end(self, *args):
        time.sleep(0.01)


def test_pending_steered_draws_are_launched_after_a_resume(tmp_path):
    dm, active = _dm(buffer=FIFO(8, watermark=4)), ActiveSampling(update_every_n_steps=5, window=5)
    t = quiet_trainer([active, Slow()], max_steps=22)
    t.fit(Regressor(3, 1), dm)
    t.save_checkpoint(tmp_path / "a.ckpt")
    study = torch.load(tmp_path / "a.ckpt", weights_only=False)["OnlineDataModule"]["study"]
    pending = [tuple(th) for th, steered in study["pending"]]
    assert any(steered for _, steered in study["pending"]), study["pending"]
    first = len(dm.launched_parameters)

    # enough workers to launch the unfinished runs and the pending draws at once (before the
    # next update makes the pending steered draws stale, as it should)
    dm2 = _dm(buffer=FIFO(8, watermark=4), n_workers=len(study["unfinished"]) + len(pending))
    again = ActiveSampling(update_every_n_steps=5, window=5)
    quiet_trainer([again]).fit(Regressor(3, 1), dm2, ckpt_path=tmp_path / "a.ckpt")
    launched = [tuple(th) for th in dm2.launched_parameters[first:]]
    n_unfinished = len(study["unfinished"])
    assert launched[n_unfinished : n_unfinished + len(pending)] == pending


def test_a_relaxed_resume_with_another_sampler_kind_runs_with_the_new_sampler(tmp_path, caplog):
    dm = _dm(n=8, sampler=Uniform(seed=1))
    t = quiet_trainer(max_steps=6)
    t.fit(Regressor(3, 1), dm)
    t.save_checkpoint(tmp_path / "a.ckpt")
    first = len(dm.launched_parameters)

    dm2 = _dm(n=8, sampler=Halton(seed=3), resume="relaxed")
    with caplog.at_level("WARNING", logger="lightning_online"):
        quiet_trainer().fit(Regressor(3, 1), dm2, ckpt_path=tmp_path / "a.ckpt")
    assert "sampler.kind: checkpoint 'Uniform', now 'Halton'" in caplog.text
    assert "the saved Uniform sampler state is dropped" in caplog.text
    assert dm2.stats["completed"] == 8
    assert isinstance(dm2.sampler, Halton) and dm2.sampler.state_dict()["kind"] == "Halton"
    # the new runs follow the new sampler: its first draws, in order, after the relaunches
    new = dm2.launched_parameters[first:]
    halton = Halton(seed=3).draw(dm2.space, len(new))
    assert any(np.allclose(new[i:], halton[: len(new) - i]) for i in range(len(new)))


def test_a_second_fit_with_the_same_callback_attributes_losses_to_its_own_runs():
    active = ActiveSampling(update_every_n_steps=4, window=8)
    dm = _dm(n=12, sampler=Breed(seed=1))
    quiet_trainer([active]).fit(Regressor(3, 1), dm)
    dm2 = _dm(n=3, sampler=Breed(seed=5))
    quiet_trainer([active], max_steps=12).fit(Regressor(3, 1), dm2)
    assert active.last_stats is not None
    mine = {tuple(th) for th in dm2.launched_parameters}
    assert {tuple(p) for p in active.last_stats.parameters} <= mine


def test_the_sampler_state_is_saved_once(tmp_path):
    dm, active = (
        _dm(n=6, sampler=ErrorModel(seed=0)),
        ActiveSampling(update_every_n_steps=2, window=4),
    )
    t = quiet_trainer([active], max_steps=8)
    t.fit(Regressor(3, 1), dm)
    t.save_checkpoint(tmp_path / "a.ckpt")
    ckpt = torch.load(tmp_path / "a.ckpt", weights_only=False)

    def count(obj) -> int:
        if isinstance(obj, dict):
            own = obj.get("kind") == "ErrorModel" and "rng" in obj
            return own + sum(count(v) for v in obj.values())
        if isinstance(obj, list | tuple):
            return sum(count(v) for v in obj)
        return 0

    assert count(ckpt) == 1
    assert count(ckpt["OnlineDataModule"]) == 1
