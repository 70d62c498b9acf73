"""The online DataModule as a Lightning component: the Trainer features users reach for work with
it, it leaves the Trainer as it found it, records the study in the loggers, and the live view is
a proper progress bar. Real solver processes throughout (no mocks)."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml
from _models import Regressor
from _solvers import Smooth
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, TensorDataset

import lightning_online
from lightning_online import FIFO, OnlineDataModule, ParameterSpace, Reservoir
from lightning_online.callbacks.monitor import RichStudyProgressBar, StudyMonitor, StudyProgressBar

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("no_orphans")]

SPACE = ParameterSpace([0.0, 0.0], [1.0, 1.0], names=["a", "b"])


class Module(Regressor):
    """The tests' regressor with a test step, and counts of what it saw."""

    def __init__(self) -> None:
        super().__init__(3, 1)
        self.train_batches = 0
        self.val_batches = 0

    def training_step(self, batch, batch_idx):
        self.train_batches += 1
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.val_batches += 1
        return super().validation_step(batch, batch_idx)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", torch.nn.functional.mse_loss(self(x), y))


def make_dm(**kw) -> OnlineDataModule:
    args = dict(
        n_simulations=6,
        n_workers=2,
        batch_size=4,
        buffer=FIFO(capacity=64, watermark=4),
    )
    args.update(kw)
    return OnlineDataModule(Smooth(n_steps=6), SPACE, **args)


def trainer(**kw) -> pl.Trainer:
    args = dict(
        accelerator="cpu",
        devices=1,
        max_steps=10_000,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    args.update(kw)
    return pl.Trainer(**args)


class PlainData(pl.LightningDataModule):
    """An ordinary DataModule: 3 validation batches."""

    def val_dataloader(self):
        x = torch.randn(12, 3)
        return DataLoader(TensorDataset(x, x[:, :1]), batch_size=4)


# ------------------------------------------------------------------ the Trainer, untouched
def test_the_trainer_is_left_as_it_was_found():
    t = trainer(val_check_interval=2, check_val_every_n_epoch=None)
    callbacks_before = list(t.callbacks)
    limit_before = t.limit_val_batches
    model = Module()
    t.fit(model, make_dm())  # no validation runs: no validation loop during fit
    assert model.val_batches == 0
    assert t.limit_val_batches == limit_before
    assert t.callbacks == callbacks_before
    # A later validate with another DataModule runs all of its batches.
    model.val_batches = 0
    t.validate(model, PlainData(), verbose=False)
    assert model.val_batches == 3

    # With validation runs: the per-run report needs no callback, during fit either.
    seen = []

    class Look(Callback):
        def on_train_start(self, trainer, pl_module):
            seen.append(list(trainer.callbacks))

        def on_validation_end(self, trainer, pl_module):
            seen.append(list(trainer.callbacks))

    t2 = trainer(val_check_interval=2, check_val_every_n_epoch=None, callbacks=[Look()])
    before = list(t2.callbacks)
    dm = make_dm(val_parameters=2)
    t2.fit(Module(), dm)
    assert len(seen) > 2 and all(callbacks == before for callbacks in seen)
    assert t2.callbacks == before
    assert dm.val_report is not None and len(dm.val_report["loss"]) == 2


def test_few_workers_warning_has_no_reason_and_no_filter_is_installed():
    """Lightning warns that a DataLoader with num_workers=0 'does not have many workers' (on
    machines with more than 2 CPUs per device); this DataModule's loaders are the stream's own
    iterables, not DataLoaders, so there is nothing to warn about and no warning filter is
    installed: the same warning raised by anyone else during fit is heard."""
    message = "The 'train_dataloader' does not have many workers which may be a bottleneck."
    heard = []

    class Warn(Callback):
        def on_train_start(self, trainer, pl_module):
            with warnings.catch_warnings(record=True) as got:
                warnings.simplefilter("default")
                rank_zero_warn(message, category=PossibleUserWarning)
            heard.append(len(got))

    t = trainer(callbacks=[Warn()])
    dm = make_dm()
    t.fit(Module(), dm)
    assert dm.train_dataloader.__self__ is dm and heard == [1]


# ------------------------------------------------------------------ loggers, hparams, progress bar
@pytest.mark.parametrize("bar", [StudyProgressBar, RichStudyProgressBar])
def test_loggers_hyperparameters_checkpoints_and_the_progress_bar(bar, tmp_path: Path):
    if bar is RichStudyProgressBar:
        pytest.importorskip("rich")
    loggers = [CSVLogger(tmp_path, name="csv")]
    try:
        import tensorboard  # noqa: F401
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(tmp_path, name="tb"))
    except ImportError:
        pass
    counts = {}

    class ReadBar(Callback):
        def on_train_end(self, trainer, pl_module):
            counts.update(trainer.progress_bar_callback.get_metrics(trainer, pl_module))

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    t = trainer(
        logger=loggers,
        log_every_n_steps=1,
        enable_checkpointing=True,
        enable_progress_bar=True,
        callbacks=[StudyMonitor(plot=False), bar(), ckpt, ReadBar()],
        val_check_interval=3,
        check_val_every_n_epoch=None,
    )
    assert isinstance(t.progress_bar_callback, bar)
    dm = make_dm(val_parameters=2)
    model = Module()
    t.fit(model, dm)

    # The study's figures come first on the bar, the counts as integers (no v_num).
    assert list(counts)[:3] == ["runs", "failed", "buf"] and "v_num" not in counts
    assert counts["runs"] == "6+0/6" and counts["failed"] == 0
    # The study's configuration is in the loggers (a summary: plain values).
    saved = yaml.safe_load((Path(loggers[0].log_dir) / "hparams.yaml").read_text())
    study = saved["study"]
    assert study["n_simulations"] == 6 and study["buffer"]["kind"] == "FIFO"
    assert study["space"]["names"] == ["a", "b"] and "Smooth" in study["solver"]
    metrics = (Path(loggers[0].log_dir) / "metrics.csv").read_text().splitlines()[0]
    assert "train_loss" in metrics and "runs_done" in metrics and "val_sim_loss_mean" in metrics
    if len(loggers) > 1:
        assert list(Path(loggers[1].log_dir).glob("events.out.tfevents.*"))
    # Checkpoints every 2 steps, each with the study's state.
    files = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    assert len(files) == t.global_step // 2
    state = torch.load(files[0], weights_only=False)
    assert "study" in state["OnlineDataModule"]

    # validate / test after fit: the validation runs are kept.
    (val,) = t.validate(model, dm, verbose=False)
    (test,) = t.test(model, dm, verbose=False)
    assert math.isfinite(val["val_loss"]) and math.isfinite(test["test_loss"])
    assert dm.val_report is not None and np.isfinite(dm.val_report["loss"]).all()


def test_hyperparameters_cope_with_any_solver():
    """A solver with no useful repr, or a lambda: the hparams hold a name, never the object."""

    class Opaque:
        def __call__(self, theta):
            yield (np.asarray(theta, dtype=np.float32),)

    for solver in (Opaque(), lambda theta: iter(())):
        dm = OnlineDataModule(solver, SPACE, n_simulations=2, buffer=Reservoir(64))
        study = dm.hparams["study"]
        assert isinstance(study["solver"], str) and len(study["solver"]) <= 300
        yaml.safe_dump(dict(dm.hparams))  # loggers can write it


def test_package_logger_has_a_null_handler():
    handlers = logging.getLogger("lightning_online").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)
    assert "StudyProgressBar" in lightning_online.__all__


# ------------------------------------------------------------------ Trainer features
def test_fast_dev_run():
    model = Module()
    t = trainer(fast_dev_run=2)
    dm = make_dm(val_parameters=2, n_simulations=20)
    t.fit(model, dm)  # ends after 2 batches; the runs in flight are ended (no orphans)
    assert model.train_batches == 2 and model.val_batches >= 1
    assert dm.stats["completed"] < 20


def test_early_stopping_on_validation():
    model = Module()
    stop = EarlyStopping(monitor="val_loss", stopping_threshold=1e9)  # stops at the first check
    t = trainer(val_check_interval=2, check_val_every_n_epoch=None, callbacks=[stop])
    dm = make_dm(val_parameters=2, n_simulations=40, n_workers=1)
    t.fit(model, dm)
    assert stop.stopped_epoch == 0 and t.global_step == 2
    assert dm.stats["completed"] < 40  # stopped before the budget


def test_accumulate_grad_batches():
    model = Module()
    t = trainer(accumulate_grad_batches=2)
    dm = make_dm(n_simulations=6)  # 36 samples, batches of 4: 9 batches
    t.fit(model, dm)
    assert model.train_batches == 9
    assert t.global_step == math.ceil(9 / 2)


def test_bf16_mixed_precision():
    model = Module()
    t = trainer(precision="bf16-mixed", val_check_interval=3, check_val_every_n_epoch=None)
    dm = make_dm(val_parameters=2)
    t.fit(model, dm)
    assert model.train_batches == 9 and all(math.isfinite(v) for v in model.losses)
    assert np.isfinite(dm.val_report["loss"]).all()
