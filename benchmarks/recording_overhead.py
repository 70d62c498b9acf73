"""What recording a study costs: the same online study with ``record=`` on and off, alternating.

Heat2D runs streamed into a FieldMLP (as benchmarks/online_vs_offline.py), one solver process,
one torch thread, a FIFO buffer (every sample trained on once, so samples per second of fit is
the stream's end-to-end throughput); each repeat runs the study without recording, then with it
(and, with ``--gzip``, with gzip compression too). Reports the median ratio of throughput
recording / not recording, with its spread (target >= 0.95),
the ratio of the study's wall times (not recording / recording: the stream end to end),
what the receiver thread spent handing samples to the writer (total, and the longest call), the
writer's commit time and the file's size.

    python benchmarks/recording_overhead.py [--runs 24] [--nx 64] [--n-steps 100] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save, save_bars, summary, table

from lightning_online import FIFO, Halton, OnlineDataModule, ParameterSpace
from lightning_online.models import FieldMLP
from lightning_online.recording import Recording
from lightning_online.solvers import Heat2D, heat2d_space


def fit(solver: Heat2D, a: argparse.Namespace, record: Recording | None) -> dict:
    low, high, names = heat2d_space()
    dm = OnlineDataModule(
        solver,
        ParameterSpace(low, high, names),
        n_simulations=a.runs,
        sampler=Halton(seed=0),
        batch_size=a.batch,
        n_workers=1,
        buffer=FIFO(4 * a.batch * 8, watermark=a.batch),
        record=record,
    )
    torch.manual_seed(0)
    model = FieldMLP(6, [solver.ny, solver.nx])
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=a.max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    t0 = time.perf_counter()
    trainer.fit(model, dm)
    seconds = time.perf_counter() - t0
    out = {
        "seconds": seconds,
        "samples_served": dm.stats["samples_served"],
        "throughput": dm.stats["samples_served"] / seconds,
        "completed": dm.stats["completed"],
    }
    if record is not None:
        st = dict(dm.recording_stats)
        out.update(
            tee_seconds=st["tee_seconds"],
            tee_max_ms=1e3 * st["tee_max_seconds"],
            tee_calls=st["tee_calls"],
            commit_seconds=st["commit_seconds"],
            runs_written=st["runs_written"],
            file_mb=Path(record.path).stat().st_size / 1e6,
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=24)
    p.add_argument("--nx", type=int, default=64)
    p.add_argument("--n-steps", type=int, default=100, help="time steps per run")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--max-steps", type=int, default=-1, help="-1: until the study is drained")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--gzip", action="store_true", help="also record with gzip compression")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    torch.set_num_threads(1)  # one core trains, the other runs the solver
    solver = Heat2D(nx=a.nx, ny=a.nx, n_steps=a.n_steps)
    sides = ["off", "on"] + (["gzip"] if a.gzip else [])
    res: dict[str, list[dict]] = {s: [] for s in sides}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.repeats):
            for side in sides:
                rec = None
                if side != "off":
                    path = Path(tmp) / f"{side}{i}.h5"
                    rec = Recording(path, compression="gzip" if side == "gzip" else None)
                res[side].append(fit(solver, a, rec))
                print(side, {k: round(v, 4) for k, v in res[side][-1].items()}, flush=True)
    med = lambda xs: float(np.median(xs))  # noqa: E731
    ratios = {
        s: summary(
            [r["throughput"] / o["throughput"] for r, o in zip(res[s], res["off"], strict=True)]
        )
        for s in sides[1:]
    }
    # the study's wall time (the stream's end to end), not recording / recording
    walls = {
        s: summary([o["seconds"] / r["seconds"] for r, o in zip(res[s], res["off"], strict=True)])
        for s in sides[1:]
    }
    rows = [
        [s, med([r["seconds"] for r in res[s]]), med([r["throughput"] for r in res[s]])]
        for s in sides
    ]
    print(table(rows, ["recording", "fit seconds (median)", "samples/s (median)"]))
    for s in sides[1:]:
        r = ratios[s]
        tee = res[s]
        w = walls[s]
        print(
            f"{s}/off throughput: median {r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f}); "
            f"study wall time off/{s}: median {w['median']:.3f} ({w['min']:.3f}-{w['max']:.3f}); "
            f"receiver in the tee {med([t['tee_seconds'] for t in tee]):.3f} s over "
            f"{med([t['tee_calls'] for t in tee]):.0f} calls, longest call "
            f"{max(t['tee_max_ms'] for t in tee):.2f} ms; writer {med([t['commit_seconds'] for t in tee]):.2f} s; "
            f"file {med([t['file_mb'] for t in tee]):.1f} MB"
        )
    result = {
        "config": {k: v for k, v in vars(a).items() if k != "out"},
        "runs": res,
        "ratios": ratios,
    }
    print(f"wrote {save('recording_overhead', result, a.out)}")
    save_bars(
        "recording_overhead",
        sides,
        [med([r["throughput"] for r in res[s]]) for s in sides],
        "samples/s served (median)",
        a.out,
        f"recording on/off {ratios['on']['median']:.3f} (target >= 0.95)",
    )


if __name__ == "__main__":
    main()
