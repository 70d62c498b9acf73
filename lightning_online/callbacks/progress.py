"""``StudyProgressLog``: progress as plain lines, for batch jobs and anything that is not a terminal.

A progress bar redraws itself with carriage returns and cursor movements; in a SLURM job's output
file, a pipe or a CI log that becomes one unreadable line per redraw. This progress "bar" is a
Lightning :class:`~lightning.pytorch.callbacks.ProgressBar` (so the Trainer adds no other) that
prints one plain line (``print(..., flush=True)``, no ``\\r``, no escape sequence):

* every ``every_n_steps`` optimizer steps and/or every ``every_s`` seconds, whichever comes first
  (a line per time interval at most once per step), with the step, the rate since the previous
  line, and the progress-bar metrics: the study's figures first (``runs=D+F/B``: D runs done
  plus F in flight of a budget of B, ``failed=N``, ``buf=P%``), then the loss and what else the
  model shows on its bar;
* one line after each validation, with the metrics that validation logged;
* one line when training starts and one when it ends.

``lightning-online`` uses it instead of :class:`~lightning_online.StudyProgressBar` when its
standard output is not a terminal (``sbatch``'s output file, ``| tee log``, ``> log``). In a
script::

    bar = StudyProgressBar() if sys.stdout.isatty() else StudyProgressLog(every_s=60)
    trainer = pl.Trainer(callbacks=[StudyMonitor(), bar], ...)

Where code runs: Lightning's hooks on the training thread of every rank; only global rank 0
prints (Lightning disables progress bars on the other ranks).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ProgressBar

from lightning_online.callbacks.bars import _IntegerCounts, expected_steps
from lightning_online.data import OnlineDataModule

__all__ = ["StudyProgressLog"]


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.4g}"
    item = getattr(value, "item", None)  # a 0-d tensor or numpy scalar
    if callable(item):
        try:
            return _fmt(item())
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(value)


class StudyProgressLog(_IntegerCounts, ProgressBar):
    """Progress as plain periodic lines (see the module's text), rank 0 only.

    Args:
        every_n_steps: a line every this many optimizer steps (``None``: by time only).
        every_s: a line at least every this many seconds while training runs (``None``: by steps
            only). With both, whichever comes first.
        stream: where the lines go (default: ``sys.stdout`` at the time of printing).
    """

    def __init__(
        self,
        every_n_steps: int | None = None,
        every_s: float | None = 30.0,
        stream: Any = None,
    ) -> None:
        super().__init__()
        if every_n_steps is not None and (
            isinstance(every_n_steps, bool)
            or not isinstance(every_n_steps, int)
            or every_n_steps < 1
        ):
            raise ValueError(
                f"StudyProgressLog: every_n_steps must be a positive integer or None, got {every_n_steps!r}"
            )
        if every_s is not None and (
            isinstance(every_s, bool)
            or not isinstance(every_s, int | float)
            or not math.isfinite(every_s)
            or every_s <= 0
        ):
            raise ValueError(
                f"StudyProgressLog: every_s must be a positive number of seconds or None, got {every_s!r}"
            )
        if every_n_steps is None and every_s is None:
            raise ValueError(
                "StudyProgressLog: give every_n_steps or every_s (or both); with neither it "
                "would print no progress (use enable_progress_bar=False for none)"
            )
        self.every_n_steps = every_n_steps
        self.every_s = None if every_s is None else float(every_s)
        self.stream = stream
        self._enabled = True
        self._last_time = 0.0
        self._last_step = 0
        self._printed_step = -1
        self._start = 0.0
        self._before_val: dict[str, Any] = {}

    # ------------------------------------------------------------------ ProgressBar API
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self._enabled

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        if self._enabled:
            kwargs.pop("end", None)
            print(*args, sep=sep, file=self.stream or sys.stdout, flush=True)

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = time.monotonic()
        self._start = self._last_time = now
        self._last_step = trainer.global_step
        self._printed_step = -1
        if not self._enabled:
            return
        limit = trainer.max_steps if trainer.max_steps not in (None, -1) else None
        dm = getattr(trainer, "datamodule", None)
        if isinstance(dm, OnlineDataModule):
            extent = f"until the study's {dm.n_simulations} runs are done and served"
            extent += f", at most to step {limit}" if limit is not None else ""
        else:
            extent = f"up to step {limit}" if limit is not None else "until the data ends"
        self.print(f"training: from step {trainer.global_step}, {extent}")

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self._enabled:
            return
        step = trainer.global_step
        now = time.monotonic()
        due = (self.every_n_steps is not None and step > 0 and step % self.every_n_steps == 0) or (
            self.every_s is not None and now - self._last_time >= self.every_s
        )
        if due and step != self._printed_step:
            self._line(trainer, pl_module, now)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._before_val = dict(trainer.callback_metrics)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._enabled or trainer.sanity_checking:
            return
        before = self._before_val
        logged = {
            k: v
            for k, v in trainer.callback_metrics.items()
            if k not in before or k.startswith("val") or _fmt(v) != _fmt(before[k])
        }
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in sorted(logged.items())) or "(no metrics)"
        self.print(f"validation at step {trainer.global_step}: {shown}")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._enabled:
            return
        now = time.monotonic()
        if trainer.global_step != self._printed_step:
            self._line(trainer, pl_module, now, final=True)
        self.print(f"training ended at step {trainer.global_step} after {now - self._start:.1f} s")

    # ------------------------------------------------------------------ internals
    def _line(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, now: float, final: bool = False
    ) -> None:
        step = trainer.global_step
        limit = trainer.max_steps if trainer.max_steps not in (None, -1) else None
        dm = getattr(trainer, "datamodule", None)
        study = isinstance(dm, OnlineDataModule)
        if isinstance(dm, OnlineDataModule):  # its expected length, or unknown; one epoch
            limit = None if final else expected_steps(dm.stats, dm.n_simulations, step, limit)
        where = f"step {step}/{limit}" if limit is not None else f"step {step}"
        if not study:
            where += f" epoch {trainer.current_epoch}"
        elapsed = now - self._last_time
        rate = (step - self._last_step) / elapsed if elapsed > 0 else 0.0
        metrics = self.get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
        self.print(f"{where} | {rate:.3g} steps/s | {shown}".rstrip())
        self._last_time, self._last_step, self._printed_step = now, step, step
