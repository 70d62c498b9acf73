"""An online study on a real SLURM: training ranks started by ``srun --mpi=none``, every run an
``srun`` job step of the tests' Python client (2 MPI ranks, each sending its share, so the step's
MPI must come up through PMI). Usage: ``slurm_study.py OUT CONFIG_JSON``; config keys: n_simulations,
steps, delay (s per step), step_nodes (--nodes of every run), devices, num_nodes, ckpt (a folder:
checkpoints, one on an exception such as scancel's SIGTERM), resume (a checkpoint to go on from).
Prints READY (rank 0) at step 3; writes OUT.json (rank 0)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from _models import Regressor
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_online import FIFO, ExternalSolver, Halton, OnlineDataModule, ParameterSpace, Srun

PROGRAM = Path(__file__).resolve().parent.parent / "programs" / "lo_ext_client.py"


class Ready(Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == 3 and trainer.is_global_zero:
            print("READY", flush=True)


if __name__ == "__main__":
    out, cfg = sys.argv[1], json.loads(sys.argv[2])
    steps = int(cfg.get("steps", 6))
    program = [sys.executable, str(PROGRAM), "--steps", str(steps), "--parts"]
    solver = ExternalSolver(
        [*program, "--delay", str(cfg.get("delay", 0.0))],
        fields=["x", "y"],
        n_procs=2,
        launcher=Srun(nodes=cfg.get("step_nodes")),
        n_steps=steps,
    )
    dm = OnlineDataModule(
        solver,
        ParameterSpace([0, 0], [1, 1]),
        n_simulations=int(cfg["n_simulations"]),
        batch_size=8,
        n_workers=2,
        sampler=Halton(seed=0),
        buffer=FIFO(64, 8),
    )
    callbacks: list[Callback] = [Ready()]
    if cfg.get("ckpt"):
        callbacks.append(
            ModelCheckpoint(dirpath=cfg["ckpt"], save_last=True, save_on_exception=True)
        )
    trainer = pl.Trainer(
        accelerator="cpu",
        strategy="ddp",
        devices=int(cfg.get("devices", 1)),
        num_nodes=int(cfg.get("num_nodes", 1)),
        max_steps=100_000,
        logger=False,
        enable_checkpointing=bool(cfg.get("ckpt")),
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(Regressor(3, 4), dm, ckpt_path=cfg.get("resume"))
    if trainer.is_global_zero:
        with open(f"{out}.json", "w") as f:
            json.dump({"stats": dict(dm.stats), "step": trainer.global_step}, f)
    torch.distributed.destroy_process_group()
