"""``ActiveSampling``: steer the launch distribution of an online study by the training loss.

Runs on every training rank, in the training thread. It never talks to processes: it reads the
per-sample loss of each training batch, attributes it to the solver run each sample came from
(``OnlineDataModule.pop_batch_info``), and every ``update_every_n_steps`` steps hands per-run
statistics to the DataModule's sampler (``sampler.update``). Under DDP the statistics are summed
over ranks with fixed-shape tensors, so every rank hands the sampler the same numbers and sampler
states stay identical without an extra rank or a broadcast.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from lightning_online._util.capture import (
    LossFn,
    OutputCapture,
    default_pred,
    default_target,
    elementwise,
    per_sample_loss,
)
from lightning_online.data import OnlineDataModule
from lightning_online.sampling.steering import SimulationStats, SteeredSampler

__all__ = ["ActiveSampling"]


class ActiveSampling(Callback):
    """Loss-driven steering of solver runs (Breed, RAD, ...) for an unchanged LightningModule.

    Args:
        loss_fn: the loss per element, averaged over all but the batch dimension to give one
            loss per sample. Torch losses work as they are (``nn.MSELoss()``,
            ``F.mse_loss``: they are called with ``reduction="none"``); a function
            ``(pred, target) -> tensor`` must not reduce over the batch. Computed in float32
            under ``bf16-mixed``/``16-mixed``. Default: squared error.
        update_every_n_steps: how often (training steps) the sampler receives new statistics.
        window: how many recent training steps of per-sample losses the statistics cover.
        pred_fn: extracts the prediction from the module's forward output (default: the output,
            its first element, or its ``pred`` entry).
        target_fn: extracts the target from a batch (default: its last element, or ``y``).
        min_observed: samples of a run that must have been seen in the window for it to count.
        plot_every_n_updates: how often a scatter plot of launched parameters coloured by loss is
            sent to a logger that takes figures (TensorBoard); 0 disables it.

    A ``training_step`` that returns a dict with a ``per_sample_loss`` tensor of shape ``(B,)``
    provides the losses itself; no prediction is captured then. That is the path for a compiled
    module (``model.compile()``, ``torch.compile``), whose forward hooks are not guaranteed.

    Where it runs: on every training rank, in the training thread. Per-sample losses stay on the
    module's device until an update, which moves them to the host once; the statistics are
    gathered over ranks on the package's own gloo group (``OnlineDataModule.all_gather_object``),
    never on the Trainer's (under NCCL its collectives need CUDA tensors). With
    ``accumulate_grad_batches`` it updates once per optimizer step.
    """

    def __init__(
        self,
        loss_fn: LossFn | None = None,
        update_every_n_steps: int = 50,
        window: int = 200,
        pred_fn: Callable[[Any], torch.Tensor] | None = None,
        target_fn: Callable[[Any], torch.Tensor] | None = None,
        min_observed: int = 1,
        plot_every_n_updates: int = 10,
    ) -> None:
        for name, value in (
            ("update_every_n_steps", update_every_n_steps),
            ("window", window),
            ("min_observed", min_observed),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if window < update_every_n_steps:
            raise ValueError(
                f"window ({window}) must cover at least update_every_n_steps "
                f"({update_every_n_steps}) steps, or some losses would never be used"
            )
        self.loss_fn = elementwise(loss_fn)
        self.update_every_n_steps = update_every_n_steps
        self.window = window
        self.pred_fn = pred_fn or default_pred
        self.target_fn = target_fn or default_target
        self.min_observed = min_observed
        self.plot_every_n_updates = plot_every_n_updates
        self.capture = OutputCapture()
        self.updates = 0
        self.last_losses: torch.Tensor | None = None
        self.last_stats: SimulationStats | None = None
        #: ``(ratio, snr)`` from the sampler's ``headroom_estimate`` at the last update (ErrorModel)
        self.last_headroom: tuple[float, float] | None = None
        # (step, sim_ids, losses on the module's device) of recent steps, this rank only;
        # losses reach the host and parameters are looked up at update time, once.
        self._obs: deque[tuple[int, np.ndarray, torch.Tensor]] = deque()
        self._dm: OnlineDataModule | None = None
        self._last_update_step = -1

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            update_every_n_steps=self.update_every_n_steps, window=self.window
        )

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        dm = getattr(trainer, "datamodule", None)
        if not isinstance(dm, OnlineDataModule):
            raise TypeError(
                "ActiveSampling steers the runs of an OnlineDataModule; pass one to "
                f"trainer.fit(model, datamodule=...), got {type(dm).__name__}"
            )
        self._dm = dm
        # A new fit: its runs are numbered from 0 again, so losses kept from an earlier fit
        # would be attributed to the wrong parameters.
        self._obs.clear()
        self._last_update_step = -1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.capture.attach(pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.capture.detach()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exc: BaseException
    ) -> None:
        self.capture.detach()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.capture.arm()

    @torch.no_grad()
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        dm = self._dm
        assert dm is not None
        info = dm.pop_batch_info()
        out = self.capture.take()
        if info is None:
            return
        sim_ids, _steps = info
        losses = self._per_sample_loss(outputs, out, batch)
        if losses is None:
            return
        if len(losses) != len(sim_ids):
            raise RuntimeError(
                f"per-sample loss has {len(losses)} entries but the batch has {len(sim_ids)} "
                "samples; check loss_fn/pred_fn/target_fn"
            )
        self.last_losses = losses
        step = trainer.global_step
        self._obs.append((step, sim_ids, losses.detach()))
        while self._obs and self._obs[0][0] <= step - self.window:
            self._obs.popleft()
        # global_step counts optimizer steps: with accumulate_grad_batches several batches
        # end at the same step; one update per optimizer step.
        if step > 0 and step % self.update_every_n_steps == 0 and step != self._last_update_step:
            self._last_update_step = step
            self._update(trainer, pl_module, dm)

    def _per_sample_loss(self, outputs: Any, out: Any, batch: Any) -> torch.Tensor | None:
        if isinstance(outputs, Mapping) and isinstance(
            outputs.get("per_sample_loss"), torch.Tensor
        ):
            return outputs["per_sample_loss"].detach().reshape(-1).float()
        if out is None:
            rank_zero_warn("ActiveSampling saw no forward call in this training step; skipped")
            return None
        return per_sample_loss(self.loss_fn, self.pred_fn(out), self.target_fn(batch))

    # ------------------------------------------------------------------ statistics
    def _local_table(self, dm: OnlineDataModule) -> np.ndarray:
        """One row per run of this rank seen in the window:
        [sum, count, sum_first_half, n_first, sum_second, n_second, theta]."""
        if not self._obs:
            return np.zeros((0, 6 + dm.space.dim))
        steps = np.concatenate([np.full(len(o[1]), o[0]) for o in self._obs])
        ids = np.concatenate([o[1] for o in self._obs])
        loss = torch.cat([o[2] for o in self._obs]).cpu().numpy().astype(np.float64)
        runs, row = np.unique(ids, return_inverse=True)
        table = np.zeros((len(runs), 6 + dm.space.dim))
        mid = (steps.min() + steps.max()) / 2.0
        first = steps <= mid
        np.add.at(table[:, 0], row, loss)
        np.add.at(table[:, 1], row, 1)
        np.add.at(table[:, 2], row[first], loss[first])
        np.add.at(table[:, 3], row[first], 1)
        np.add.at(table[:, 4], row[~first], loss[~first])
        np.add.at(table[:, 5], row[~first], 1)
        table[:, 6:] = dm.theta_of(runs)  # a run streams to one rank only: its own
        return table

    def _update(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, dm: OnlineDataModule
    ) -> None:
        # The runs seen in the window, every rank's, in rank order (the same on every rank).
        table = np.concatenate(dm.all_gather_object(self._local_table(dm)))
        seen = table[:, 1] >= self.min_observed
        if not seen.any():
            return
        t = table[seen]
        mean = t[:, 0] / t[:, 1]
        both = (t[:, 3] > 0) & (t[:, 5] > 0)
        decrease = np.where(
            both, t[:, 2] / np.maximum(t[:, 3], 1) - t[:, 4] / np.maximum(t[:, 5], 1), 0.0
        )
        stats = SimulationStats(
            parameters=t[:, 6:], loss=mean, loss_decrease=decrease, n_observed=t[:, 1].astype(int)
        )
        dm.sampler.update(stats)
        dm.refresh_parameters()
        self.updates += 1
        self.last_stats = stats
        pl_module.log("active/sim_loss_mean", float(mean.mean()))
        pl_module.log("active/sim_loss_max", float(mean.max()))
        if isinstance(dm.sampler, SteeredSampler):
            pl_module.log("active/bred_fraction", float(dm.sampler.last_bred_fraction))
            pl_module.log("active/generation", float(dm.sampler.generation))
        estimate = getattr(dm.sampler, "headroom_estimate", None)
        headroom = estimate(dm.space) if callable(estimate) else None
        if headroom is not None:  # docs/steering.md, "Will steering pay on my study?"
            self.last_headroom = headroom
            pl_module.log("active/headroom", float(headroom[0]))
            pl_module.log("active/headroom_snr", float(headroom[1]))
        if self.plot_every_n_updates and self.updates % self.plot_every_n_updates == 0:
            self._plot(trainer, dm, stats)

    def _plot(self, trainer: pl.Trainer, dm: OnlineDataModule, stats: SimulationStats) -> None:
        experiment: Any = getattr(trainer.logger, "experiment", None)
        if not trainer.is_global_zero or not hasattr(experiment, "add_figure"):
            return
        try:  # an object-oriented figure: matplotlib's global backend is left alone
            from matplotlib.figure import Figure
        except ImportError:  # plotting is optional
            return
        p = stats.parameters
        fig = Figure(figsize=(4.5, 4))
        ax = fig.add_subplot()
        names = dm.space.names
        x = p[:, 0]
        y = p[:, 1] if p.shape[1] > 1 else stats.loss
        sc = ax.scatter(x, y, c=stats.loss, s=12, cmap="viridis")
        fig.colorbar(sc, ax=ax, label="mean loss over the window")
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1] if p.shape[1] > 1 else "loss")
        if dm.space.log[0]:
            ax.set_xscale("log")
        if p.shape[1] > 1 and dm.space.log[1]:
            ax.set_yscale("log")
        ax.set_title(f"runs by loss, update {self.updates}")
        fig.tight_layout()
        experiment.add_figure("active/launched_parameters", fig, global_step=trainer.global_step)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """How many updates were made. The sampler's state is the DataModule's to save (with
        the draws it made that are not launched yet): saved once, restored once."""
        return {"updates": self.updates}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A "sampler" entry of an older checkpoint is the same state the DataModule restored
        # (with its pending draws): loading it again would drop those draws, so it is ignored.
        self.updates = int(state_dict.get("updates", 0))
        self._obs.clear()
