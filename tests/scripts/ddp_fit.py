"""A 2-rank CPU DDP online fit where rank speeds differ: used by tests/test_data.py.

Run as a script (Lightning's DDP launcher re-runs it for rank 1). Writes <out>.<rank>.json.
"""

from __future__ import annotations

import json
import sys
import time

import lightning.pytorch as pl
import numpy as np
import torch
from _models import Regressor
from lightning.pytorch.callbacks import Callback

from lightning_online import FIFO, Halton, OnlineDataModule, ParameterSpace


class RankSpeed:
    """Rank 1's solver runs are ten times slower than rank 0's."""

    def __call__(self, theta):
        import os

        delay = 0.02 if os.environ.get("LOCAL_RANK", "0") == "1" else 0.002
        for k in range(10):
            time.sleep(delay)
            x = np.array([*theta, k / 10], dtype=np.float32)
            yield x, np.sin(3 * x[:1]).astype(np.float32)


class SlowStep(Callback):
    """Rank 0 trains slower per step too, so ranks arrive at each step at different times."""

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_rank == 0:
            time.sleep(0.005)


if __name__ == "__main__":
    out = sys.argv[1]
    dm = OnlineDataModule(
        RankSpeed(),
        ParameterSpace([0, 0], [1, 1]),
        n_simulations=24,
        batch_size=8,
        n_workers=2,
        sampler=Halton(seed=1),
        buffer=FIFO(64, watermark=16),
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
        callbacks=[SlowStep()],
        val_check_interval=5,
        check_val_every_n_epoch=None,
    )
    torch.manual_seed(0)
    trainer.fit(Regressor(3, 1), dm)
    local_runs = sum(1 for r in dm.runs.values() if not r.validation)
    with open(f"{out}.{trainer.global_rank}.json", "w") as f:
        json.dump(
            {
                "stats": dict(dm.stats),
                "global_step": trainer.global_step,
                "launched": dm.launched_parameters.tolist(),
                "local_runs": local_runs,
            },
            f,
        )
