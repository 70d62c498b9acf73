"""Sample efficiency, the headline: the same solver budget, several ways of choosing the runs.

For each problem, seed and method, one online study is trained from its recipe with:

* the same budget of completed runs and the same number of training steps for every method: a
  FIFO buffer serves every sample exactly once, so after ``s`` steps every method has trained
  on ``s * batch_size`` samples, i.e. ``s * batch_size / n_steps`` runs' worth;
* the same held-out set for every method and seed: 64 runs at scrambled Sobol points (seed
  12345), distinct from every sequence a method draws;
* validation every 1/8 of the study: the per-run error on the held-out set (mean over a run's
  time steps) as a function of the runs trained on -- the sample-efficiency curve.

Reports, per problem and method, over seeds: the final per-run error's mean / p95 / p99 / max,
the ratio uniform / method (> 1 is better) with a bootstrap 90 % interval over seeds, and the
budget the method needs to reach uniform's final mean (and max) error: ``fewer`` = full budget /
that budget (AL4PDE's "x fewer simulations"; "> budget" when it never gets there).

Problems: the three recipes (heat2d, burgers1d, allen_cahn1d) and ``burgers1d_shock``
(recipes/burgers1d_shock.yaml): Burgers at Reynolds numbers where shocks form only in a corner
of the box (low viscosity and large amplitude, about 10 % of it), the localised difficulty.

    python benchmarks/sample_efficiency.py                  # every problem, 5 seeds, main methods
    python benchmarks/sample_efficiency.py --ablations      # + ablations on burgers1d_shock
    python benchmarks/sample_efficiency.py --quick          # smoke: 1 problem, tiny settings
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT, save, table

ROOT = Path(__file__).resolve().parent.parent

# problem -> recipe, budget (runs), the recipe's Breed settings (from its _breed recipe)
PROBLEMS: dict[str, dict[str, Any]] = {
    "heat2d": {"recipe": "heat2d", "budget": 128},
    "burgers1d": {"recipe": "burgers1d", "budget": 128},
    "allen_cahn1d": {"recipe": "allen_cahn1d", "budget": 96},
    "burgers1d_shock": {"recipe": "burgers1d_shock", "budget": 384},
}
STATS = ("mean", "p95", "p99", "max")
N_VAL = 64
N_CURVE = 8
# Every steered method gets the same statistics: an update every 10 steps over the last 100.
UPDATE_EVERY, WINDOW = 10, 100


def _sampler(method: str, seed: int) -> tuple[Any, bool]:
    """The sampler of a method and whether it is steered (needs ActiveSampling)."""
    from lightning_online import Breed, ErrorModel, Halton, LossProportional, Uniform

    explore = Halton(seed=seed + 1000)
    breed = {"sigma": 0.1, "start": 0.5, "end": 0.8, "breakpoint": 3}  # the recipes' Breed
    table: dict[str, Callable[[], Any]] = {
        "uniform": lambda: Uniform(seed=seed),
        "halton": lambda: Halton(seed=seed),
        "loss_prop": lambda: LossProportional(seed=seed, non_breed=explore),
        "breed": lambda: Breed(**breed, non_breed=explore, seed=seed),
        "breed_loss": lambda: Breed(**breed, statistic="loss", non_breed=explore, seed=seed),
        "error_model": lambda: ErrorModel(non_breed=explore, seed=seed),
        # ablations
        "em_explore0.1": lambda: ErrorModel(explore=0.1, non_breed=explore, seed=seed),
        "em_explore0.5": lambda: ErrorModel(explore=0.5, non_breed=explore, seed=seed),
        "em_power0.5": lambda: ErrorModel(power=0.5, non_breed=explore, seed=seed),
        "em_power2": lambda: ErrorModel(power=2.0, non_breed=explore, seed=seed),
        "em_beta0": lambda: ErrorModel(beta=0.0, non_breed=explore, seed=seed),
        "breed_sigma0.05": lambda: Breed(**{**breed, "sigma": 0.05}, non_breed=explore, seed=seed),
        "breed_default": lambda: Breed(non_breed=explore, seed=seed),
    }
    if method not in table:
        raise SystemExit(f"unknown method {method!r}; choose from {sorted(table)}")
    return table[method](), method not in ("uniform", "halton")


MAIN = ["uniform", "halton", "loss_prop", "breed", "breed_loss", "error_model"]
ABLATIONS = [
    "em_explore0.1",
    "em_explore0.5",
    "em_power0.5",
    "em_power2",
    "em_beta0",
    "breed_sigma0.05",
    "breed_default",
]


def _curve_recorder(dm: Any, batch_size: int, per_run: int, out: list[dict[str, Any]]) -> Any:
    import lightning.pytorch as pl

    class Recorder(pl.Callback):
        def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if trainer.sanity_checking or dm.val_report is None:
                return
            loss = np.asarray(dm.val_report["loss"], dtype=float)
            out.append(
                {
                    "step": trainer.global_step,
                    "runs_trained": trainer.global_step * batch_size / per_run,
                    "mean": float(np.nanmean(loss)),
                    "max": float(np.nanmax(loss)),
                }
            )

    return Recorder()


def run(problem: str, method: str, seed: int, quick: bool, workdir: Path) -> dict[str, Any]:
    """One study; returns final statistics and the validation curve."""
    from scipy.stats import qmc

    from lightning_online import FIFO, ActiveSampling
    from lightning_online.cli import OnlineCLI

    cfg = PROBLEMS[problem]
    budget = 6 if quick else cfg["budget"]
    args = [
        "--config",
        str(ROOT / "recipes" / f"{cfg['recipe']}.yaml"),
        f"--seed_everything={seed}",
        f"--data.n_simulations={budget}",
        f"--data.val_parameters={3 if quick else 16}",  # replaced below by the held-out set
        f"--trainer.default_root_dir={workdir / f'{problem}-{method}-{seed}'}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.callbacks=[]",
        "--trainer.logger=false",
        "--monitor.plot=false",
        "--monitor.summary=false",
    ]
    cli = OnlineCLI(args=args, run=False)
    dm, trainer = cli.datamodule, cli.trainer
    n_val = 3 if quick else N_VAL
    sobol = qmc.Sobol(dm.space.dim, scramble=True, seed=12345).random(n_val)
    dm.val_parameters = dm._check_val(dm.space.from_unit(sobol))
    per_run = int(np.prod(dm.solver.n_steps)) if hasattr(dm.solver, "n_steps") else 1
    total_steps = budget * per_run // dm.batch_size
    dm.buffer = FIFO(capacity=4000, watermark=4 * dm.batch_size, seed=seed)
    dm.sampler, steered = _sampler(method, seed)
    curve: list[dict[str, Any]] = []
    trainer.callbacks.append(_curve_recorder(dm, dm.batch_size, per_run, curve))
    if steered:
        trainer.callbacks.append(ActiveSampling(update_every_n_steps=UPDATE_EVERY, window=WINDOW))
    trainer.val_check_interval = max(1, total_steps // N_CURVE)
    trainer.fit_loop.epoch_loop.val_check_interval = trainer.val_check_interval
    t0 = time.perf_counter()
    trainer.fit(cli.model, datamodule=dm)
    trainer.validate(cli.model, datamodule=dm, verbose=False)
    loss = np.asarray(dm.val_report["loss"], dtype=float)
    final = {
        "step": trainer.global_step,
        "runs_trained": trainer.global_step * dm.batch_size / per_run,
        "mean": float(loss.mean()),
        "max": float(loss.max()),
    }
    if not curve or curve[-1]["step"] != final["step"]:
        curve.append(final)
    return {
        "mean": float(loss.mean()),
        "p95": float(np.percentile(loss, 95)),
        "p99": float(np.percentile(loss, 99)),
        "max": float(loss.max()),
        "steps": trainer.global_step,
        "completed": dm.stats["completed"],
        "seconds": time.perf_counter() - t0,
        "curve": curve,
        "val_loss": loss.tolist(),
    }


def bootstrap_ratio(
    base: np.ndarray, other: np.ndarray, rng: np.random.Generator, n: int = 4000
) -> tuple[float, float, float]:
    """``mean(base) / mean(other)`` and its bootstrap 90 % interval (seeds resampled)."""
    point = float(base.mean() / other.mean())
    b = base[rng.integers(0, len(base), (n, len(base)))].mean(axis=1)
    o = other[rng.integers(0, len(other), (n, len(other)))].mean(axis=1)
    lo, hi = np.percentile(b / o, [5, 95])
    return point, float(lo), float(hi)


def budget_to_reach(curve: list[dict[str, Any]], target: float, key: str) -> float:
    """Runs trained on when the curve first reaches ``target`` (log-linear interpolation);
    inf if it never does."""
    prev = None
    for point in curve:
        if point[key] <= target:
            if prev is None:
                return float(point["runs_trained"])
            y0, y1 = np.log(prev[key]), np.log(point[key])
            f = 1.0 if y0 == y1 else (y0 - np.log(target)) / (y0 - y1)
            return float(prev["runs_trained"] + f * (point["runs_trained"] - prev["runs_trained"]))
        prev = point
    return float("inf")


def summarise(results: dict[str, dict[str, list[dict[str, Any]]]]) -> tuple[list, dict]:
    rng = np.random.default_rng(0)
    rows, summary = [], {}
    for problem, by_method in results.items():
        uni = by_method.get("uniform")
        if not uni:
            continue
        base = {s: np.array([r[s] for r in uni]) for s in STATS}
        targets = {k: float(np.mean([r["curve"][-1][k] for r in uni])) for k in ("mean", "max")}
        for method, runs in by_method.items():
            vals = {s: np.array([r[s] for r in runs]) for s in STATS}
            ratio = {s: bootstrap_ratio(base[s], vals[s], rng) for s in STATS}
            full = runs[0]["curve"][-1]["runs_trained"]
            fewer = {}
            for k in ("mean", "max"):
                need = np.median([budget_to_reach(r["curve"], targets[k], k) for r in runs])
                fewer[k] = float(full / need) if np.isfinite(need) and need > 0 else 0.0
            summary.setdefault(problem, {})[method] = {
                "mean_over_seeds": {s: float(vals[s].mean()) for s in STATS},
                "ratio_uniform_over_method": {s: ratio[s][0] for s in STATS},
                "ratio_90ci": {s: [ratio[s][1], ratio[s][2]] for s in STATS},
                "fewer_runs_to_uniform_final": fewer,
                "seeds": len(runs),
                "runs": runs,
            }
            rows.append(
                [
                    problem,
                    method,
                    *(float(vals[s].mean()) for s in STATS),
                    *(f"{ratio[s][0]:.2f} ({ratio[s][1]:.2f}-{ratio[s][2]:.2f})" for s in STATS),
                    *(f"{fewer[k]:.2f}" if fewer[k] else "> budget" for k in ("mean", "max")),
                ]
            )
    return rows, summary


def plot(summary: dict[str, Any], out: Path, name: str) -> None:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return
    fig = Figure(figsize=(4.2 * len(summary), 3.4))
    axes = fig.subplots(1, len(summary), squeeze=False)[0]
    for ax, (problem, by_method) in zip(axes, summary.items(), strict=True):
        for method, s in by_method.items():
            curves = [r["curve"] for r in s["runs"]]
            n = min(len(c) for c in curves)
            x = np.array([p["runs_trained"] for p in curves[0][:n]])
            y = np.mean([[p["mean"] for p in c[:n]] for c in curves], axis=0)
            ax.plot(x, y, marker=".", label=method)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("runs trained on (equal steps)")
        ax.set_ylabel("held-out per-run error, mean")
        ax.set_title(problem)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    png = out / f"{name}.png"
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--problems", "--recipes", nargs="+", default=list(PROBLEMS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--methods", nargs="+", default=MAIN)
    p.add_argument("--ablations", action="store_true", help="also the ablations (shock problem)")
    p.add_argument("--quick", action="store_true", help="smoke test: tiny settings")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--name", default=None, help="output file name (default sample_efficiency)")
    a = p.parse_args()
    plan = [(pr, m) for pr in a.problems for m in a.methods]
    if a.ablations:
        plan += [("burgers1d_shock", m) for m in ABLATIONS]
    if a.quick:
        plan = [("burgers1d_shock", m) for m in ("uniform", "error_model")]
        a.seeds = a.seeds[:1]
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in a.seeds:  # seeds outermost: a partial run still compares every method
            for problem, method in plan:
                r = run(problem, method, seed, a.quick, Path(tmp))
                results.setdefault(problem, {}).setdefault(method, []).append(r)
                print(
                    f"{problem:<16} {method:<15} seed {seed}: mean {r['mean']:.3g} "
                    f"max {r['max']:.3g} ({r['steps']} steps, {r['seconds']:.0f} s)",
                    flush=True,
                )
    rows, summary = summarise(results)
    header = [
        "problem",
        "method",
        *STATS,
        *(f"uni/{s} (90% CI)" for s in STATS),
        "fewer runs: mean",
        "max",
    ]
    print(table(rows, header))
    out = a.out or OUT
    name = a.name or ("sample_efficiency" + ("_quick" if a.quick else ""))
    print(f"wrote {save(name, summary, out)}")
    plot(summary, out, name)


if __name__ == "__main__":
    main()
