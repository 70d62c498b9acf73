"""Memory over a long stream: resident memory of the training process versus the buffer's size.

Streams many times the buffer's capacity through ``OnlineDataModule`` and samples the training
process's resident set size (RSS) at every step. Two figures from the same run, side by side: RSS
once the buffer is first full (the steady state should not grow past it) and RSS at the end; the
growth is reported as a fraction of the buffer's capacity in bytes (target: within 10 %).

    python benchmarks/memory.py [--capacity 2000] [--sample-kb 16] [--passes 40] [--buffer FIFO]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import psutil
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from lightning_online import FIFO, FIRO, OnlineDataModule, ParameterSpace, Reservoir


class Field:
    """A cheap solver that streams samples of a chosen size (x: 4 floats, y: n floats)."""

    def __init__(self, n: int, n_steps: int) -> None:
        self.n, self.n_steps = n, n_steps

    def __call__(self, theta: np.ndarray):
        rng = np.random.default_rng(int(theta[0] * 1e6))
        for k in range(self.n_steps):
            x = np.array([theta[0], theta[1], k / self.n_steps, 1.0], dtype=np.float32)
            yield x, rng.standard_normal(self.n).astype(np.float32)


class Linear(pl.LightningModule):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.net = nn.Linear(4, n)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), 1e-3)


class RSS(Callback):
    def __init__(self, dm: OnlineDataModule) -> None:
        self.dm, self.proc = dm, psutil.Process()
        self.trace: list[tuple[int, int, float]] = []  # step, rss, buffer fill

    def on_train_batch_end(self, trainer, *args) -> None:
        self.trace.append(
            (trainer.global_step, self.proc.memory_info().rss, self.dm.stats["buffer_fill"])
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--capacity", type=int, default=2000)
    p.add_argument("--sample-kb", type=float, default=16.0)
    p.add_argument("--passes", type=int, default=40, help="stream length in buffer capacities")
    p.add_argument("--buffer", choices=["FIFO", "FIRO", "Reservoir"], default="FIFO")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks/memory.json"))
    a = p.parse_args()
    n = max(1, int(a.sample_kb * 1024 / 4))
    n_steps = 100
    n_runs = max(4, a.passes * a.capacity // n_steps)
    buffer = {"FIFO": FIFO, "FIRO": FIRO, "Reservoir": Reservoir}[a.buffer](
        a.capacity, a.capacity // 2
    )
    dm = OnlineDataModule(
        Field(n, n_steps),
        ParameterSpace([0, 0], [1, 1]),
        n_simulations=n_runs,
        batch_size=64,
        n_workers=2,
        buffer=buffer,
    )
    rss = RSS(dm)
    pl.Trainer(
        accelerator="cpu",
        max_steps=10**9,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[rss],
    ).fit(Linear(n), dm)
    trace = np.array(rss.trace)
    sample_bytes = 4 * (n + 4)
    capacity_bytes = a.capacity * sample_bytes
    full = int(np.argmax(trace[:, 2] >= 0.95)) if (trace[:, 2] >= 0.95).any() else len(trace) // 10
    streamed = dm.stats["samples_received"]
    steady = trace[full:-1, 1]  # from the moment the buffer is full; the last step is the drain
    at = [float(steady[int(f * (len(steady) - 1))]) / 2**20 for f in (0, 0.25, 0.5, 0.75, 1.0)]
    half = steady[len(steady) // 2 :]
    # A leak grows with the stream; allocator warm-up and transient peaks do not. The headline is
    # the median RSS over the second half of the stream minus RSS when the buffer was first full.
    growth = float(np.median(half) - steady[0])
    result = {
        "buffer": a.buffer,
        "capacity_samples": a.capacity,
        "sample_bytes": sample_bytes,
        "capacity_bytes": capacity_bytes,
        "samples_streamed": streamed,
        "stream_in_capacities": streamed / a.capacity,
        "rss_when_full_mb": steady[0] / 2**20,
        "rss_median_second_half_mb": float(np.median(half)) / 2**20,
        "rss_peak_mb": float(steady.max()) / 2**20,
        "growth_over_capacity": growth / capacity_bytes,
        "peak_over_capacity": float(steady.max() - steady[0]) / capacity_bytes,
        "rss_mb_at_0_25_50_75_100_percent": at,
    }
    print(
        f"buffer {a.buffer}: capacity {capacity_bytes / 2**20:.1f} MB, streamed {streamed / a.capacity:.0f}x"
    )
    print(
        "RSS (MB) at 0/25/50/75/100 % of the stream after the buffer filled:",
        " ".join(f"{v:.1f}" for v in at),
    )
    print(
        f"growth (median of 2nd half - when full): {100 * result['growth_over_capacity']:.1f} % "
        f"of capacity (target <= 10 %); peak: {100 * result['peak_over_capacity']:.1f} %"
    )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(trace[:, 0], trace[:, 1] / 2**20, lw=1)
        ax.axhline(
            steady[0] / 2**20 + capacity_bytes * 0.1 / 2**20,
            color="r",
            ls="--",
            label="RSS when full + 10 % of capacity",
        )
        ax.set_xlabel("training step")
        ax.set_ylabel("resident memory (MB)")
        ax.set_title(
            f"{a.buffer}, {capacity_bytes / 2**20:.0f} MB buffer, {streamed / a.capacity:.0f}x streamed",
            fontsize=9,
        )
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(a.out.with_suffix(".png"), dpi=110)
    except ImportError:
        pass


if __name__ == "__main__":
    main()
