"""An online fit that records its study and checkpoints as it goes; the test kills it with
SIGKILL, reads the recording, and resumes it.

python recorded_fit.py <dir> [--resume] [--ddp]

Writes <dir>/study.h5 (under --ddp: study.rank0.h5 and study.rank1.h5), checkpoints in
<dir>/ckpt, and at the end <dir>/out.json. Says READY once a checkpoint was written after at
least 4 runs of this rank were in its recording file.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
from _models import Regressor
from _solvers import Smooth
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_online import FIFO, Halton, OnlineDataModule, ParameterSpace

N_RUNS, STEPS = 24, 10


class Ready(Callback):
    def __init__(self) -> None:
        self.said = False

    def on_train_batch_end(self, trainer, *args):
        dm = trainer.datamodule
        # after a checkpoint (every 5 steps) is on disk: never before the first one was written
        saved = Path(sys.argv[1]) / "ckpt" / "last.ckpt"
        if not self.said and trainer.global_step % 5 == 1 and trainer.is_global_zero:
            if (
                trainer.global_step > 5
                and saved.exists()
                and dm.recording_stats["runs_in_file"] >= 4
            ):
                self.said = True
                print("READY", flush=True)


class Slow(Regressor):
    def training_step(self, batch, batch_idx):
        time.sleep(0.03)  # slower than the solvers: the study lasts a few seconds
        return super().training_step(batch, batch_idx)


if __name__ == "__main__":
    root = Path(sys.argv[1])
    resume, ddp = "--resume" in sys.argv, "--ddp" in sys.argv
    dm = OnlineDataModule(
        Smooth(n_steps=STEPS),
        ParameterSpace([0, 0], [1, 1]),
        n_simulations=N_RUNS,
        batch_size=4,
        n_workers=2,
        sampler=Halton(seed=3),
        buffer=FIFO(32, watermark=4),
        record=str(root / "study.h5"),
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        strategy="ddp" if ddp else "auto",
        devices=2 if ddp else 1,
        max_steps=100_000,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[
            Ready(),
            ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=5, save_last=True),
        ],
    )
    trainer.fit(Slow(3, 1), dm, ckpt_path=root / "ckpt" / "last.ckpt" if resume else None)
    stats = dm.all_gather_object(dict(dm.recording_stats))
    if trainer.is_global_zero:
        (root / "out.json").write_text(
            json.dumps({"completed": dm.stats["completed"], "recording": stats})
        )
