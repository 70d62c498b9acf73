"""Stream throughput: training samples per second fed by OnlineDataModule vs an in-memory loader.

Same model, same batch size, same number of steps, both sides in this one script, alternating:

(a) ``OnlineDataModule`` with a ``Reservoir`` buffer kept full by fast solver runs (the solver
    yields precomputed arrays, so what is measured is the data path, not the solver);
(b) an ordinary ``DataLoader`` over an in-memory ``TensorDataset`` of the same samples.

Timing starts after ``--warmup`` steps (the buffer has filled by then). Reports the median ratio
(a)/(b) over the repeats (target >= 0.95).

    python benchmarks/throughput.py [--steps 600] [--batch 256] [--hidden 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save, save_bars, summary, table

from lightning_online import OnlineDataModule, ParameterSpace, Reservoir

D_IN, D_OUT = 6, 1024


class Precomputed:
    """Yields slices of a fixed random table: a solver that costs (almost) nothing, optionally
    sleeping ``delay`` seconds per step to cap the rate at which it streams."""

    def __init__(self, n_steps: int = 200, delay: float = 0.0) -> None:
        self.n_steps, self.delay = n_steps, delay

    def __call__(self, theta):
        rng = np.random.default_rng(int(theta[0] * 1e9))
        x = rng.random((self.n_steps, D_IN), dtype=np.float32)
        y = rng.random((self.n_steps, D_OUT), dtype=np.float32)
        for k in range(self.n_steps):
            if self.delay:
                time.sleep(self.delay)
            yield x[k], y[k]


class MLP(pl.LightningModule):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(D_IN, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, D_OUT),
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), 1e-3)


class Clock(Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.t0, self.t1, self.samples = warmup, 0.0, 0.0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.t0 = time.perf_counter()
        elif trainer.global_step > self.warmup:
            self.samples += len(batch[0])
            self.t1 = time.perf_counter()

    @property
    def rate(self) -> float:
        return self.samples / (self.t1 - self.t0)


def trainer(steps: int, clock: Clock) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )


def stream(batch: int, delay: float = 0.0, **kwargs: Any) -> OnlineDataModule:
    """The online side: precomputed samples through the whole data path, buffer kept full."""
    return OnlineDataModule(
        Precomputed(delay=delay),
        ParameterSpace([0, 0], [1, 1]),
        n_simulations=10_000,
        batch_size=batch,
        n_workers=1,
        buffer=Reservoir(16 * batch, watermark=8 * batch),
        **kwargs,
    )


def online(steps: int, batch: int, hidden: int, warmup: int, delay: float) -> float:
    clock = Clock(warmup)
    dm = stream(batch, delay)
    torch.manual_seed(0)
    trainer(steps, clock).fit(MLP(hidden), dm)
    return clock.rate


def offline(steps: int, batch: int, hidden: int, warmup: int) -> float:
    clock = Clock(warmup)
    g = torch.Generator().manual_seed(0)
    n = 16 * batch
    data = TensorDataset(torch.rand(n, D_IN, generator=g), torch.rand(n, D_OUT, generator=g))
    loader = DataLoader(data, batch_size=batch, shuffle=True, drop_last=True)
    torch.manual_seed(0)
    trainer(steps, clock).fit(MLP(hidden), loader)
    return clock.rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--solver-delay",
        type=float,
        default=0.0,
        help="seconds per solver step: 0 streams as fast as possible (ingestion competes with "
        "training for the cores); e.g. 0.002 caps the stream at 500 samples/s per worker",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads on both sides (1: one core trains, the rest feed the stream)",
    )
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    on, off, ratios = [], [], []
    for _ in range(a.repeats):
        b = offline(a.steps, a.batch, a.hidden, a.warmup)
        o = online(a.steps, a.batch, a.hidden, a.warmup, a.solver_delay)
        on.append(o)
        off.append(b)
        ratios.append(o / b)
    s = summary(ratios)
    print(
        table(
            [
                ["OnlineDataModule (buffer full)", float(np.median(on))],
                ["TensorDataset DataLoader", float(np.median(off))],
            ],
            ["feeding", "samples/s (median)"],
        )
    )
    print(
        f"ratio online/in-memory: median {s['median']:.3f} (min {s['min']:.3f}, max {s['max']:.3f}); "
        "target >= 0.95"
    )
    result = {
        "config": vars(a) | {"out": None},
        "online_samples_per_s": summary(on),
        "in_memory_samples_per_s": summary(off),
        "ratio": s,
    }
    name = "throughput" if not a.solver_delay else f"throughput_delay{a.solver_delay:g}"
    print(f"wrote {save(name, result, a.out)}")
    save_bars(
        "throughput",
        ["online (buffer full)", "in-memory"],
        [float(np.median(on)), float(np.median(off))],
        "training samples / s",
        a.out,
        f"ratio {s['median']:.2f} (target >= 0.95)",
    )


if __name__ == "__main__":
    main()
