"""The per-run validation report (``dm.val_report``, ``val_sim_loss_mean/p95/max``): the loss of
each validation run, exact (checked against the solver and the model alone), logged where
ModelCheckpoint and EarlyStopping see it, for fit, validate and test, on one device and under
DDP (2 CPU ranks, gloo) - and made without adding anything to the Trainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _models import Regressor, quiet_trainer
from _solvers import Smooth
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from lightning_online import FIFO, OnlineDataModule, ParameterSpace

HERE = Path(__file__).parent
SPACE = ParameterSpace([0.0, 0.0], [1.0, 1.0], names=["a", "b"])
NAMES = ("val_sim_loss_mean", "val_sim_loss_p95", "val_sim_loss_max")
STEPS = 7  # samples per run: batches of 4 straddle the runs
pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("no_orphans")]


class Module(Regressor):
    def __init__(self) -> None:
        super().__init__(3, 1)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", torch.nn.functional.mse_loss(self(x), y))


def make_dm(**kw) -> OnlineDataModule:
    args = dict(
        n_simulations=6, n_workers=2, batch_size=4, buffer=FIFO(capacity=64, watermark=4),
        val_parameters=3, val_batch_size=4,
    )  # fmt: skip
    args.update(kw)
    return OnlineDataModule(Smooth(n_steps=STEPS), SPACE, **args)


def direct_losses(model, thetas) -> np.ndarray:
    """The mean squared error of each validation run, from the solver and the model alone."""
    out = []
    with torch.no_grad():
        for theta in thetas:
            xs, ys = zip(*Smooth(n_steps=STEPS)(theta), strict=True)
            x, y = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
            out.append(float(((model(x) - y) ** 2).mean()))
    return np.array(out)


def figures(losses: np.ndarray) -> list[float]:
    return [losses.mean(), np.percentile(losses, 95), losses.max()]


class Record(Callback):
    """callback_metrics and the Trainer's callbacks at each validation end and at train start."""

    def __init__(self) -> None:
        self.logged: list[list[float]] = []
        self.at_train_start: set[str] = set()
        self.callbacks: list[list[Callback]] = []

    def on_train_start(self, trainer, pl_module):
        self.at_train_start = set(trainer.callback_metrics) | set(trainer.logged_metrics)
        self.callbacks.append(list(trainer.callbacks))

    def on_validation_end(self, trainer, pl_module):
        self.callbacks.append(list(trainer.callbacks))
        if not trainer.sanity_checking:
            self.logged.append([float(trainer.callback_metrics[n]) for n in NAMES])


def test_the_report_is_the_loss_of_each_validation_run_for_validate_and_test():
    record = Record()
    trainer = quiet_trainer([record], accelerator="cpu", devices=1, val_check_interval=2,
                            check_val_every_n_epoch=None)  # fmt: skip
    before = list(trainer.callbacks)
    model, dm = Module(), make_dm()
    trainer.fit(model, dm)
    assert len(record.logged) >= 2
    assert all(cbs == before for cbs in record.callbacks) and trainer.callbacks == before
    # not logged by the sanity check (Lightning discards what it logs)
    assert not set(NAMES) & record.at_train_start
    model.eval()
    expected = direct_losses(model, dm.val_report["theta"])
    # the last validation of fit ran on the final model only if it came after the last step:
    # validate now, with the model as it is
    (val,) = trainer.validate(model, dm, verbose=False)
    np.testing.assert_allclose(dm.val_report["loss"], expected, rtol=1e-5)
    np.testing.assert_allclose([val[n] for n in NAMES], figures(expected), rtol=1e-5)
    dm.val_report = None
    (test,) = trainer.test(model, dm, verbose=False)
    np.testing.assert_allclose(dm.val_report["loss"], expected, rtol=1e-5)
    np.testing.assert_allclose([test[n] for n in NAMES], figures(expected), rtol=1e-5)
    assert trainer.callbacks == before


def test_each_logged_figure_is_that_validations_report(tmp_path):
    """What is logged at each validation is the report of that validation (not the last one's,
    not the sanity check's), and ModelCheckpoint and EarlyStopping monitor it."""

    class Reports(Callback):
        def __init__(self) -> None:
            self.reports: list[np.ndarray] = []

        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                self.reports.append(trainer.datamodule.val_report["loss"].copy())

    record, reports = Record(), Reports()
    ckpt = ModelCheckpoint(monitor="val_sim_loss_mean", save_top_k=1, dirpath=tmp_path)
    stop = EarlyStopping(monitor="val_sim_loss_max", patience=1000)
    trainer = quiet_trainer(
        [record, reports, ckpt, stop], accelerator="cpu", devices=1, val_check_interval=2,
        check_val_every_n_epoch=None, enable_checkpointing=True, default_root_dir=tmp_path,
    )  # fmt: skip
    dm = make_dm(n_simulations=8)
    trainer.fit(Module(), dm)
    assert len(record.logged) == len(reports.reports) >= 3
    for logged, report in zip(record.logged, reports.reports, strict=True):
        np.testing.assert_allclose(logged, figures(report), rtol=1e-6)
    assert len({tuple(r) for r in reports.reports}) > 1  # the model learns between validations
    means = [m for m, _, _ in record.logged]
    assert float(ckpt.best_model_score) == pytest.approx(min(means), rel=1e-6)
    assert float(stop.best_score) == pytest.approx(min(x for _, _, x in record.logged), rel=1e-6)


def test_the_module_keeps_no_hook_after_fit():
    model, dm = Module(), make_dm()
    trainer = quiet_trainer(accelerator="cpu", devices=1, val_check_interval=2,
                            check_val_every_n_epoch=None)  # fmt: skip
    trainer.fit(model, dm)
    assert dm.val_report is not None
    assert not model._forward_hooks
    trainer.validate(model, dm, verbose=False)
    assert not model._forward_hooks
    # the loader iterated by hand (outside Lightning's loops) makes no report and adds no hook
    dm.val_report = None
    for _ in dm.val_dataloader():
        assert not model._forward_hooks
    assert dm.val_report is None


@pytest.mark.timeout(300)
def test_ddp_report_is_exact_identical_on_both_ranks_and_without_sync_dist_warning(tmp_path):
    """2 CPU ranks (gloo), 21 validation samples (one rank's share is padded): every rank logs
    the same figures, the report equals the per-run loss computed from the solver and the model
    (padding left out), Lightning never warns about sync_dist, the Trainer's callbacks are the
    user's, and the package reduces nothing on the Trainer's group."""
    result = tmp_path / "result"
    env = dict(os.environ, PYTHONPATH=str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, str(HERE / "scripts" / "ddp_val_report.py"), str(result)],
        capture_output=True, text=True, timeout=280, env=env, cwd=tmp_path,
        start_new_session=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"result.{r}.json").read_text()) for r in range(2)]
    r0, r1 = ranks
    assert len(r0["logged"]) >= 2
    assert r0["logged"] == r1["logged"] and r0["validated"] == r1["validated"]
    assert r0["after_fit"] == r1["after_fit"] and r0["report"] == r1["report"]
    np.testing.assert_allclose(r0["report"], r0["direct"], rtol=1e-5)
    np.testing.assert_allclose(r0["validated"], figures(np.array(r0["direct"])), rtol=1e-5)
    for r in ranks:
        assert [w for w in r["warnings"] if "sync_dist" in w] == [], r["warnings"]
        assert all(seen == r["callbacks_before"] for seen in r["callbacks_seen"])
        assert r["world_collectives"] == []
