"""An online fit that checkpoints as it goes and records every sample it trains on (in its
checkpoints too); the test kills it with SIGKILL and resumes it.

python resume_exact_fit.py <ckpt_dir> <out.json> [--ddp] [--external] [--resume]

The solver's x is (theta0, theta1, k / steps), so a sample is known by its x. With --ddp: 2 CPU
ranks (gloo); with --external: the runs are external programs (tests/programs/lo_ext_client.py).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from _models import Regressor
from _solvers import Smooth
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_online import FIFO, ExternalSolver, Halton, OnlineDataModule, ParameterSpace

HERE = Path(__file__).resolve().parent.parent
STEPS = 20


class Recorder(Regressor):
    """Remembers the x of every sample it trained on; its checkpoints carry every rank's."""

    def __init__(self, d_out: int, step_s: float) -> None:
        super().__init__(3, d_out)
        self.seen: list[list[float]] = []
        self.step_s = step_s

    def training_step(self, batch, batch_idx):
        time.sleep(self.step_s)  # slower than the solvers: the buffer stays full
        self.seen.extend(batch[0].double().round(decimals=5).tolist())
        return super().training_step(batch, batch_idx)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["seen"] = self.trainer.datamodule.all_gather_object(self.seen)

    def on_load_checkpoint(self, checkpoint):
        self.seen = list(checkpoint["seen"][self.trainer.global_rank])


class Ledger(Callback):
    """Right before each periodic checkpoint (Lightning calls ModelCheckpoint last), the runs
    completed so far on every rank, as the study's own ledger shows them (``dm.runs``); saved in
    the checkpoint: what a resume must not run again."""

    def __init__(self) -> None:
        self.done: list[list[float]] = []

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step % 5 == 0:
            dm = trainer.datamodule
            mine = [r.theta.tolist() for r in dm.runs.values() if r.status == "completed"]
            self.done = [t for part in dm.all_gather_object(mine) for t in part]

    def state_dict(self):
        return {"done": self.done}


class Ready(Callback):
    """Says READY once a checkpoint was written after at least half the runs completed."""

    def __init__(self) -> None:
        self.said = False

    def on_train_batch_end(self, trainer, *args):
        if (
            not self.said
            and trainer.global_step % 5 == 1
            and trainer.datamodule.stats["completed"] >= 8
            and trainer.is_global_zero
        ):
            self.said = True
            print("READY", flush=True)


if __name__ == "__main__":
    ckpt_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    ddp, external, resume = ("--ddp" in sys.argv, "--external" in sys.argv, "--resume" in sys.argv)
    if external:
        program = str(HERE / "programs" / "lo_ext_client.py")
        solver = ExternalSolver([sys.executable, program, "--steps", str(STEPS)], fields=["x", "y"])
    else:
        solver = Smooth(n_steps=STEPS)
    dm = OnlineDataModule(
        solver,
        ParameterSpace([0, 0], [1, 1]),
        n_simulations=16,
        batch_size=4,
        n_workers=2,
        sampler=Halton(seed=4),
        buffer=FIFO(32, watermark=4),
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
            Ledger(),
            ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=5, save_last=True),
        ],
    )
    # (an external program's start costs more than a Python solver's run)
    model = Recorder(4, step_s=0.08) if external else Recorder(1, step_s=0.01)
    trainer.fit(model, dm, ckpt_path=ckpt_dir / "last.ckpt" if resume else None)
    seen = [x for part in dm.all_gather_object(model.seen) for x in part]
    if trainer.is_global_zero:
        study = dm.state_dict()["study"]
        out.write_text(
            json.dumps({"stats": dict(dm.stats), "seen": seen, "completed": study["completed"]})
        )
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
