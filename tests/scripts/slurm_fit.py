"""Data-parallel online fit started by ``srun --mpi=none --ntasks=2`` (the tests' stand-in srun).

Lightning detects SLURMEnvironment by itself; each task is a training rank (an MPI singleton)
that spawns its own workers, and every solver run is an ``srun`` job step of 2 ranks
(``ExternalSolver(launcher="srun")``). Writes <out>.<rank>.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from _models import Regressor

from lightning_online import FIFO, ExternalSolver, Halton, OnlineDataModule, ParameterSpace

PROGRAM = Path(__file__).resolve().parent.parent / "programs" / "lo_ext_client.py"

if __name__ == "__main__":
    out = sys.argv[1]
    solver = ExternalSolver(
        [sys.executable, str(PROGRAM), "--steps", "6"],
        fields=["x", "y"],
        n_procs=2,
        launcher="srun",
        n_steps=6,
    )
    dm = OnlineDataModule(
        solver,
        ParameterSpace([0, 0], [1, 1]),
        n_simulations=8,
        batch_size=8,
        sampler=Halton(seed=0),
        buffer=FIFO(64, 16),
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        strategy="ddp",
        devices=2,  # = SLURM_NTASKS_PER_NODE; Lightning launches nothing under SLURM
        max_steps=10_000,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Regressor(3, 4), dm)
    env = type(trainer.strategy.cluster_environment).__name__
    with open(f"{out}.{trainer.global_rank}.json", "w") as f:
        json.dump({"stats": dict(dm.stats), "step": trainer.global_step, "env": env}, f)
    # Rank processes of mpiexec/srun exit here: end the process group first (see docs/cluster.md).
    torch.distributed.destroy_process_group()
