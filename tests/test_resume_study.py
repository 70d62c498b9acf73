"""Resume only what matches and lose nothing completed: a checkpoint holds the study whenever it
is saved (after ``fit`` returns too), carries a fingerprint of the study that a resume checks
before any run starts, keeps drawn-but-unlaunched parameters and what the buffer holds (or,
without it, reruns completed runs whose samples were never served). Late failures are counted so that ``dm.stats`` adds up."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from _models import Regressor
from _solvers import FaultAt, Smooth

from lightning_online import (
    FIFO,
    Breed,
    Halton,
    OnlineDataModule,
    ParameterSpace,
    Reservoir,
    Uniform,
)
from lightning_online._study.ledger import Study
from lightning_online._util.dist import Group
from lightning_online._wire.samples import encode_sample

pytestmark = [pytest.mark.timeout(180)]


def trainer(max_steps: int = 100_000) -> pl.Trainer:
    return pl.Trainer(
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def datamodule(dim: int = 2, n: int = 12, high: float = 1.0, **kw) -> OnlineDataModule:
    kw.setdefault("sampler", Halton(seed=4))
    kw.setdefault("buffer", FIFO(16, watermark=4))
    return OnlineDataModule(
        kw.pop("solver", Smooth(n_steps=20, delay=0.005)),
        ParameterSpace([0.0] * dim, [high] * dim),
        n_simulations=n,
        batch_size=4,
        n_workers=2,
        **kw,
    )


@pytest.mark.usefixtures("no_orphans")
def test_a_checkpoint_saved_after_fit_returns_continues_the_study(tmp_path):
    """fit(max_steps=40), trainer.save_checkpoint, fit(ckpt_path=...) on a new DataModule: the
    study continues (it used to start over and launch the whole budget again)."""
    dm, t = datamodule(), trainer(max_steps=40)
    t.fit(Regressor(3, 1), dm)
    first = dm.launched_parameters
    assert dm.stats["completed"] < 12
    t.save_checkpoint(tmp_path / "mid.ckpt")
    state = torch.load(tmp_path / "mid.ckpt", weights_only=False)["OnlineDataModule"]
    study = state["study"]
    done = {tuple(th) for _, th in study["completed"]}
    assert study["counters"]["completed"] == len(done) > 0

    dm2 = datamodule()
    trainer().fit(Regressor(3, 1), dm2, ckpt_path=tmp_path / "mid.ckpt")
    assert dm2.stats["completed"] == 12  # the budget, exactly, across the two sessions
    launched = [tuple(t) for t in dm2.launched_parameters]
    assert launched[: len(first)] == [tuple(t) for t in first]
    relaunched = launched[len(first) :]
    assert not done & set(relaunched)  # no completed run runs again
    unfinished = {tuple(t) for t, _ in study["unfinished"]}
    assert unfinished <= set(relaunched)  # stopped, unserved and retried runs run again
    pending = [tuple(t) for t, _ in study["pending"]]
    assert relaunched[len(unfinished) : len(unfinished) + len(pending)] == pending


def _saved(tmp_path, dm: OnlineDataModule) -> str:
    t = trainer(max_steps=6)
    t.fit(Regressor(dm.space.dim + 1, 1), dm)
    path = tmp_path / "a.ckpt"
    t.save_checkpoint(path)
    return str(path)


@pytest.mark.usefixtures("no_orphans")
def test_a_checkpoint_of_another_study_is_refused_before_any_run(tmp_path):
    ckpt = _saved(tmp_path, datamodule(dim=3, n=10, sampler=Uniform(seed=1)))
    dm = datamodule(dim=2, n=4, sampler=Uniform(seed=2), buffer=Reservoir(32))
    with pytest.raises(ValueError) as info:  # (the model is the checkpoint's: it loads first)
        trainer().fit(Regressor(4, 1), dm, ckpt_path=ckpt)
    msg = str(info.value)
    for line in (
        "space.names: checkpoint ['theta0', 'theta1', 'theta2'], now ['theta0', 'theta1']",
        "space.low: checkpoint [0.0, 0.0, 0.0], now [0.0, 0.0]",
        "n_simulations: checkpoint 10, now 4",
        "sampler.seed: checkpoint 1, now 2",
        "buffer.kind: checkpoint 'FIFO', now 'Reservoir'",
        "buffer.capacity: checkpoint 16, now 32",
        'OnlineDataModule(..., resume="relaxed")',
    ):
        assert line in msg, msg
    assert len(dm.runs) == 0 and dm.stats["launched"] == 0  # refused before any run


def test_changed_sampler_hyperparameters_and_solver_are_differences():
    a = datamodule(sampler=Breed(sigma=0.05, seed=3)).fingerprint()
    b = datamodule(sampler=Breed(sigma=0.2, seed=3)).fingerprint()
    from lightning_online.data.module import _differences

    assert _differences(a, b) == [("sampler.sigma", 0.05, 0.2)]
    assert _differences(a, datamodule(sampler=Breed(sigma=0.05, seed=3)).fingerprint()) == []
    c = datamodule(solver=Smooth(n_steps=5), sampler=Breed(sigma=0.05, seed=3)).fingerprint()
    assert [k for k, *_ in _differences(a, c)] == ["solver.digest"]


@pytest.mark.usefixtures("no_orphans")
def test_a_relaxed_resume_of_another_study_runs_this_one(tmp_path, caplog):
    ckpt = _saved(tmp_path, datamodule(n=10, sampler=Uniform(seed=1)))
    dm = datamodule(n=4, high=0.5, sampler=Uniform(seed=1), resume="relaxed")
    with caplog.at_level("WARNING", logger="lightning_online"):
        trainer().fit(Regressor(3, 1), dm, ckpt_path=ckpt)
    assert "the checkpoint is of another study" in caplog.text
    assert "space.high: checkpoint [1.0, 1.0], now [0.5, 0.5]" in caplog.text
    assert dm.space.contains(dm.launched_parameters[-dm.stats["launched"] :]).all()
    assert dm.stats["completed"] >= 4


@pytest.mark.usefixtures("no_orphans")
def test_a_checkpoint_without_study_progress_is_refused_loudly(tmp_path):
    ckpt = _saved(tmp_path, datamodule())
    state = torch.load(ckpt, weights_only=False)
    del state["OnlineDataModule"]["study"]
    state["OnlineDataModule"]["study_missing"] = "it was saved from an exception handler under DDP"
    torch.save(state, ckpt)
    with pytest.raises(ValueError, match=r"holds no study progress \(it was saved from an exc"):
        trainer().fit(Regressor(3, 1), datamodule(), ckpt_path=ckpt)


# -- the ledger, driven directly -------------------------------------------------------------


def _study(buffer, n: int = 8) -> Study:
    return Study(
        space=ParameterSpace([0, 0], [1, 1]),
        sampler=Uniform(seed=0),
        buffer=buffer,
        n_simulations=n,
        n_workers=2,
        batch_size=2,
        max_retries=1,
        max_failed_fraction=1.0,
        group=Group(),
    )


def _run(study: Study, steps: int) -> int:
    sim_id, theta = study.next_task()
    for k in range(steps):
        study.on_sample(
            encode_sample(sim_id, k, (theta.astype(np.float32), np.ones(1, np.float32)))
        )
    return sim_id


@pytest.mark.parametrize("keep_buffer", [True, False])
@pytest.mark.parametrize("buffer", [FIFO(16, watermark=2), Reservoir(16, watermark=2)])
def test_completed_runs_with_unserved_samples_and_drawn_parameters_are_not_lost(
    buffer, keep_buffer
):
    """With the buffer in the checkpoint (the default) a completed run with unserved samples
    stays completed and its samples are restored; without it, the run runs again."""
    study = _study(buffer)
    study.keep_buffer = keep_buffer
    study.sync()  # permits and drawn parameters
    served = _run(study, 2)
    study.on_end(served, True, 2, 0.1, "")
    while study.buffer.unserved:  # train on everything of the first run
        study.take()
    unserved = _run(study, 3)
    study.on_end(unserved, True, 3, 0.1, "")
    running = _run(study, 1)
    pending = [t.tolist() for t, _ in study._pending]
    state = study.export(consumed=study._taken)  # every batch served was trained on
    unfinished = [t for t, _ in state["unfinished"]]
    assert study.runs[running].theta.tolist() in unfinished
    assert [t for t, _ in state["pending"]] == pending and pending  # drawn, not launched: kept
    again = _study(type(buffer)(16, watermark=2))
    again.restore(state)
    assert [t.tolist() for t, _ in again._pending] == pending
    if keep_buffer:
        assert [i for i, _ in state["completed"]] == [served, unserved]
        assert state["counters"]["completed"] == 2 and state["rerun"] == 0
        assert len(again._retry) == 1
        held = again.store.ids(np.asarray(again.buffer.unserved_items()))
        assert sorted(zip(*(a.tolist() for a in held), strict=True)) == [
            (unserved, k) for k in range(3)
        ]  # the samples training had not seen; not the running run's (it runs again)
    else:
        assert [i for i, _ in state["completed"]] == [served]
        assert state["counters"]["completed"] == 1 and state["rerun"] == 1
        assert study.runs[unserved].theta.tolist() in unfinished  # never trained on: reruns
        assert len(again._retry) == 2 and len(again.buffer) == 0


@pytest.mark.usefixtures("no_orphans")
def test_late_failures_keep_their_samples_and_the_stats_add_up():
    """A run that fails after streaming: its samples stay (valid, maybe already served), its
    retry streams its own; samples_received = completed runs' samples + samples_from_failed."""
    dm = OnlineDataModule(
        FaultAt("raise"),  # theta[0] < 0.5: two steps, then an exception
        ParameterSpace([0.0, 0.0], [1.0, 1.0]),
        n_simulations=5,
        batch_size=4,
        n_workers=2,
        sampler=Uniform(seed=11),
        buffer=FIFO(64, watermark=4),
        max_retries=1,
        max_failed_fraction=0.95,
    )
    trainer().fit(Regressor(2, 1), dm)
    stats, runs = dm.stats, list(dm.runs.values())
    failed = [r for r in runs if r.status == "failed"]
    completed = [r for r in runs if r.status == "completed"]
    assert failed and stats["samples_from_failed"] == sum(r.n_samples for r in failed) > 0
    assert all(r.n_samples == 2 for r in failed)
    assert (
        stats["samples_received"]
        == sum(r.n_samples for r in completed) + stats["samples_from_failed"]
    )
    assert stats["completed"] == 5 and sum(r.n_samples for r in completed) == 5 * 6
