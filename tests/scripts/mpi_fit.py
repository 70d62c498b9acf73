"""Data-parallel online fit under ``mpiexec -n 2`` (Lightning's MPIEnvironment, gloo DDP).

Each MPI rank is a training rank that spawns its own solver workers. Writes <out>.<rank>.json.
"""

from __future__ import annotations

import json
import sys

import lightning.pytorch as pl
import torch
from _models import Regressor
from _solvers import Smooth
from lightning.pytorch.plugins.environments import MPIEnvironment

from lightning_online import FIFO, Halton, OnlineDataModule, ParameterSpace

if __name__ == "__main__":
    out = sys.argv[1]
    dm = OnlineDataModule(
        Smooth(n_steps=10),
        ParameterSpace([0, 0], [1, 1]),
        n_simulations=12,
        batch_size=8,
        sampler=Halton(seed=0),
        buffer=FIFO(64, 16),
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        strategy="ddp",
        devices=2,  # ranks per node: MPIEnvironment takes them from mpiexec, launches nothing
        plugins=[MPIEnvironment()],
        max_steps=10_000,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Regressor(3, 1), dm)
    with open(f"{out}.{trainer.global_rank}.json", "w") as f:
        json.dump({"stats": dict(dm.stats), "step": trainer.global_step}, f)
    # Rank processes of mpiexec/srun exit here: end the process group first (see docs/cluster.md).
    torch.distributed.destroy_process_group()
