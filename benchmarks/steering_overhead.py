"""Steering overhead: training steps per second with and without ActiveSampling, side by side.

Both sides train the same model on the same in-memory batches (no solver in the loop, so only the
callback's own cost is measured): a plain Trainer, and the same Trainer with ``ActiveSampling``
fed by a stand-in DataModule surface. Sides alternate over several repeats; the median ratio is
reported, since absolute times on shared machines are noisy.

    python benchmarks/steering_overhead.py [--steps 400] [--repeats 5] [--hidden 256] [--batch 64]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save, save_bars, summary

from lightning_online import ActiveSampling, Breed, OnlineDataModule, ParameterSpace


class MLP(pl.LightningModule):
    def __init__(self, d_in: int, d_out: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, d_out),
        )

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), 1e-3)


class Stream(IterableDataset):
    """Endless in-memory batches that record (sim_ids, steps) like the online dataset does."""

    def __init__(self, dm: FakeOnline, batch: int, d_in: int, d_out: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(64, batch, d_in, generator=g)
        self.y = torch.rand(64, batch, d_out, generator=g)
        self.dm, self.batch = dm, batch

    def __iter__(self):
        k = 0
        while True:
            ids = (np.arange(self.batch) + k) % 256
            self.dm.info.append((ids, np.zeros(self.batch, dtype=np.int64)))
            yield self.x[k % 64], self.y[k % 64]
            k += 1


class FakeOnline(OnlineDataModule):
    """The OnlineDataModule surface ActiveSampling uses, without solvers (to isolate its cost)."""

    def __init__(self, batch: int, d_in: int, d_out: int) -> None:
        super().__init__(
            lambda t: iter(()),
            ParameterSpace([0, 0], [1, 1]),
            n_simulations=1,
            sampler=Breed(seed=0),
            batch_size=batch,
        )
        self.info: collections.deque = collections.deque()
        self.thetas = np.random.default_rng(0).random((256, 2))
        self.loader = DataLoader(Stream(self, batch, d_in, d_out), batch_size=None)

    def setup(self, stage):
        pass

    def train_dataloader(self):
        return self.loader

    def pop_batch_info(self):
        return self.info.popleft() if self.info else None

    def theta_of(self, sim_ids):
        return self.thetas[sim_ids]

    def all_gather_object(self, obj):
        return [obj]  # one process

    def teardown(self, stage):
        pass


def run(steps: int, steer: bool, batch: int, hidden: int) -> float:
    d_in, d_out = 6, 256
    torch.manual_seed(0)
    dm = FakeOnline(batch, d_in, d_out)
    cbs = [ActiveSampling(update_every_n_steps=50, window=200)] if steer else []
    tr = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=cbs,
    )
    model = MLP(d_in, d_out, hidden)
    t0 = time.perf_counter()
    tr.fit(model, dm)
    return steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    run(50, True, a.batch, a.hidden)  # warm-up
    ratios, plain, steered = [], [], []
    for _ in range(a.repeats):
        s0 = run(a.steps, False, a.batch, a.hidden)
        s1 = run(a.steps, True, a.batch, a.hidden)
        plain.append(s0)
        steered.append(s1)
        ratios.append(s1 / s0)
    med = statistics.median(ratios)
    print(f"{'side':<22}{'steps/s (median)':>18}")
    print(f"{'plain Trainer':<22}{statistics.median(plain):>18.1f}")
    print(f"{'with ActiveSampling':<22}{statistics.median(steered):>18.1f}")
    print(
        f"ratio with/without: median {med:.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}) "
        f"-> overhead {100 * (1 - med):.1f} % (target < 2 %)"
    )
    result = {
        "config": {k: v for k, v in vars(a).items() if k != "out"},
        "plain_steps_per_s": summary(plain),
        "steered_steps_per_s": summary(steered),
        "ratio": summary(ratios),
    }
    name = f"steering_overhead_h{a.hidden}_b{a.batch}"
    print(f"wrote {save(name, result, a.out)}")
    save_bars(
        name,
        ["plain", "ActiveSampling"],
        [statistics.median(plain), statistics.median(steered)],
        "training steps / s",
        a.out,
        f"ratio {med:.3f} (target >= 0.98)",
    )


if __name__ == "__main__":
    main()
