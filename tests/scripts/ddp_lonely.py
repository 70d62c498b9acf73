"""Two 2-rank CPU DDP online fits, the second continuing the first's study with one run left:
rank 1 receives no run in the second. Used by tests/test_seams.py. Writes <out>.<rank>.json."""

from __future__ import annotations

import json
import sys

import lightning.pytorch as pl
import numpy as np
import torch
from _models import Regressor
from lightning.pytorch.callbacks import Callback

from lightning_online import FIFO, Halton, OnlineDataModule, ParameterSpace


class NothingBelow:
    """Yields nothing for theta[0] < 0.3 (such a run fails and is redrawn), 16 steps otherwise."""

    def __call__(self, theta):
        if theta[0] < 0.3:
            return
        for k in range(16):
            x = np.array([*theta, k / 16], dtype=np.float32)
            yield x, np.sin(3 * x[:1]).astype(np.float32)


class Borrowed(Callback):
    """Reads how many batches this rank borrowed before the DataModule lets its study go."""

    def __init__(self, dm):
        self.dm, self.borrowed, self.local_completed = dm, 0, 0

    def on_train_end(self, trainer, pl_module):
        study = self.dm._study
        self.borrowed = study.borrowed
        self.local_completed = sum(
            1 for r in study.runs.values() if not r.validation and r.status == "completed"
        )


def fit(n_simulations, ckpt_path=None):
    dm = OnlineDataModule(
        NothingBelow(),
        ParameterSpace([0, 0], [1, 1]),
        n_simulations=n_simulations,
        batch_size=4,
        n_workers=1,
        sampler=Halton(seed=1),
        buffer=FIFO(32, watermark=4),
        max_failed_fraction=0.9,
        resume="relaxed",  # the second session has a larger budget
    )
    seen = Borrowed(dm)
    trainer = pl.Trainer(
        accelerator="cpu",
        strategy="ddp",
        devices=2,
        max_steps=1000,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[seen],
    )
    torch.manual_seed(0)
    trainer.fit(Regressor(3, 1), dm, ckpt_path=ckpt_path)
    return dm, trainer, seen


if __name__ == "__main__":
    out = sys.argv[1]
    # A study of 3 runs (one rank gets two, the other one), continued with a budget of 4: the
    # one run left goes to rank 0, and rank 1 receives nothing in the second session.
    dm, trainer, _ = fit(3)
    first_step = trainer.global_step
    trainer.save_checkpoint("first.ckpt")
    dm, trainer, seen = fit(4, ckpt_path="first.ckpt")
    with open(f"{out}.{trainer.global_rank}.json", "w") as f:
        json.dump(
            {
                "stats": dict(dm.stats),
                "first_step": first_step,
                "global_step": trainer.global_step,
                "borrowed": seen.borrowed,
                "local_completed": seen.local_completed,
            },
            f,
        )
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
