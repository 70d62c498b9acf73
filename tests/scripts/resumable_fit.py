"""An online fit that checkpoints as it goes; the test kills it with SIGKILL and resumes it.

python resumable_fit.py <ckpt_dir> <out.json> [resume]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
from _models import Regressor
from _solvers import Smooth
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_online import FIFO, Halton, OnlineDataModule, ParameterSpace


class Ready(Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == 31:
            print("READY", flush=True)


if __name__ == "__main__":
    ckpt_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    resume = len(sys.argv) > 3
    dm = OnlineDataModule(
        Smooth(n_steps=20, delay=0.01),
        ParameterSpace([0, 0], [1, 1]),
        n_simulations=16,
        batch_size=4,
        n_workers=2,
        sampler=Halton(seed=4),
        buffer=FIFO(16, watermark=4),
    )
    trainer = pl.Trainer(
        max_steps=100_000,
        logger=False,
        enable_progress_bar=False,
        callbacks=[
            Ready(),
            ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=5, save_last=True),
        ],
    )
    trainer.fit(Regressor(3, 1), dm, ckpt_path=ckpt_dir / "last.ckpt" if resume else None)
    out.write_text(
        json.dumps({"stats": dict(dm.stats), "launched": dm.launched_parameters.tolist()})
    )
