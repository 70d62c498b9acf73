"""A 2-rank CPU DDP online fit with validation runs: used by tests/test_val_report.py.

Run as a script (Lightning's DDP launcher re-runs it for rank 1). Writes <out>.<rank>.json:
what each rank logged as val_sim_loss_* at every validation, its val_report after fit and after
``validate``, the per-run losses computed directly from the solver, the warnings it saw and the
collectives the package issued on the Trainer's group.
"""

from __future__ import annotations

import json
import sys
import warnings

import lightning.pytorch as pl
import numpy as np
import torch
from _models import Regressor
from _solvers import Smooth
from ddp_fit import guard_world_collectives
from lightning.pytorch.callbacks import Callback

from lightning_online import FIFO, Halton, OnlineDataModule, ParameterSpace

NAMES = ("val_sim_loss_mean", "val_sim_loss_p95", "val_sim_loss_max")
STEPS = 7  # 3 validation runs of 7 samples: 21, so one rank's share is padded


class Record(Callback):
    def __init__(self) -> None:
        self.logged: list[list[float]] = []
        self.callbacks_seen: list[list[str]] = []

    def on_validation_end(self, trainer, pl_module):
        self.callbacks_seen.append([type(c).__name__ for c in trainer.callbacks])
        if not trainer.sanity_checking:
            self.logged.append([float(trainer.callback_metrics[n]) for n in NAMES])


def direct_losses(model: torch.nn.Module, thetas: np.ndarray) -> list[float]:
    """The mean squared error of each validation run, from the solver and the model alone."""
    out = []
    with torch.no_grad():
        for theta in thetas:
            xs, ys = zip(*Smooth(n_steps=STEPS)(theta), strict=True)
            x, y = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
            out.append(float(((model(x) - y) ** 2).mean()))
    return out


if __name__ == "__main__":
    out = sys.argv[1]
    world_collectives = guard_world_collectives()
    record = Record()
    dm = OnlineDataModule(
        Smooth(n_steps=STEPS),
        ParameterSpace([0, 0], [1, 1]),
        n_simulations=12,
        batch_size=4,
        val_batch_size=4,
        n_workers=2,
        sampler=Halton(seed=1),
        buffer=FIFO(64, watermark=8),
        val_parameters=3,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        strategy="ddp",
        devices=2,
        max_steps=100_000,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record],
        val_check_interval=4,
        check_val_every_n_epoch=None,
    )
    callbacks_before = [type(c).__name__ for c in trainer.callbacks]
    torch.manual_seed(0)
    model = Regressor(3, 1)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        trainer.fit(model, dm)
        after_fit = dm.val_report["loss"].tolist()
        (validated,) = trainer.validate(model, dm, verbose=False)
    model.eval()
    with open(f"{out}.{trainer.global_rank}.json", "w") as f:
        json.dump(
            {
                "logged": record.logged,
                "after_fit": after_fit,
                "validated": [validated[n] for n in NAMES],
                "report": dm.val_report["loss"].tolist(),
                "direct": direct_losses(model, dm.val_report["theta"]),
                "warnings": [str(w.message) for w in seen],
                "callbacks_before": callbacks_before,
                "callbacks_seen": record.callbacks_seen,
                "world_collectives": sorted(set(world_collectives)),
            },
            f,
        )
    if torch.distributed.is_initialized():  # end the process group before exit (docs/cluster.md)
        torch.distributed.destroy_process_group()
