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

from lightning_online import (
    FIFO,
    ActiveSampling,
    Breed,
    Halton,
    OnlineDataModule,
    ParameterSpace,
)


class RankSpeed:
    """Rank 1's solver runs are ten times slower than rank 0's."""

    def __call__(self, theta):
        import os

        delay = 0.02 if os.environ.get("LOCAL_RANK", "0") == "1" else 0.002
        for k in range(10):
            time.sleep(delay)
            x = np.array([*theta, k / 10], dtype=np.float32)
            yield x, np.sin(3 * x[:1]).astype(np.float32)


class Rank1Fails(RankSpeed):
    """Every run on rank 1 fails (as if its node were broken); rank 0 is healthy."""

    def __call__(self, theta):
        import os

        if os.environ.get("LOCAL_RANK", "0") == "1":
            raise RuntimeError("this node's solver installation is broken")
        return super().__call__(theta)


class SlowStep(Callback):
    """Rank 0 trains slower per step too, so ranks arrive at each step at different times."""

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_rank == 0:
            time.sleep(0.005)


class LossPairs(Callback):
    """Records (callback's mean per-sample loss, module's loss) at every step."""

    def __init__(self, active):
        self.active, self.pairs = active, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.active.last_losses is not None:
            self.pairs.append([float(self.active.last_losses.mean()), float(outputs["loss"])])


def guard_world_collectives() -> list[str]:
    """Record every collective the package issues on the Trainer's (world) group: under NCCL
    those need CUDA tensors, and host-side statistics belong on the package's gloo group."""
    import traceback

    import torch.distributed as dist

    violations: list[str] = []
    for name in (
        "all_reduce",
        "all_gather",
        "all_gather_object",
        "broadcast",
        "broadcast_object_list",
        "reduce",
        "gather",
        "all_gather_into_tensor",
        "reduce_scatter",
    ):
        original = getattr(dist, name)

        def wrapped(*args, _original=original, _name=name, **kwargs):
            group = kwargs.get("group")
            if group is None or group is dist.group.WORLD:
                ours = [
                    f"{f.filename}:{f.lineno}"
                    for f in traceback.extract_stack()[:-1]
                    if "lightning_online" in f.filename
                ]
                if ours:
                    violations.append(f"{_name} on the world group from {ours[-1]}")
            return _original(*args, **kwargs)

        setattr(dist, name, wrapped)
    return violations


if __name__ == "__main__":
    out = sys.argv[1]
    world_collectives = guard_world_collectives()
    steer = len(sys.argv) > 2 and sys.argv[2] == "--active"
    rank1_fails = len(sys.argv) > 2 and sys.argv[2] == "--rank1-fails"
    callbacks = [SlowStep()]
    sampler = Halton(seed=1)
    if steer:
        sampler = Breed(sigma=0.05, start=0.5, end=0.9, breakpoint=3, statistic="loss", seed=0)
        active = ActiveSampling(update_every_n_steps=2, window=10)
        callbacks += [active, LossPairs(active)]
    dm = OnlineDataModule(
        Rank1Fails() if rank1_fails else RankSpeed(),
        ParameterSpace([0, 0], [1, 1]),
        n_simulations=24,
        batch_size=8,
        n_workers=2,
        sampler=sampler,
        buffer=FIFO(64, watermark=16),
        val_parameters=None if "--no-val" in sys.argv else 3,
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
        callbacks=callbacks,
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
                "sampler": dm.sampler.state_dict(),
                "loss_pairs": callbacks[-1].pairs if steer else [],
                "updates": callbacks[1].updates if steer else 0,
                "world_collectives": sorted(set(world_collectives)),
            },
            f,
        )
    if torch.distributed.is_initialized():  # end the process group before exit (docs/cluster.md)
        torch.distributed.destroy_process_group()
