"""A single-process online fit with long, slow solver runs, to be interrupted by a test.

Prints READY once training has started; the test then sends it SIGINT or SIGTERM. Usage:
python interruptible_fit.py <checkpoint_dir or ->
"""

from __future__ import annotations

import sys

import lightning.pytorch as pl
from _models import Regressor
from _solvers import Smooth
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_online import FIFO, OnlineDataModule, ParameterSpace


class Ready(Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == 3:
            print("READY", flush=True)


if __name__ == "__main__":
    ckpt_dir = sys.argv[1] if len(sys.argv) > 1 else "-"
    callbacks = [Ready()]
    if ckpt_dir != "-":
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_on_exception=True))
    dm = OnlineDataModule(
        Smooth(n_steps=100_000, delay=0.002),
        ParameterSpace([0, 0], [1, 1]),
        n_simulations=10,
        batch_size=4,
        n_workers=2,
        buffer=FIFO(16, 4),
    )
    trainer = pl.Trainer(
        max_steps=1_000_000,
        logger=False,
        enable_checkpointing=ckpt_dir != "-",
        enable_progress_bar=False,
        callbacks=callbacks,
    )
    trainer.fit(Regressor(3, 1), dm)
