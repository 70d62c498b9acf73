"""The study on Lightning's progress bars: its figures (runs done + in flight of the budget,
failures, buffer fill) first and as integers, the study's expected length as the bar's total, and
a tqdm line that fits 80 columns. :class:`~lightning_online.StudyMonitor` gives the Trainer's
progress bar this look; :class:`StudyProgressBar` and :class:`RichStudyProgressBar` have it of
their own; :class:`~lightning_online.StudyProgressLog` prints the same figures as plain lines.

Where code runs: Lightning's hooks on the training thread of every rank (bars draw on rank 0).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ProgressBar, RichProgressBar, TQDMProgressBar

from lightning_online.data import OnlineDataModule

__all__ = [
    "BAR_FORMAT_KNOWN",
    "BAR_FORMAT_NARROW",
    "BAR_FORMAT_UNKNOWN",
    "PROGRESS_KEYS",
    "RichStudyProgressBar",
    "StudyProgressBar",
    "expected_steps",
    "study_bar_items",
]

#: Progress-bar names of ``dm.stats`` entries.
PROGRESS_KEYS = {
    "runs_launched": "launched",
    "runs_done": "completed",
    "runs_failed": "failed",
    "buffer_fill": "buffer_fill",
}
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
