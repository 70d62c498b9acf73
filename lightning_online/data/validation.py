"""The validation runs of a study: held in memory, served by the DataModule's own loader, and
reported per run (``dm.val_report``, ``val_sim_loss_mean/p95/max``).

Where code runs: the training thread of every rank, inside Lightning's validation (or test)
epoch; the report's sums are reduced over the package's gloo group (``dm.all_reduce``), never the
Trainer's.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.utils.data import Dataset, default_collate
from torchmetrics import Metric

from lightning_online._util.capture import (
    LossFn,
    default_pred,
    default_target,
    per_sample_loss,
)

log = logging.getLogger("lightning_online")


class _Owner(Protocol):
    """What the report reads of its DataModule (``OnlineDataModule``, which sits above)."""

    trainer: pl.Trainer | None
    _val_thetas: np.ndarray | None
    val_loss_fn: LossFn
    val_report: dict[str, np.ndarray] | None

    def all_reduce(self, values: np.ndarray, op: str = "sum") -> np.ndarray: ...


class _ValidationSet(Dataset):
    """The validation runs, held in memory: ``samples[i]`` is a sample of run ``sim_index[i]``."""

    def __init__(self, samples: list[Any], sim_index: np.ndarray) -> None:
        self.samples = samples
        self.sim_index = sim_index

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> torch.Tensor | tuple[torch.Tensor, ...]:
        item = self.samples[i]
        if isinstance(item, np.ndarray):
            return torch.from_numpy(item)
        return tuple(torch.from_numpy(a) for a in item)


class _ValidationBatches:
    """One rank's validation batches: indices ``rank, rank + size, ...`` of the validation set,
    padded from its start so that every rank has as many (as ``DistributedSampler`` does),
    collated per field. With a ``report``, iterating it (Lightning does, once per validation or
    test epoch) starts that epoch's per-run report and hands it the batches it yields."""

    def __init__(self, val_set: _ValidationSet, batch_size: int, rank: int, size: int) -> None:
        self.val_set, self.batch_size = val_set, batch_size
        n = len(val_set)
        total = -(-n // size) * size
        positions = np.arange(rank, total, size) if n else np.zeros(0, dtype=np.int64)
        self.indices = (positions % max(n, 1)).tolist()
        self.padding = positions >= n  # repeats that only even out the ranks' shares
        self.report: _ValidationReport | None = None
        #: Applied to each batch (the DataModule's dtype handling), or None.
        self.cast: Callable[[Any], Any] | None = None

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def chunk(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices of batch ``b`` in the validation set, and which of them are padding."""
        sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
        return np.asarray(self.indices[sl], dtype=np.int64), self.padding[sl]

    def __iter__(self) -> Iterator[Any]:
        report = self.report if self.report is not None and self.report.start(self) else None
        for b, start in enumerate(range(0, len(self.indices), self.batch_size)):
            chunk = self.indices[start : start + self.batch_size]
            batch = default_collate([self.val_set[i] for i in chunk])
            if self.cast is not None:
                batch = self.cast(batch)
            if report is not None:
                report.yielded(b, batch)
            yield batch


_REPORT_NAMES = ("val_sim_loss_mean", "val_sim_loss_p95", "val_sim_loss_max")


def _evaluation_step_index(trainer: pl.Trainer | None) -> int | None:
    """The index, within its epoch, of the validation or test batch whose ``*_step`` Lightning is
    running right now (read from the loop's progress counters); ``None`` outside such a step."""
    if trainer is None:
        return None
    if trainer.testing:
        loop = trainer.test_loop
    elif trainer.sanity_checking or trainer.validating:
        fitting = trainer.state.fn == TrainerFn.FITTING
        loop = trainer.fit_loop.epoch_loop.val_loop if fitting else trainer.validate_loop
    else:
        return None
    p = loop.batch_progress.current
    # ready and started are counted before the step, processed after it
    ready, started, processed = p.ready, getattr(p, "started", -1), getattr(p, "processed", -2)
    if not (ready == started == processed + 1):
        return None
    return int(ready) - 1


class _ValidationReport:
    """The per-run validation report: ``dm.val_report`` and ``val_sim_loss_mean/p95/max``.

    Made without touching the Trainer (no callback joins ``trainer.callbacks``) and without
    overriding any hook the user's LightningModule may have (a DataModule's
    ``on_before_batch_transfer`` & co. would replace the module's, with a warning). It rests on
    what the DataModule owns and on Lightning's ordinary logging:

    * **start**: Lightning iterates the DataModule's validation (or test) loader once per epoch
      (sanity check included): :meth:`start` registers a forward hook on the LightningModule
      (removed again at the end of the epoch, and at ``teardown`` / on an exception).
    * **per batch**: the hook keeps the first output of the module's ``forward`` in each
      ``validation_step`` / ``test_step`` (under DDP Lightning routes the step itself through
      ``forward``: that later, outer call is ignored). Which batch that is comes from the loop's
      progress counters (a read); which validation samples are in it, and their targets, from
      the loader itself (the batches it yielded, as the solver produced them: a target that the
      module changes in its own batch-transfer hooks is not seen). The per-sample loss
      (``val_loss_fn``) is summed per validation run, on the host; the repeats that pad the
      ranks' shares to equal lengths are left out, so the report is exact under DDP.
    * **end of epoch**: the hook logs three ``torchmetrics.Metric`` objects
      (``pl_module.log(name, metric)``, epoch level). Lightning calls their ``compute`` at the
      end of the epoch, on every rank, before ``on_validation_end``: the first one sums the
      per-run statistics over the ranks on the package's own gloo group (:meth:`OnlineDataModule.
      all_reduce`; never the Trainer's group: under NCCL its collectives need CUDA tensors),
      sets ``dm.val_report`` and gives the mean, 95th percentile and max over runs, identical on
      every rank. A Metric does its own reduction, so Lightning does not warn that a value
      logged at epoch level under DDP lacks ``sync_dist=True``. ModelCheckpoint and
      EarlyStopping (``on_validation_end``) see the values; during the sanity check Lightning
      discards what was logged, as it does for every metric (``val_report`` is still made).

    Runs in the training process's main thread (every rank), inside Lightning's loops.
    """

    def __init__(self, dm: _Owner) -> None:
        self.dm = dm
        self.metrics = [_SimLoss(self, name) for name in _REPORT_NAMES]
        self._handle: Any = None
        self._module: pl.LightningModule | None = None
        self._batches: _ValidationBatches | None = None
        self._pending: dict[int, Any] = {}  # batch index -> the batch yielded, until its step
        self._sums = np.zeros(0)
        self._counts = np.zeros(0)
        self._last = -1
        self._result: dict[str, float] | None = None
        self._warned = False

    def start(self, batches: _ValidationBatches) -> bool:
        """A validation/test epoch begins (its loader is iterated): start a new report.
        False (no report) when the loader is iterated outside Lightning's evaluation loops."""
        self.stop()
        trainer = self.dm.trainer
        if trainer is None or not (
            trainer.validating or trainer.testing or trainer.sanity_checking
        ):
            return False
        module = trainer.lightning_module
        step = module.test_step if trainer.testing else module.validation_step
        if "dataloader_iter" in inspect.signature(step).parameters:
            self._warn("a step that takes dataloader_iter does not say which batch it runs")
            return False
        n = len(self.dm._val_thetas) if self.dm._val_thetas is not None else 0
        self._sums, self._counts = np.zeros(n), np.zeros(n)
        self._batches, self._last, self._result = batches, -1, None
        self._module = module
        self._handle = module.register_forward_hook(self._on_forward)
        return True

    def yielded(self, b: int, batch: Any) -> None:
        """The loader yielded batch ``b`` (Lightning runs its step after prefetching the next
        one): kept until then; a few at most, should the module never call its forward."""
        self._pending[b] = batch
        self._pending.pop(b - 4, None)

    def stop(self) -> None:
        """Remove the forward hook and forget the epoch's batches (idempotent)."""
        if self._handle is not None:
            self._handle.remove()
        self._handle, self._module, self._batches = None, None, None
        self._pending.clear()

    def _warn(self, why: str) -> None:
        if not self._warned:
            rank_zero_warn(f"no per-simulation validation report: {why}")
            self._warned = True

    @torch.no_grad()
    def _on_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        batches = self._batches
        b = _evaluation_step_index(self.dm.trainer)
        if batches is None or b is None or b == self._last or self._module is None:
            return
        self._last = b
        batch = self._pending.pop(b, None)
        for old in [k for k in self._pending if k < b]:
            del self._pending[old]
        if batch is None:
            return
        try:
            target = default_target(batch)
            pred = default_pred(output)
        except TypeError as exc:  # e.g. a batch that is a bare tensor: no target to compare with
            self._warn(str(exc))
            self.stop()
            return
        target = target.to(pred.device)
        if pred.is_floating_point() and target.is_floating_point() and pred.dtype != target.dtype:
            wide = torch.promote_types(pred.dtype, target.dtype)
            pred, target = pred.to(wide), target.to(wide)
        loss = per_sample_loss(self.dm.val_loss_fn, pred, target).float().cpu().numpy()
        idx, padding = batches.chunk(b)
        keep = ~padding[: len(loss)]
        sims = batches.val_set.sim_index[idx[: len(loss)][keep]]
        np.add.at(self._sums, sims, loss[keep])
        np.add.at(self._counts, sims, 1)
        for metric in self.metrics:
            metric.update()
            # epoch level; Lightning calls compute() at the end of the epoch (see the class doc)
            self._module.log(
                metric.stat, metric, on_step=False, on_epoch=True, metric_attribute=metric.stat
            )

    def finish(self) -> dict[str, float]:
        """The epoch's figures (collective the first time it is called in an epoch: every rank
        calls it at the same point, from the metrics' ``compute``); sets ``dm.val_report``."""
        if self._result is not None:
            return self._result
        self.stop()
        nan = {name: float("nan") for name in _REPORT_NAMES}
        thetas = self.dm._val_thetas
        self._result = nan
        if thetas is None or not len(self._sums):
            return nan
        # host-side statistics: summed on the package's gloo group, never on the Trainer's
        # (under NCCL its collectives need CUDA tensors)
        both = self.dm.all_reduce(np.stack([self._sums, self._counts]), op="sum")
        seen = both[1] > 0
        if not seen.any():
            return nan
        per_sim = np.where(seen, both[0] / np.maximum(both[1], 1), np.nan)
        self.dm.val_report = {"theta": thetas, "loss": per_sim}
        valid = per_sim[seen]
        self._result = dict(
            zip(
                _REPORT_NAMES,
                (float(valid.mean()), float(np.percentile(valid, 95)), float(valid.max())),
                strict=True,
            )
        )
        return self._result


class _SimLoss(Metric):
    """One figure of the per-run validation report, logged as a Metric: Lightning calls
    :meth:`compute` at the end of the epoch (see :class:`_ValidationReport`); the reduction over
    ranks is the report's own, so torchmetrics syncs nothing (``sync_on_compute=False``)."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    def __init__(self, report: _ValidationReport, stat: str) -> None:
        super().__init__(sync_on_compute=False)
        self.report = report
        self.stat = stat

    def update(self) -> None:
        """Nothing to keep: the report holds the sums (called so that compute is not 'early')."""

    def compute(self) -> torch.Tensor:
        return torch.tensor(self.report.finish()[self.stat], dtype=torch.float32)
