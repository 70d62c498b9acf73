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
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import Callback, ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_online.data import OnlineDataModule
from lightning_online.sampling.samplers import ParameterSpace

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

#: Progress-bar names of ``dm.stats`` entries.
PROGRESS_KEYS = {
    "runs_launched": "launched",
    "runs_done": "completed",
    "runs_failed": "failed",
    "buffer_fill": "buffer_fill",
}
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


#: Progress-bar figures that are counts (logged as floats, shown as integers).
COUNT_KEYS = ("runs_launched", "runs_done", "runs_failed")
#: The bar's own figure that says nothing about a study (the logger's version).
_NOISE = ("v_num",)


def study_bar_items(stats: Mapping[str, float], budget: int) -> dict[str, int | str]:
    """The study's figures as a progress bar shows them, short enough for 80 columns:
    ``runs`` ``"D+F/B"`` (D runs done plus F in flight, of a budget of B), ``failed`` (an
    integer) and ``buf`` (the buffers' fill, ``"45%"``)."""
    done, running = int(stats.get("completed", 0)), int(stats.get("running", 0))
    fill = float(stats.get("buffer_fill", 0.0))
    return {
        "runs": f"{done}+{running}/{budget}",
        "failed": int(stats.get("failed", 0)),
        "buf": f"{round(100 * fill)}%",
    }


def _with_study(trainer: pl.Trainer, items: dict[str, Any]) -> dict[str, Any]:
    """A progress bar's items with the study's figures first (:func:`study_bar_items`), in
    place of the four logged ones and ``v_num``; the user's own figures follow. Any other
    count logged under the monitor's names is shown as an integer."""
    dm = getattr(trainer, "datamodule", None)
    if not isinstance(dm, OnlineDataModule):
        for key in COUNT_KEYS:
            value = items.get(key)
            if isinstance(value, float) and value.is_integer():
                items[key] = int(value)
        return items
    rest = {k: v for k, v in items.items() if k not in PROGRESS_KEYS and k not in _NOISE}
    return {**study_bar_items(dm.stats, dm.n_simulations), **rest}


class _IntegerCounts:
    """Shows the study's figures first, as integers (:func:`study_bar_items`)."""

    def get_metrics(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> dict[str, int | str | float | dict[str, float]]:
        items = super().get_metrics(trainer, pl_module)  # type: ignore[misc]
        return _with_study(trainer, items)


def _show_study_on(bar: Callback) -> None:
    """Make a progress bar show the study's figures (:func:`_with_study`): Lightning's
    documented way is to override ``get_metrics``; a bar the user made is given one on the
    instance (once), the package's own bars have it already."""
    if not isinstance(bar, ProgressBar) or isinstance(bar, _IntegerCounts):
        return
    if getattr(bar, "_lightning_online_items", False):
        return
    original: Callable[..., dict[str, Any]] = bar.get_metrics

    def get_metrics(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        return _with_study(trainer, original(trainer, pl_module))

    bar.get_metrics = get_metrics  # type: ignore[method-assign]
    bar._lightning_online_items = True  # type: ignore[attr-defined]


#: The training bar's format when its total is known: Lightning's, without ``Epoch 0`` (the
#: stream is one epoch), on a terminal of 100 columns or more ...
BAR_FORMAT_KNOWN = (
    "{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, "
    "{rate_noinv_fmt}{postfix}]"
)
#: ... on a narrower one (no bar drawing and no rate: 80 columns hold the study and the loss) ...
BAR_FORMAT_NARROW = "{percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"
#: ... and while the total is unknown (no empty bar, no unknown time left).
BAR_FORMAT_UNKNOWN = "{n_fmt}/? [{elapsed}, {rate_noinv_fmt}{postfix}]"


def expected_steps(
    stats: Mapping[str, float], budget: int, step: int, max_steps: int | None
) -> int | None:
    """The study's expected length in optimizer steps, for a progress bar's total: the steps
    so far divided by the share of the study's samples used so far (samples served divided by
    their mean reuse, of the budget's runs times the samples a run has streamed on average),
    once a run has completed and 5 % is used; ``max_steps`` when that comes first; ``None``
    while unknown. Exact for a FIFO buffer (each sample served once), an estimate that
    follows the reuse for the others."""
    completed, running = float(stats.get("completed", 0)), float(stats.get("running", 0))
    own = float(stats.get("samples_received", 0)) - float(stats.get("samples_from_failed", 0))
    reuse = float(stats.get("mean_reuse", 0.0)) or 1.0
    estimate = None
    if step > 0 and completed >= 1 and own > 0:
        per_run = own / (completed + 0.5 * running)
        share = float(stats.get("samples_served", 0)) / reuse / (per_run * budget)
        if share >= 0.05:
            estimate = max(step + 1, math.ceil(step / min(1.0, share)))
    if max_steps is not None and max_steps > 0 and estimate is not None and estimate >= max_steps:
        return max_steps
    return estimate


def _shape_tqdm(bar: TQDMProgressBar, trainer: pl.Trainer, dm: OnlineDataModule | None) -> None:
    """Lightning's tqdm training bar for a study: its total from :func:`expected_steps`
    (changed when it moves by more than 5 %, so the bar does not jitter) and a format that
    fits 80 columns (training thread, before the bar redraws)."""
    try:
        tq = bar.train_progress_bar
    except (TypeError, AttributeError):  # not made yet
        return
    if tq is None or getattr(tq, "disable", True) or dm is None:
        return
    max_steps = trainer.max_steps if trainer.max_steps not in (None, -1) else None
    total = expected_steps(dm.stats, dm.n_simulations, trainer.global_step, max_steps)
    if total is not None:
        total = max(1, total - (trainer.global_step - int(tq.n)))  # the bar counts this session
    old = tq.total
    if total is None or old is None or total <= tq.n or abs(total - old) > 0.05 * old:
        tq.total = total
    try:
        width = os.get_terminal_size(tq.fp.fileno()).columns
    except (AttributeError, ValueError, OSError):  # not a terminal: assume 80 columns
        width = 80
    if not tq.total:
        tq.bar_format = BAR_FORMAT_UNKNOWN
    else:
        tq.bar_format = BAR_FORMAT_KNOWN if width >= 100 else BAR_FORMAT_NARROW


def _close_tqdm(bar: Callback) -> None:
    """At the end of training, the bar's total becomes what was done (an estimate is off by a
    step or two), before Lightning closes the bar."""
    try:
        tq = bar.train_progress_bar  # type: ignore[attr-defined]
    except (TypeError, AttributeError):
        return
    if tq is not None and not getattr(tq, "disable", True) and tq.total and tq.n < tq.total:
        tq.total = tq.n
        tq.refresh()


class StudyProgressBar(_IntegerCounts, TQDMProgressBar):
    """Lightning's tqdm progress bar, with the study's figures first as integers (runs done +
    in flight of the budget, failed, buffer fill: :func:`study_bar_items`), the study's
    expected length as its total and a line that fits 80 columns. Takes
    :class:`~lightning.pytorch.callbacks.TQDMProgressBar`'s arguments (training process, rank 0
    draws). :class:`StudyMonitor` gives Lightning's default bar the same look."""

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        dm = getattr(trainer, "datamodule", None)
        if isinstance(dm, OnlineDataModule):
            _shape_tqdm(self, trainer, dm)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if isinstance(getattr(trainer, "datamodule", None), OnlineDataModule):
            _close_tqdm(self)
        super().on_train_end(trainer, pl_module)


class RichStudyProgressBar(_IntegerCounts, RichProgressBar):
    """Lightning's rich progress bar (needs ``rich``), with the study's figures first as
    integers (:func:`study_bar_items`). Takes
    :class:`~lightning.pytorch.callbacks.RichProgressBar`'s arguments (training process, rank 0
    draws)."""


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


def plot_validation_error(
    theta: np.ndarray,
    loss: np.ndarray,
    space: ParameterSpace,
    *,
    launched: np.ndarray | None = None,
    title: str = "validation error per run",
    max_dims: int = 8,
) -> Any:
    """A matplotlib ``Figure``: per-run validation error against each parameter, and where it
    is large.

    One panel per parameter (the first ``max_dims``): each validation run is a dot at its
    parameter value and error (log axes for log parameters and for the error when it is
    positive), over a light histogram of the launched runs' parameters (right axis: runs, one
    integer scale shared by every panel), which shows where in parameter space the study went;
    a legend says which is which. With two or more parameters, a last panel maps the error
    over the two parameters that explain most of its variation (:func:`_most_telling`),
    interpolated between the validation runs (coloured dots, the colour bar gives the error),
    with the launched runs overlaid (grey crosses). Needs matplotlib (pyplot is not used).
    """
    from matplotlib.figure import Figure  # optional dependency: the `plot` extra
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    theta = np.atleast_2d(np.asarray(theta, dtype=np.float64))
    loss = np.asarray(loss, dtype=np.float64)
    d = min(space.dim, max_dims)
    ok = np.isfinite(loss)
    has_map = space.dim >= 2 and int(ok.sum()) >= 2
    fig = Figure(figsize=(2.8 * d + (4.2 if has_map else 0.0), 3.4), layout="constrained")
    ratios = [1.0] * d + ([1.5] if has_map else [])
    panels = fig.subplots(1, len(ratios), squeeze=False, width_ratios=ratios)[0]
    axes = list(panels[:d])
    for ax in axes[1:]:
        ax.sharey(axes[0])
    positive = bool(ok.any() and np.all(loss[ok] > 0))
    have_runs = launched is not None and len(launched) > 0
    # One count scale for every panel: the largest bar of any, in the lower half.
    bins: list[np.ndarray] = []
    top = 1.0
    for i in range(d):
        lo, hi = float(space.low[i]), float(space.high[i])
        edges = (
            np.logspace(np.log10(lo), np.log10(hi), 21) if space.log[i] else np.linspace(lo, hi, 21)
        )
        bins.append(edges)
        if have_runs:
            assert launched is not None
            top = max(top, float(np.histogram(launched[:, i], bins=edges)[0].max(initial=0)))
    for i, ax in enumerate(axes):
        lo, hi = float(space.low[i]), float(space.high[i])
        is_log = bool(space.log[i])
        if have_runs:
            assert launched is not None
            twin = ax.twinx()
            twin.hist(launched[:, i], bins=bins[i], color="0.85", zorder=0)
            twin.set_ylim(0, 2.0 * top)  # bars in the lower half
            twin.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))
            twin.tick_params(axis="y", colors="0.45", labelsize=7)
            if i == d - 1:
                twin.set_ylabel("runs launched", color="0.45")
            else:
                twin.tick_params(axis="y", labelright=False)
            ax.set_zorder(twin.get_zorder() + 1)
            ax.patch.set_visible(False)
        ax.scatter(theta[ok, i], loss[ok], s=18, c="C0", edgecolors="k", linewidths=0.3)
        if is_log:
            ax.set_xscale("log")
        if positive:
            ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_xlabel(space.names[i] + (" (log)" if is_log else ""))
        ax.tick_params(labelsize=7)
        if i:
            ax.tick_params(axis="y", labelleft=False)
    axes[0].set_ylabel("validation error (per run)")
    handles: list[Any] = [
        Line2D(
            [], [], marker="o", ls="", mfc="C0", mec="k", mew=0.3, label="validation run: its error"
        )
    ]
    if have_runs:
        handles.append(Patch(color="0.85", label="runs launched (right axis)"))
    if has_map:
        handles.append(
            Line2D([], [], marker="x", ls="", color="0.35", label="a launched run (map)")
        )
        _error_map(panels[-1], theta[ok], loss[ok], space, launched, positive, fig)
    fig.legend(
        handles=handles, loc="outside lower center", ncols=len(handles), fontsize=7, frameon=False
    )
    fig.suptitle(title, fontsize=9)
    return fig


def _most_telling(theta: np.ndarray, values: np.ndarray, space: ParameterSpace) -> list[int]:
    """The two parameters along which ``values`` vary most: ranked by the share of their
    variance that the mean over thirds of each parameter's range explains (a correlation
    ratio, which sees a bump as well as a slope); ties keep the parameters' order."""
    scores = []
    total = float(np.var(values))
    for i in range(space.dim):
        lo, hi = float(space.low[i]), float(space.high[i])
        x = theta[:, i]
        if space.log[i]:
            x, lo, hi = np.log(x), math.log(lo), math.log(hi)
        cut = np.clip(((x - lo) / max(hi - lo, 1e-300) * 3).astype(int), 0, 2)
        between = sum(
            (cut == k).sum() * (values[cut == k].mean() - values.mean()) ** 2
            for k in range(3)
            if (cut == k).any()
        )
        scores.append(between / (len(values) * total) if total > 0 else 0.0)
    order = sorted(range(space.dim), key=lambda i: (-scores[i], i))
    return order[:2]


def _error_map(
    ax: Any,
    theta: np.ndarray,
    loss: np.ndarray,
    space: ParameterSpace,
    launched: np.ndarray | None,
    positive: bool,
    fig: Any,
) -> None:
    """The error over two parameters (see :func:`plot_validation_error`) on ``ax``."""
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.tri import Triangulation

    values = np.log10(loss) if positive else loss
    i, j = _most_telling(theta, values, space)
    x, y = theta[:, i], theta[:, j]
    norm = LogNorm(loss.min(), loss.max()) if positive and loss.max() > loss.min() else Normalize()
    try:
        tri = Triangulation(np.log(x) if space.log[i] else x, np.log(y) if space.log[j] else y)
        tri = Triangulation(x, y, tri.triangles)  # the triangles of the (log) plane
        if len(tri.triangles):
            levels = (
                np.logspace(np.log10(loss.min()), np.log10(loss.max()), 12)
                if isinstance(norm, LogNorm)
                else 12
            )
            ax.tricontourf(tri, loss, levels=levels, norm=norm, cmap="viridis", alpha=0.85)
    except (ValueError, RuntimeError):  # too few points, or all on a line: dots only
        pass
    dots = ax.scatter(
        x, y, c=loss, norm=norm, cmap="viridis", s=26, edgecolors="k", linewidths=0.5, zorder=3
    )
    if launched is not None and len(launched):
        ax.scatter(
            launched[:, i], launched[:, j], marker="x", s=10, c="0.35", linewidths=0.6, zorder=2
        )
    for axis, k in ((ax.xaxis, i), (ax.yaxis, j)):
        if space.log[k]:
            (ax.set_xscale if axis is ax.xaxis else ax.set_yscale)("log")
    ax.set_xlim(float(space.low[i]), float(space.high[i]))
    ax.set_ylim(float(space.low[j]), float(space.high[j]))
    ax.set_xlabel(space.names[i] + (" (log)" if space.log[i] else ""))
    ax.set_ylabel(space.names[j] + (" (log)" if space.log[j] else ""), fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(f"error over {space.names[i]} and {space.names[j]}", fontsize=8)
    bar = fig.colorbar(dots, ax=ax, shrink=0.9)  # the dots' scale: plain log ticks
    bar.set_label("validation error", fontsize=7)
    bar.ax.tick_params(labelsize=7)
