"""``StudyMonitor``: progress-bar figures, the summary table, the validation-error picture."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
from _models import Regressor
from _solvers import Faulty

from lightning_online import FIFO, Halton, OnlineDataModule, ParameterSpace
from lightning_online.callbacks.monitor import (
    StudyMonitor,
    StudyProgressBar,
    format_summary,
    plot_validation_error,
    study_summary,
)

SPACE = ParameterSpace([1e-3, 0.0], [1.0, 2.0], names=["nu", "a"], log=[True, False])


def fake_dm(loss=(0.1, 0.2, 0.4), failed=0, runs=None) -> SimpleNamespace:
    theta = np.array([[1e-2, 0.5], [1e-1, 1.0], [0.5, 1.5]])
    return SimpleNamespace(
        stats={
            "launched": 10 + failed,
            "completed": 10,
            "failed": failed,
            "running": 0,
            "samples_received": 500,
            "samples_served": 1500,
            "mean_reuse": 3.0,
            "buffer_fill": 0.5,
        },
        val_report={"theta": theta, "loss": np.asarray(loss, dtype=float)},
        space=SPACE,
        launched_parameters=SPACE.from_unit(np.random.default_rng(0).random((11, 2))),
        runs=runs or {},
    )


def test_summary_figures_and_table():
    dm = fake_dm(loss=(0.1, 0.2, np.nan))
    s = study_summary(dm, val_step=40)
    assert s["runs_launched"] == 10 and s["samples_streamed"] == 500
    assert s["samples_served"] == 1500 and s["mean_reuse"] == 3.0
    assert s["val_runs"] == 2  # the NaN run was never seen
    assert s["val_error_mean"] == pytest.approx(0.15)
    assert s["val_error_max"] == pytest.approx(0.2)
    assert s["val_error_p95"] == pytest.approx(np.percentile([0.1, 0.2], 95))
    table = format_summary(s)
    for text in ("runs launched", "samples streamed", "mean reuse per sample", "3.00"):
        assert text in table
    assert "mean 0.15, p95 0.195, max 0.2\n" in table
    assert "2 validation runs at step 40" in table
    assert all(len(line) <= 80 for line in table.splitlines())


def test_summary_lists_failures_and_missing_validation():
    run = SimpleNamespace(status="failed", theta=np.array([0.5, 1.0]), reason="Trace\nBoom: bad")
    dm = fake_dm(failed=2, runs={3: run})
    dm.val_report = None
    table = format_summary(study_summary(dm), dm)
    assert "2 (16.7 % of launched)" in table
    assert "Boom: bad" in table and "[0.5, 1. ]" in table
    assert "no validation runs" in table


def test_plot_has_a_panel_per_parameter_with_log_axes(tmp_path):
    dm = fake_dm(loss=(0.1, np.nan, 0.4))
    fig = plot_validation_error(
        dm.val_report["theta"], dm.val_report["loss"], SPACE, launched=dm.launched_parameters
    )
    axes = [ax for ax in fig.axes if ax.get_xlabel()]
    # a panel per parameter, then the map of the error over both
    assert [ax.get_xlabel() for ax in axes][:2] == ["nu (log)", "a"]
    assert axes[2].get_title().startswith("error over")
    assert axes[0].get_xscale() == "log" and axes[1].get_xscale() == "linear"
    assert axes[0].get_yscale() == "log"
    fig.savefig(tmp_path / "x.png")
    assert (tmp_path / "x.png").stat().st_size > 1000


class FigureSink:
    def __init__(self) -> None:
        self.figures: list[tuple[str, int]] = []

    def add_figure(self, tag, figure, global_step=None, close=True):
        self.figures.append((tag, global_step))


def fake_trainer(step: int) -> SimpleNamespace:
    logger = SimpleNamespace(experiment=FigureSink())
    return SimpleNamespace(
        sanity_checking=False, is_global_zero=True, global_step=step, loggers=[logger]
    )


def test_picture_saved_and_logged_after_validation(tmp_path):
    monitor = StudyMonitor(plot_every_n_validations=2)
    monitor._dm, monitor._log_dir = fake_dm(), str(tmp_path)
    for step in (10, 20, 30):
        trainer = fake_trainer(step)
        monitor.on_validation_end(trainer, None)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "val_error_last.png",
        "val_error_step10.png",
        "val_error_step30.png",
    ]
    assert trainer.loggers[0].experiment.figures == [("study/val_error", 30)]
    # Sanity checks and runs without validation draw nothing.
    trainer = fake_trainer(40)
    trainer.sanity_checking = True
    monitor.on_validation_end(trainer, None)
    assert not (tmp_path / "val_error_step40.png").exists()


def test_no_matplotlib_no_picture_but_no_failure(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    monitor = StudyMonitor()
    monitor._dm, monitor._log_dir = fake_dm(), str(tmp_path)
    with pytest.warns(UserWarning, match="no validation error picture"):
        monitor.on_validation_end(fake_trainer(5), None)
    monitor.on_validation_end(fake_trainer(6), None)  # warned once
    assert not list(tmp_path.glob("*.png"))


def test_progress_bars_are_lightning_progress_bars():
    # Proper subclasses (no patching of the Trainer's bar); the integer counts are checked in a
    # real fit with each of them: test_lightning.py::test_loggers_hyperparameters_checkpoints_and_the_progress_bar
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    from lightning_online.callbacks.monitor import RichStudyProgressBar

    assert issubclass(StudyProgressBar, TQDMProgressBar)
    assert issubclass(RichStudyProgressBar, RichProgressBar)


def test_bad_arguments():
    with pytest.raises(ValueError, match="plot_every_n_validations"):
        StudyMonitor(plot_every_n_validations=0)
    with pytest.raises(ValueError, match="max_plot_dims"):
        StudyMonitor(max_plot_dims=0)


@pytest.mark.timeout(240)
@pytest.mark.usefixtures("no_orphans")
def test_live_view_of_a_real_study(tmp_path, summary_log):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # Faulty yields nothing for theta in [0.4, 0.5): about half of these runs fail.
    dm = OnlineDataModule(
        Faulty(n_steps=6),
        ParameterSpace([0.4], [0.6], names=["theta"]),
        n_simulations=6,
        sampler=Halton(seed=0),
        buffer=FIFO(64, watermark=8),
        batch_size=4,
        val_parameters=np.array([[0.55], [0.58]]),
        max_retries=0,
        max_failed_fraction=0.9,
    )
    logger = TensorBoardLogger(tmp_path, name="study")
    monitor = StudyMonitor()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=1000,
        val_check_interval=3,
        check_val_every_n_epoch=None,
        log_every_n_steps=1,
        logger=logger,
        callbacks=[monitor],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Regressor(2, 1), dm)

    # Progress bar and logger figures.
    bar = trainer.progress_bar_metrics
    assert bar["runs_done"] == 6 and bar["runs_launched"] == dm.stats["launched"]
    assert 0.0 <= bar["buffer_fill"] <= 1.0
    # The summary: printed once, kept, written next to the logs and sent to the logger.
    summary = monitor.summary
    assert summary["runs_completed"] == 6 and summary["runs_failed"] == dm.stats["failed"] > 0
    assert summary["samples_streamed"] == 36 == summary["samples_served"]
    assert summary["val_runs"] == 2 and summary["val_error_max"] >= summary["val_error_mean"]
    out = summary_log.text()
    assert out.count("online study summary") == 1
    assert "failure" in out and "the solver yielded no sample" in out
    log_dir = Path(logger.log_dir)
    assert json.loads((log_dir / "study_summary.json").read_text()) == summary
    assert (log_dir / "val_error_last.png").exists()
    assert monitor.figures and all(Path(p).exists() for p in monitor.figures)
    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    assert "study/val_error" in acc.Tags()["images"]
    scalars = set(acc.Tags()["scalars"])
    for tag in ("runs_launched", "runs_done", "runs_failed", "buffer_fill"):
        assert tag in scalars
    assert {"study/samples_streamed", "study/samples_served", "study/mean_reuse"} <= scalars
    assert "summary/runs_completed" in scalars


def test_inert_without_an_online_datamodule(tmp_path):
    from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel

    monitor = StudyMonitor()
    trainer = pl.Trainer(
        max_steps=2,
        limit_val_batches=1,
        logger=False,
        callbacks=[monitor],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with pytest.warns(UserWarning, match="shows nothing"):
        trainer.fit(BoringModel(), BoringDataModule())
    assert monitor.summary is None
    assert "runs_launched" not in trainer.progress_bar_metrics
