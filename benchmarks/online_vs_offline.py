"""Online versus offline: the same solver runs and training steps, streamed or written to disk first.

The sides in this one script, alternating, same solver (Heat2D), same model, same batch size and
number of steps, same number of solver processes:

(a) online: ``OnlineDataModule`` streams the runs while the model trains (Reservoir buffer), and
    records them (``record=``);
(b) offline: the runs are computed by a pool of the same number of processes and written to disk
    as .npy files (one per run), then loaded into memory and trained from with a DataLoader;
(c) pseudo-offline (Melissa's control experiment): the very samples (a) streamed, read back from
    its recording (``RecordedDataset``) and trained on offline (shuffled DataLoader) for the same
    number of steps: what separates the effect of streaming from the effect of the data.

The online fit ends by itself once its study is done and drained (or at ``--steps``); the offline
sides then train exactly as many steps. Reports the wall time ratio online/offline (target <=
0.6), for reference the overlap limit max(generation time, training time) measured on the
offline side (target: online within 10 % of it when there are enough cores; this machine has
2), and the validation error of each side's model (relative L2 on held-out runs from a sequence
no sampler draws).

    python benchmarks/online_vs_offline.py [--runs 32] [--steps 400] [--nx 48] [--repeats 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save, save_bars, summary, table
from _offline_sim import simulate_to_disk

from lightning_online import Halton, OnlineDataModule, ParameterSpace, Reservoir
from lightning_online.models import FieldMLP
from lightning_online.recording import RecordedDataset
from lightning_online.sampling import validation_points
from lightning_online.solvers import Heat2D, heat2d_space


def space() -> ParameterSpace:
    low, high, names = heat2d_space()
    return ParameterSpace(low, high, names)


def trainer(steps: int) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )


def offline(solver: Heat2D, thetas: np.ndarray, steps: int, batch: int, pool: Any) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        jobs = [(solver, th, f"{tmp}/run{i}") for i, th in enumerate(thetas)]
        paths = pool.map(simulate_to_disk, jobs, chunksize=1)
        t1 = time.perf_counter()
        x = np.concatenate([np.load(p + "_x.npy") for p in paths])
        y = np.concatenate([np.load(p + "_y.npy") for p in paths])
        loader = DataLoader(
            TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
            batch_size=batch,
            shuffle=True,
            drop_last=True,
        )
        torch.manual_seed(0)
        model = FieldMLP(6, [solver.ny, solver.nx])
        t2 = time.perf_counter()
        trainer(steps).fit(model, loader)
        t3 = time.perf_counter()
    return {
        "total": t3 - t0,
        "generate": t1 - t0,
        "load": t2 - t1,
        "train": t3 - t2,
        "error": error(model),
    }


def pseudo_offline(solver: Heat2D, recording: Path, steps: int, batch: int) -> dict:
    """The samples the online side streamed, from its recording, trained on offline."""
    t0 = time.perf_counter()
    data = RecordedDataset(recording, in_memory=True)
    loader = DataLoader(data, batch_size=batch, shuffle=True, drop_last=True)
    torch.manual_seed(0)
    model = FieldMLP(6, [solver.ny, solver.nx])
    t1 = time.perf_counter()
    trainer(steps).fit(model, loader)
    t2 = time.perf_counter()
    return {
        "total": t2 - t0,
        "load": t1 - t0,
        "train": t2 - t1,
        "samples": len(data),
        "error": error(model),
    }


#: Held-out runs (x, y), from a sequence no sampler draws; made once, in main.
VALIDATION: list[tuple[torch.Tensor, torch.Tensor]] = []


def error(model: FieldMLP) -> float:
    """Relative L2 error of the model over the held-out runs (all their time steps)."""
    model.eval()
    num = den = 0.0
    with torch.no_grad():
        for x, y in VALIDATION:
            num += float(((model(x) - y) ** 2).sum())
            den += float((y**2).sum())
    return (num / den) ** 0.5


def online(solver: Heat2D, n_runs: int, steps: int, batch: int, workers: int, record: Path) -> dict:
    t0 = time.perf_counter()
    dm = OnlineDataModule(
        solver,
        space(),
        n_simulations=n_runs,
        sampler=Halton(seed=0),
        batch_size=batch,
        n_workers=workers,
        buffer=Reservoir(4 * batch * 8, watermark=4 * batch),
        record=str(record),
    )
    torch.manual_seed(0)
    model = FieldMLP(6, [solver.ny, solver.nx])
    tr = trainer(steps)
    tr.fit(model, dm)
    return {
        "total": time.perf_counter() - t0,
        "steps": tr.global_step,
        "completed": dm.stats["completed"],
        "error": error(model),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=32)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--nx", type=int, default=64)
    p.add_argument("--n-steps", type=int, default=200, help="time steps per run")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--val-runs", type=int, default=4, help="held-out runs for the error")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    torch.set_num_threads(1)  # one core trains, the other runs solvers: same for both sides
    solver = Heat2D(nx=a.nx, ny=a.nx, n_steps=a.n_steps)
    thetas = Halton(seed=0).draw(space(), a.runs)
    for theta in validation_points(space(), a.val_runs):
        xs, ys = zip(*solver(theta), strict=True)
        VALIDATION.append((torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))))
    # The offline side's solver processes are forked once, before MPI starts in this process
    # (forking after MPI_Init is unsafe), and reused; their start-up is not timed.
    pool = mp.get_context("fork").Pool(a.workers)
    on, off, pseudo = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.repeats):
            # The online fit ends by itself once the study is done and drained; the offline
            # sides then train exactly as many steps, so all see the same runs and steps.
            rec = Path(tmp) / f"online{i}.h5"
            on.append(online(solver, a.runs, a.steps, a.batch, a.workers, rec))
            off.append(offline(solver, thetas, on[-1]["steps"], a.batch, pool))
            pseudo.append(pseudo_offline(solver, rec, on[-1]["steps"], a.batch))
    pool.terminate()
    ratio = [o["total"] / f["total"] for o, f in zip(on, off, strict=True)]
    limit = [max(f["generate"], f["train"]) for f in off]
    to_limit = [o["total"] / lim for o, lim in zip(on, limit, strict=True)]
    med = lambda xs: float(np.median(xs))  # noqa: E731
    print(
        table(
            [
                ["offline: generate + write", med([f["generate"] for f in off])],
                ["offline: load", med([f["load"] for f in off])],
                ["offline: train", med([f["train"] for f in off])],
                ["offline: total", med([f["total"] for f in off])],
                ["online: total (recording on)", med([o["total"] for o in on])],
                ["overlap limit max(generate, train)", med(limit)],
                ["pseudo-offline: read the recording", med([q["load"] for q in pseudo])],
                ["pseudo-offline: train", med([q["train"] for q in pseudo])],
                ["pseudo-offline: total", med([q["total"] for q in pseudo])],
            ],
            ["side", "seconds (median)"],
        )
    )
    print(
        table(
            [
                [
                    name,
                    med([r["error"] for r in rs]),
                    min(r["error"] for r in rs),
                    max(r["error"] for r in rs),
                ]
                for name, rs in (("online", on), ("offline", off), ("pseudo-offline", pseudo))
            ],
            ["side", "val rel. L2 (median)", "min", "max"],
        )
    )
    s, t = summary(ratio), summary(to_limit)
    print(
        f"online/offline: median {s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f}); target <= 0.6"
    )
    print(
        f"online/overlap limit: median {t['median']:.3f} ({t['min']:.3f}-{t['max']:.3f}); "
        "target <= 1.1 with enough cores"
    )
    result = {
        "config": {k: v for k, v in vars(a).items() if k != "out"},
        "online": on,
        "offline": off,
        "pseudo_offline": pseudo,
        "ratio_online_offline": s,
        "ratio_online_overlap_limit": t,
    }
    print(f"wrote {save('online_vs_offline', result, a.out)}")
    save_bars(
        "online_vs_offline",
        ["offline", "online", "overlap limit"],
        [med([f["total"] for f in off]), med([o["total"] for o in on]), med(limit)],
        "wall time (s)",
        a.out,
        f"online/offline {s['median']:.2f} (target <= 0.6)",
    )


if __name__ == "__main__":
    main()
