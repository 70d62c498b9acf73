"""Sample efficiency, the headline: the same solver budget, four ways of choosing the runs.

For each recipe and seed, trains with Uniform, Halton, LossProportional and Breed (the last two
steered by ActiveSampling) under the same budget of completed runs and the same recipe settings,
with a FIFO buffer by default so that every method trains the same number of steps,
then evaluates the final model on the recipe's fixed held-out validation runs (the same 16
Halton points for every method). Reports the per-run validation error's mean, p95, p99 and max
(median over seeds) and the ratio uniform / method for each (> 1 is better).

    python benchmarks/sample_efficiency.py                 # 3 recipes x 3 seeds x 4 methods
    python benchmarks/sample_efficiency.py --large         # 4x the budget
    python benchmarks/sample_efficiency.py --quick         # smoke: 1 recipe, tiny settings
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT, save, table

ROOT = Path(__file__).resolve().parent.parent
METHODS = {
    "uniform": ("{recipe}.yaml", ["--data.sampler=Uniform", "--data.sampler.seed={seed}"]),
    "halton": ("{recipe}.yaml", ["--data.sampler=Halton", "--data.sampler.seed={seed}"]),
    "loss_prop": (
        "{recipe}.yaml",
        [
            "--data.sampler=LossProportional",
            "--data.sampler.seed={seed}",
            "--trainer.callbacks+=ActiveSampling",
            "--trainer.callbacks.update_every_n_steps=10",
            "--trainer.callbacks.window=50",
        ],
    ),
    "breed": ("{recipe}_breed.yaml", ["--data.sampler.seed={seed}"]),
}
STATS = ("mean", "p95", "p99", "max")


def run(recipe: str, method: str, seed: int, extra: list[str], workdir: Path) -> dict[str, float]:
    from lightning_online.cli import OnlineCLI

    config, overrides = METHODS[method]
    args = [
        "fit",
        "--config",
        str(ROOT / "recipes" / config.format(recipe=recipe)),
        f"--seed_everything={seed}",
        *[o.format(seed=seed) for o in overrides],
        f"--trainer.default_root_dir={workdir / f'{recipe}-{method}-{seed}'}",
        "--trainer.enable_progress_bar=false",
        "--trainer.logger=false",
        "--monitor.plot=false",
        "--monitor.summary=false",
        *extra,
    ]
    t0 = time.perf_counter()
    cli = OnlineCLI(args=args, run=True)
    cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    loss = np.asarray(cli.datamodule.val_report["loss"], dtype=float)
    return {
        "mean": float(loss.mean()),
        "p95": float(np.percentile(loss, 95)),
        "p99": float(np.percentile(loss, 99)),
        "max": float(loss.max()),
        "steps": cli.trainer.global_step,
        "completed": cli.datamodule.stats["completed"],
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=["heat2d", "burgers1d", "allen_cahn1d"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--large", action="store_true", help="4x the recipes' budget")
    p.add_argument("--quick", action="store_true", help="smoke test: tiny settings")
    p.add_argument(
        "--buffer",
        choices=["fifo", "recipe"],
        default="fifo",
        help="fifo (default): every sample is served exactly once, so every method trains the same "
        "number of steps on the same number of samples; recipe: the recipe's Reservoir, whose "
        "number of steps depends on how fast the study streams",
    )
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    extra: list[str] = []
    if a.buffer == "fifo":
        extra += [
            "--data.buffer=FIFO",
            "--data.buffer.capacity=1000",
            "--data.buffer.watermark=200",
        ]
    if a.quick:
        a.recipes, a.seeds = a.recipes[:1], a.seeds[:1]
        a.methods = [m for m in a.methods if m in ("uniform", "breed")]
        extra = [
            "--data.n_simulations=6",
            "--data.val_parameters=3",
            "--trainer.max_steps=12",
            "--data.buffer.init_args.watermark=32",
        ]
    if a.large:
        extra += [f"--data.n_simulations={4 * 64}"]
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in a.recipes:
            for seed in a.seeds:
                for method in a.methods:
                    r = run(recipe, method, seed, extra, Path(tmp))
                    results.setdefault(recipe, {}).setdefault(method, []).append(r)
                    print(
                        f"{recipe:<13} {method:<10} seed {seed}: mean {r['mean']:.3g} "
                        f"max {r['max']:.3g} ({r['steps']} steps, {r['seconds']:.0f} s)",
                        flush=True,
                    )
    rows, summary = [], {}
    for recipe, by_method in results.items():
        base = {s: np.median([r[s] for r in by_method["uniform"]]) for s in STATS}
        for method, runs in by_method.items():
            med = {s: float(np.median([r[s] for r in runs])) for s in STATS}
            ratio = {s: float(base[s] / med[s]) if med[s] > 0 else float("nan") for s in STATS}
            spread = {
                s: [float(min(r[s] for r in runs)), float(max(r[s] for r in runs))] for s in STATS
            }
            summary.setdefault(recipe, {})[method] = {
                "median": med,
                "ratio_uniform_over_method": ratio,
                "min_max": spread,
                "runs": runs,
            }
            rows.append([recipe, method, *(med[s] for s in STATS), *(ratio[s] for s in STATS)])
    header = ["recipe", "method", *STATS, *(f"uni/{s}" for s in STATS)]
    print(table(rows, header))
    out = a.out or OUT
    path = save("sample_efficiency" + ("_quick" if a.quick else ""), summary, out)
    print(f"wrote {path}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(summary), figsize=(4.2 * len(summary), 3.4), squeeze=False)
    for ax, (recipe, by_method) in zip(axes[0], summary.items(), strict=True):
        methods = list(by_method)
        x = np.arange(len(STATS))
        w = 0.8 / len(methods)
        for i, m in enumerate(methods):
            ax.bar(
                x + i * w, [by_method[m]["ratio_uniform_over_method"][s] for s in STATS], w, label=m
            )
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(x + 0.4 - w / 2, STATS)
        ax.set_title(recipe)
        ax.set_ylabel("error ratio uniform / method (>1 better)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    png = out / ("sample_efficiency" + ("_quick" if a.quick else "") + ".png")
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
