"""The online path end to end, with real MPI workers and solver processes (no mocks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from _models import Regressor
from _solvers import Faulty, Smooth
from lightning.pytorch.demos.boring_classes import BoringModel

from lightning_online import (
    FIFO,
    FIRO,
    Halton,
    OnlineDataModule,
    ParameterSpace,
    Reservoir,
    StudyError,
    Uniform,
)
from lightning_online._wire.samples import COALESCE_SAMPLES
from lightning_online.solvers import Heat2D, heat2d_space

HERE = Path(__file__).parent
pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("no_orphans")]


def trainer(**kw) -> pl.Trainer:
    opts = dict(
        accelerator="cpu",
        devices=1,
        max_steps=100_000,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    opts.update(kw)
    return pl.Trainer(**opts)


def heat_dm(**kw) -> OnlineDataModule:
    low, high, names = heat2d_space()
    opts = dict(
        n_simulations=8,
        batch_size=16,
        n_workers=2,
        buffer=FIFO(128, watermark=32),
        sampler=Halton(seed=0),
    )
    opts.update(kw)
    return OnlineDataModule(
        Heat2D(nx=8, ny=8, n_steps=10), ParameterSpace(low, high, names), **opts
    )


def test_online_fit_heat_mlp_ends_by_itself():
    dm = heat_dm(val_parameters=3)
    model = Regressor(6, 64)
    tr = trainer(max_steps=10_000)
    tr.fit(model, dm)
    stats = dm.stats
    # The whole budget ran, every sample was served once (FIFO), and fit ended on its own.
    assert stats["launched"] == stats["completed"] == 8
    assert stats["failed"] == 0
    assert stats["samples_received"] == 80 == stats["samples_served"]
    assert tr.global_step == 5  # 80 samples / 16 per batch
    assert dm.launched_parameters.shape == (8, 5)
    assert np.all(dm.space.contains(dm.launched_parameters))
    # Launched parameters are the sampler's draws (Halton(seed=0)), in launch order.
    assert {tuple(r) for r in dm.launched_parameters} == {
        tuple(r) for r in Halton(seed=0).draw(dm.space, 8)
    }
    # Per-simulation validation report over the 3 validation runs.
    assert dm.val_report is not None and dm.val_report["loss"].shape == (3,)
    assert np.all(np.isfinite(dm.val_report["loss"]))
    for key in ("val_sim_loss_mean", "val_sim_loss_p95", "val_sim_loss_max"):
        assert key in tr.callback_metrics
    assert float(tr.callback_metrics["val_sim_loss_max"]) >= float(
        tr.callback_metrics["val_sim_loss_mean"]
    )


def test_batches_are_exactly_what_the_solver_yields():
    seen = []

    class Spy(Regressor):
        def training_step(self, batch, batch_idx):
            seen.append([t.clone() for t in batch])
            return super().training_step(batch, batch_idx)

    dm = heat_dm(n_simulations=2, n_workers=1, buffer=FIFO(20, watermark=20), batch_size=20)
    trainer().fit(Spy(6, 64), dm)
    ((x, y),) = seen
    assert x.dtype == torch.float32 and x.shape == (20, 6) and y.shape == (20, 64)
    solver = Heat2D(nx=8, ny=8, n_steps=10)
    expected = {
        tuple(np.round(xx, 6)): yy for theta in dm.launched_parameters for xx, yy in solver(theta)
    }
    for xi, yi in zip(x.numpy(), y.numpy(), strict=True):
        np.testing.assert_array_equal(expected[tuple(np.round(xi, 6))], yi)


def test_boring_model_trains_unchanged_from_bare_arrays():
    def solver(theta):  # defined here, pickled by value
        for k in range(8):
            yield np.full(32, theta[0] + k, dtype=np.float32)

    dm = OnlineDataModule(
        solver, ParameterSpace([0.0], [1.0]), n_simulations=4, batch_size=8, buffer=FIRO(32, 8)
    )
    tr = trainer()
    tr.fit(BoringModel(), dm)
    assert tr.global_step == 4 and dm.stats["completed"] == 4


@pytest.mark.parametrize("buffer", [FIFO(64, 16), FIRO(64, 16), Reservoir(64, 16)])
def test_every_buffer_drains_and_serves_each_sample(buffer):
    dm = OnlineDataModule(
        Smooth(n_steps=10),
        ParameterSpace([0, 0], [1, 1]),
        n_simulations=12,
        batch_size=8,
        buffer=buffer,
    )
    trainer().fit(Regressor(3, 1), dm)
    assert dm.stats["completed"] == 12 and dm.stats["samples_received"] == 120
    if isinstance(buffer, Reservoir):
        assert dm.stats["samples_served"] >= 120
        assert dm.buffer.unserved == 0
    else:
        assert dm.stats["samples_served"] == 120


def test_backpressure_bounds_memory_and_blocks_solvers():
    # Long, fast runs and a training loop that stops early: the solvers must be held back by the
    # full buffer, not stream thousands of samples into memory.
    dm = OnlineDataModule(
        Smooth(n_steps=5000),
        ParameterSpace([0, 0], [1, 1]),
        n_simulations=4,
        batch_size=8,
        n_workers=2,
        buffer=FIFO(32, watermark=32),
    )
    tr = trainer(max_steps=20)
    tr.fit(Regressor(3, 1), dm)
    stats = dm.stats
    assert tr.global_step == 20
    # Lightning fetches one batch ahead: at most one batch more was served than trained on.
    assert 160 <= stats["samples_served"] <= 168
    # The buffer holds 32; one message of several samples may overshoot it by its size (the
    # store's spare slots, preallocated), never more.
    assert stats["samples_received"] <= stats["samples_served"] + 32 + COALESCE_SAMPLES
    assert stats["completed"] == 0  # the runs were stopped, not finished
    assert not any(r.in_flight for r in dm.runs.values())


def test_faulty_runs_are_retried_redrawn_and_the_budget_is_met(caplog):
    dm = OnlineDataModule(
        Faulty(),
        ParameterSpace([0.0, 0.0], [1.0, 1.0]),
        n_simulations=10,
        batch_size=6,
        n_workers=2,
        sampler=Uniform(seed=3),
        buffer=FIFO(60, watermark=6),
        max_failed_fraction=0.9,
    )
    with caplog.at_level("WARNING", logger="lightning_online"):
        trainer().fit(Regressor(2, 1), dm)
    stats = dm.stats
    assert stats["completed"] == 10
    assert stats["failed"] >= 1
    assert stats["launched"] == stats["completed"] + stats["failed"]
    failed = [r for r in dm.runs.values() if r.status == "failed"]
    assert len(failed) == stats["failed"]
    reasons = " | ".join(r.reason for r in failed)
    bad = [r.theta[0] for r in failed]
    assert all(t < 0.5 for t in bad), bad  # only the faulty part of the box failed
    # every completed run's parameters are healthy, and the failure kinds are named
    assert all(r.theta[0] >= 0.5 for r in dm.runs.values() if r.status == "completed")
    kinds = {
        "RuntimeError: solver diverged": 0.0,
        "NaN or Inf": 0.1,
        "differ from the first step": 0.2,
        "SIGSEGV": 0.3,
        "the solver yielded no sample": 0.4,
    }
    for text, lo in kinds.items():
        if any(lo <= t < lo + 0.1 for t in bad):
            assert text in reasons, (text, reasons)
    # a failed run is retried once with the same parameters, then its parameters are redrawn
    for r in failed:
        if r.attempt == 0:
            again = [q for q in dm.runs.values() if np.array_equal(q.theta, r.theta)]
            assert len(again) == 2
    # logged with the simulation id and its parameters
    assert any("solver run" in m and "theta=" in m for m in caplog.messages)


def test_too_many_failures_stop_the_study_with_the_list():
    def always_fails(theta):
        raise ValueError(f"bad input {theta[0]:.2f}")
        yield

    dm = OnlineDataModule(
        always_fails,
        ParameterSpace([0.0], [1.0]),
        n_simulations=4,
        batch_size=2,
        buffer=FIFO(8, 2),
    )
    with pytest.raises(StudyError, match=r"(?s)max_failed_fraction.*theta=.*ValueError: bad input"):
        trainer().fit(Regressor(2, 1), dm)


def test_solver_defined_in_main_script(tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(
        "import numpy as np, lightning.pytorch as pl, json, sys\n"
        f"sys.path.insert(0, {str(HERE)!r})\n"
        "from _models import Regressor\n"
        "from lightning_online import OnlineDataModule, ParameterSpace, FIFO\n"
        "SCALE = 2.0\n"
        "def my_solver(theta):\n"
        "    for k in range(5):\n"
        "        x = np.array([theta[0], k], np.float32)\n"
        "        yield x, (SCALE * x[:1]).astype(np.float32)\n"
        "if __name__ == '__main__':\n"
        "    dm = OnlineDataModule(my_solver, ParameterSpace([0], [1]), n_simulations=4,\n"
        "                          batch_size=4, buffer=FIFO(20, 4))\n"
        "    pl.Trainer(max_steps=1000, logger=False, enable_checkpointing=False,\n"
        "               enable_progress_bar=False).fit(Regressor(2, 1), dm)\n"
        "    print(json.dumps(dict(dm.stats)))\n"
    )
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        start_new_session=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    assert stats["completed"] == 4 and stats["samples_served"] == 20


def run_ddp_script(tmp_path, *args: str, check: bool = True) -> list[dict]:
    """Run tests/scripts/ddp_fit.py (2 CPU ranks, gloo) and read what each rank wrote."""
    result = tmp_path / "result"
    env = dict(os.environ, PYTHONPATH=str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, str(HERE / "scripts" / "ddp_fit.py"), str(result), *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
    )
    if not check:
        return out
    assert out.returncode == 0, out.stderr[-4000:]
    return [json.loads((tmp_path / f"result.{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("validation", [False, True])
def test_ddp_one_rank_whose_solvers_all_fail_does_not_hang_the_other(tmp_path, validation):
    args = ["--rank1-fails"] + ([] if validation else ["--no-val"])
    out = run_ddp_script(tmp_path, *args, check=False)  # bounded by its timeout
    assert out.returncode != 0
    # both ranks stop together with the reason, during validation or during training
    expected = "validation runs failed on rank(s) [1]" if validation else "max_failed_fraction"
    for rank in (0, 1):
        assert f"[rank{rank}]: lightning_online.errors.StudyError: " in out.stderr
    assert expected in out.stderr
    assert "this node's solver installation is broken" in out.stderr
    assert not list(tmp_path.glob("result.*.json"))  # neither rank carried on as if all was well


def test_ddp_two_ranks_unequal_speeds_do_not_hang(tmp_path):
    """Two CPU ranks (gloo); rank speeds differ wildly; the budget is met exactly, no hang."""
    ranks = run_ddp_script(tmp_path)
    assert ranks[0]["stats"] == ranks[1]["stats"]  # identical on every rank once fit returns
    assert ranks[0]["global_step"] == ranks[1]["global_step"]
    assert ranks[0]["launched"] == ranks[1]["launched"]
    stats = ranks[0]["stats"]
    assert stats["completed"] == 24 and stats["launched"] == 24  # exact budget across ranks
    assert stats["samples_received"] == 24 * 10
    assert len(ranks[0]["launched"]) == 24
    # every rank received runs, the fast rank more of them than the slow one
    assert all(r["local_runs"] > 0 for r in ranks)


def test_stop_early_ends_runs_in_flight():
    dm = OnlineDataModule(
        Smooth(n_steps=200, delay=0.01),
        ParameterSpace([0, 0], [1, 1]),
        n_simulations=50,
        batch_size=4,
        buffer=FIFO(16, 4),
    )
    tr = trainer(max_steps=3)
    tr.fit(Regressor(3, 1), dm)
    assert tr.global_step == 3
    assert dm.stats["completed"] < 50
    assert not any(r.in_flight for r in dm.runs.values())


def test_interrupt_in_training_step_leaves_nothing_behind():
    class Boom(Regressor):
        def training_step(self, batch, batch_idx):
            if batch_idx == 2:
                raise RuntimeError("user code failed")
            return super().training_step(batch, batch_idx)

    dm = OnlineDataModule(
        Smooth(n_steps=100, delay=0.005),
        ParameterSpace([0, 0], [1, 1]),
        n_simulations=20,
        batch_size=4,
        buffer=FIFO(16, 4),
    )
    with pytest.raises(RuntimeError, match="user code failed"):
        trainer().fit(Boom(3, 1), dm)
    assert threading.active_count() < 10


def _unpicklable_solver():
    lock = threading.Lock()

    def solver(theta):
        with lock:
            yield np.zeros(1, np.float32), np.zeros(1, np.float32)

    return solver


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(batch_size=64, buffer=FIFO(32)), "larger than the buffer's capacity"),
        (dict(n_simulations=0), "n_simulations must be a positive integer"),
        (dict(n_simulations=-3), "n_simulations must be a positive integer"),
        (dict(n_workers=0), "n_workers must be a positive integer"),
        (dict(batch_size=0), "batch_size must be a positive integer"),
        (dict(val_parameters=np.array([[2.0, 0.5]])), "outside the parameter space"),
        (dict(val_parameters=np.zeros((3, 5))), r"\(n, 2\) array"),
        (dict(run_timeout=0), r"run_timeout must be a finite number > 0 or None"),
        (dict(max_retries=-1), "max_retries must be a non-negative integer"),
        (dict(max_failed_fraction=0.0), r"max_failed_fraction must be a finite number in \(0, 1\]"),
        (dict(solver=_unpicklable_solver()), "cannot be pickled"),
        (dict(solver=42), "solver must be callable"),
        (dict(space=[0, 1]), "space must be a ParameterSpace"),
        (dict(sampler="uniform"), "sampler must be a Sampler"),
    ],
)
def test_bad_configuration_is_refused_at_construction(kwargs, match):
    opts = dict(solver=Smooth(), space=ParameterSpace([0, 0], [1, 1]), n_simulations=10)
    opts.update(kwargs)
    solver, space = opts.pop("solver"), opts.pop("space")
    with pytest.raises((ValueError, TypeError), match=match):
        OnlineDataModule(solver, space, **opts)
