"""``StudyMonitor``: the live view of an online study.

* The progress bar, every training step, in front of the loss: ``runs=D+F/B`` (D runs done
  plus F in flight, of a budget of B), ``failed=N`` and ``buf=P%`` (the buffers' fill), as
  integers, in Lightning's own bar (the monitor gives the Trainer's progress bar, whichever it
  is, these figures in place of the four logged ones and without ``v_num``), so that they fit
  an 80-column terminal: ``37/? [00:02, 15.1it/s, runs=12+2/64, failed=0, buf=45%,
  train_loss=0.0103]``. The bar's total is the study's expected length, estimated from the
  share of the budget done (``?`` until a run has completed), or ``max_steps`` when the
  estimate says that comes first; the stream is one epoch, so ``Epoch 0`` is not shown.
* The logger, every training step: ``runs_launched``, ``runs_done``, ``runs_failed``,
  ``buffer_fill``, ``study/running``, ``study/samples_streamed``, ``study/samples_served`` and
  ``study/mean_reuse`` (also in ``trainer.progress_bar_metrics``).
* After every validation (not the sanity check): a picture of the per-simulation validation error
  against each parameter, over a histogram of the parameters launched so far (one count scale
  for every panel, a legend), and with two or more parameters a map of the error over the two
  parameters that vary it most, the launched runs overlaid; saved as PNG in the
  run's log folder (``val_error_step{N}.png`` and ``val_error_last.png``) and sent to every logger
  that takes figures (TensorBoard's ``add_figure``).
* At the end of ``fit``: a summary table (runs, samples streamed and served, mean reuse per sample,
  failures, validation error mean / p95 / max at the last validation), printed by rank 0, kept in
  :attr:`StudyMonitor.summary`, written to ``study_summary.json`` in the log folder and sent to
  the loggers as ``summary/*`` metrics. It is made in the callback's ``teardown``, which Lightning
  calls right after the DataModule's: the counters are then final (runs ended, all ranks
  gathered), which they are not yet in ``on_fit_end``.

All figures come from ``OnlineDataModule.stats`` (identical on every rank) and
``OnlineDataModule.val_report``; the monitor does nothing when the Trainer's datamodule is not an
``OnlineDataModule``. Under DDP every rank logs the same figures and only rank 0 writes files and
shows the summary (through Lightning's rank-zero logging, like Lightning's own messages; silence it
with ``StudyMonitor(summary=False)``). Pictures need matplotlib (the ``plot`` extra); without it
they are skipped with one warning, and training goes on. ``lightning-online`` always adds a
``StudyMonitor`` and, unless another progress bar is configured, a :class:`StudyProgressBar` (a
terminal) or a :class:`~lightning_online.StudyProgressLog` (anything else); in a script::

    trainer = pl.Trainer(callbacks=[StudyMonitor()], ...)  # Lightning's default bar shows them

:class:`StudyProgressBar` (tqdm) and :class:`RichStudyProgressBar` (rich) show the same figures
without a monitor.

Where code runs: Lightning's hooks on the training thread of every rank; only rank 0 prints,
saves pictures and writes the summary.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_online.callbacks.bars import (
    PROGRESS_KEYS,
    RichStudyProgressBar,
    StudyProgressBar,
    _close_tqdm,
    _shape_tqdm,
    _show_study_on,
    expected_steps,
    study_bar_items,
)
from lightning_online.callbacks.plots import plot_validation_error
from lightning_online.data import OnlineDataModule

__all__ = [
    "RichStudyProgressBar",
    "StudyMonitor",
    "StudyProgressBar",
    "expected_steps",
    "format_summary",
    "plot_validation_error",
    "study_bar_items",
    "study_summary",
]

log = logging.getLogger("lightning_online")

#: Logger-only names of ``dm.stats`` entries.
LOGGER_KEYS = {
    "study/running": "running",
    "study/samples_streamed": "samples_received",
    "study/samples_served": "samples_served",
    "study/mean_reuse": "mean_reuse",
}


class StudyMonitor(Callback):
    """Live view of an online study: progress bar figures, error pictures, a final summary.

    Args:
        prog_bar: show the runs done / in flight / failed of the budget and the buffer fill on
            the Trainer's progress bar, as integers (they go to the logger either way).
        plot: draw the validation error against the parameters after each validation.
        plot_every_n_validations: draw after every n-th validation only (the last picture is
            always ``val_error_last.png``).
        max_plot_dims: at most this many parameters get a panel (the first ones).
        summary: show the summary table at the end of ``fit`` (rank 0, through Lightning's
            rank-zero logging, as Lightning shows its own messages).
    """

    def __init__(
        self,
        prog_bar: bool = True,
        plot: bool = True,
        plot_every_n_validations: int = 1,
        max_plot_dims: int = 8,
        summary: bool = True,
    ) -> None:
        if isinstance(plot_every_n_validations, bool) or plot_every_n_validations < 1:
            raise ValueError(
                f"plot_every_n_validations must be a positive integer, got {plot_every_n_validations!r}"
            )
        if isinstance(max_plot_dims, bool) or max_plot_dims < 1:
            raise ValueError(f"max_plot_dims must be a positive integer, got {max_plot_dims!r}")
        self.prog_bar = bool(prog_bar)
        self.plot = bool(plot)
        self.plot_every_n_validations = int(plot_every_n_validations)
        self.max_plot_dims = int(max_plot_dims)
        self.print_summary = bool(summary)
        self.summary: dict[str, Any] | None = None
        """The figures of the last summary (also written to ``study_summary.json``)."""
        self.figures: list[str] = []
        """Paths of the PNG files written so far (rank 0)."""
        self._dm: OnlineDataModule | None = None
        self._log_dir: str | None = None
        self._n_validations = 0
        self._last_val_step: int | None = None
        self._warned_plot = False

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        dm = getattr(trainer, "datamodule", None)  # set by Lightning, not declared on Trainer
        self._dm = dm if isinstance(dm, OnlineDataModule) else None
        if self._dm is None:
            rank_zero_warn(
                "StudyMonitor shows the figures of an OnlineDataModule; this Trainer has "
                f"{type(dm).__name__}, so it shows nothing"
            )
            return
        # trainer.log_dir is collective (a broadcast under DDP): resolve it here, on every rank.
        self._log_dir = trainer.log_dir
        bar = trainer.progress_bar_callback
        if self.prog_bar and bar is not None:
            _show_study_on(bar)
        self.summary = None
        self._n_validations = 0
        self._last_val_step = None

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._dm is None:
            return
        stats = self._dm.stats
        # dm.stats is identical on every rank: no reduction needed.
        bar = {name: float(stats.get(key, 0.0)) for name, key in PROGRESS_KEYS.items()}
        pl_module.log_dict(bar, on_step=True, on_epoch=False, prog_bar=self.prog_bar)
        rest = {name: float(stats.get(key, 0.0)) for name, key in LOGGER_KEYS.items()}
        pl_module.log_dict(rest, on_step=True, on_epoch=False, prog_bar=False)
        shown = trainer.progress_bar_callback
        if self.prog_bar and isinstance(shown, TQDMProgressBar):
            _shape_tqdm(shown, trainer, self._dm)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        shown = trainer.progress_bar_callback
        if self._dm is not None and self.prog_bar and isinstance(shown, TQDMProgressBar):
            _close_tqdm(shown)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = self._dm
        if dm is None or trainer.sanity_checking or dm.val_report is None:
            return
        self._n_validations += 1
        self._last_val_step = trainer.global_step
        if not self.plot or (self._n_validations - 1) % self.plot_every_n_validations:
            return
        if not trainer.is_global_zero:
            return
        try:
            fig = plot_validation_error(
                dm.val_report["theta"],
                dm.val_report["loss"],
                dm.space,
                launched=dm.launched_parameters,
                title=f"validation error per run, step {trainer.global_step}",
                max_dims=self.max_plot_dims,
            )
        except ImportError as exc:
            if not self._warned_plot:
                rank_zero_warn(f"StudyMonitor: no validation error picture ({exc})")
                self._warned_plot = True
            return
        self._save_figure(trainer, fig, f"val_error_step{trainer.global_step}")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # After OnlineDataModule.teardown: dm.stats then describes the whole study, on every rank.
        dm = self._dm
        if dm is None or stage != "fit":
            return
        self.summary = study_summary(dm, val_step=self._last_val_step)
        if not trainer.is_global_zero:
            return
        if self.print_summary:
            rank_zero_info(format_summary(self.summary, dm))
        if self._log_dir:
            os.makedirs(self._log_dir, exist_ok=True)
            path = os.path.join(self._log_dir, "study_summary.json")
            with open(path, "w") as f:
                json.dump(self.summary, f, indent=2)
        metrics = {
            f"summary/{k}": float(v)
            for k, v in self.summary.items()
            if isinstance(v, int | float) and math.isfinite(v)
        }
        for logger in trainer.loggers:
            try:
                logger.log_metrics(metrics, step=trainer.global_step)
                logger.save()
            except Exception as exc:  # a logger already finalised must not fail the fit
                log.warning("StudyMonitor: could not log the summary to %s: %s", logger, exc)

    # ------------------------------------------------------------------ internals
    def _save_figure(self, trainer: pl.Trainer, fig: Any, name: str) -> None:
        if self._log_dir:
            os.makedirs(self._log_dir, exist_ok=True)
            path = os.path.join(self._log_dir, f"{name}.png")
            fig.savefig(path, dpi=100)
            shutil.copyfile(path, os.path.join(self._log_dir, "val_error_last.png"))
            self.figures.append(path)
        for logger in trainer.loggers:
            add_figure = getattr(getattr(logger, "experiment", None), "add_figure", None)
            if callable(add_figure):
                add_figure("study/val_error", fig, global_step=trainer.global_step, close=False)


def study_summary(dm: OnlineDataModule, val_step: int | None = None) -> dict[str, Any]:
    """The summary figures of a study: counters from ``dm.stats``, errors from ``dm.val_report``."""
    s = dm.stats
    out: dict[str, Any] = {
        "runs_launched": int(s.get("launched", 0)),
        "runs_completed": int(s.get("completed", 0)),
        "runs_failed": int(s.get("failed", 0)),
        "runs_stopped": int(s.get("stopped", 0)),
        "samples_streamed": int(s.get("samples_received", 0)),
        "samples_rejected": int(s.get("samples_rejected", 0)),
        "samples_served": int(s.get("samples_served", 0)),
        "mean_reuse": float(s.get("mean_reuse", 0.0)),
        "val_runs": 0,
        "val_step": val_step,
        "val_error_mean": None,
        "val_error_p95": None,
        "val_error_max": None,
    }
    report = dm.val_report
    if report is not None:
        loss = np.asarray(report["loss"], dtype=np.float64)
        loss = loss[np.isfinite(loss)]
        if len(loss):
            out.update(
                val_runs=len(loss),
                val_error_mean=float(loss.mean()),
                val_error_p95=float(np.percentile(loss, 95)),
                val_error_max=float(loss.max()),
            )
    return out


def format_summary(summary: Mapping[str, Any], dm: OnlineDataModule | None = None) -> str:
    """The summary as a small text table (with up to three failure causes of this rank)."""

    def num(v: Any) -> str:
        return "-" if v is None else f"{v:.3g}"

    launched = summary["runs_launched"]
    failed = summary["runs_failed"]
    share = f" ({100.0 * failed / launched:.1f} % of launched)" if launched else ""
    rows = [
        ("runs launched", str(launched)),
        ("runs completed", str(summary["runs_completed"])),
        ("runs failed", f"{failed}{share}"),
        (
            "runs stopped in flight",
            f"{summary.get('runs_stopped', 0)}"
            + (" (fit ended before they did)" if summary.get("runs_stopped") else ""),
        ),
        ("samples streamed", str(summary["samples_streamed"])),
        ("samples served", str(summary["samples_served"])),
        ("mean reuse per sample", f"{summary['mean_reuse']:.2f}"),
    ]
    if summary["val_runs"]:
        where = f" at step {summary['val_step']}" if summary.get("val_step") is not None else ""
        # two rows, so that the table fits 80 columns
        rows.append(
            (
                "validation error",
                f"mean {num(summary['val_error_mean'])}, p95 {num(summary['val_error_p95'])}, "
                f"max {num(summary['val_error_max'])}",
            )
        )
        rows.append(("  of", f"{summary['val_runs']} validation runs{where}"))
    else:
        rows.append(("validation error", "- (no validation runs: set data.val_parameters)"))
    if dm is not None and failed:
        shown = [r for r in dm.runs.values() if r.status == "failed"][:3]
        for r in shown:
            cause = (r.reason or "").strip().splitlines()
            theta = np.array2string(np.asarray(r.theta), precision=3, separator=", ")
            rows.append(("  failure", f"theta={theta}: {cause[-1] if cause else '?'}"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    rule = "-" * max(len(line) for line in [*lines, "online study summary"])
    return "\n".join(["", "online study summary", rule, *lines, rule])
