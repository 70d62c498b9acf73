"""Sample efficiency, the headline: the same solver budget, several ways of choosing the runs.

For each problem, seed and method, one online study is trained from its recipe with:

* the same budget of completed runs and the same number of training steps for every method: a
  FIFO buffer serves every sample exactly once, so after ``s`` steps every method has trained
  on ``s * batch_size`` samples, i.e. ``s * batch_size / n_steps`` runs' worth;
* the recipe's model with its learning rate decayed along a cosine to 1/100 over the study
  (``lr_decay_steps``), so that the final model is not one noisy iterate of constant-rate Adam;
* the same held-out set for every method and seed: 64 runs at scrambled Sobol points (seed
  12345), distinct from every sequence a method draws;
* validation every 1/8 of the study (the error during the study, shown in the plot).

Reports, per problem and method, over seeds: the final per-run error's mean / p95 / p99 / max
and the ratio uniform / method (> 1 is better) with a bootstrap 90 % interval over seeds.
With ``--fractions 0.25 0.5`` the methods of ``--curve-methods`` also run whole studies at
those fractions of the budget: the sample-efficiency curve (final error against budget) and
the budget each method needs to reach uniform's error at the full budget, as "x fewer runs"
(AL4PDE's "x fewer simulations"; log-log interpolation; "> 1/f" when even the smallest
fraction f beats it, "< 1" when it needs more than the full budget).

Problems: the three recipes (heat2d, burgers1d, allen_cahn1d) and ``burgers1d_shock``
(recipes/burgers1d_shock.yaml): Burgers at Reynolds numbers where shocks form only in a corner
of the box (low viscosity and large amplitude, about 10 % of it), the localised difficulty.

    python benchmarks/sample_efficiency.py                  # every problem, 5 seeds, main methods
    python benchmarks/sample_efficiency.py --ablations      # + ablations on burgers1d_shock
    python benchmarks/sample_efficiency.py --quick          # smoke: 1 problem, tiny settings
"""

from __future__ import annotations

import argparse
import itertools
import json
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
        # Breed's original statistic, and the loss (the default since the benchmark said so)
        "breed": lambda: Breed(**breed, statistic="loss_decrease", non_breed=explore, seed=seed),
        "breed_loss": lambda: Breed(**breed, statistic="loss", non_breed=explore, seed=seed),
        "error_model": lambda: ErrorModel(non_breed=explore, seed=seed),
        # ablations
        "em_explore0.1": lambda: ErrorModel(explore=0.1, non_breed=explore, seed=seed),
        "em_explore0.5": lambda: ErrorModel(explore=0.5, non_breed=explore, seed=seed),
        "em_power0.5": lambda: ErrorModel(power=0.5, non_breed=explore, seed=seed),
        "em_power2": lambda: ErrorModel(power=2.0, non_breed=explore, seed=seed),
        "em_beta0": lambda: ErrorModel(beta=0.0, non_breed=explore, seed=seed),
        "breed_sigma0.05": lambda: Breed(**{**breed, "sigma": 0.05}, non_breed=explore, seed=seed),
        # Breed's constructor defaults before statistic="loss" became the default
        "breed_default": lambda: Breed(statistic="loss_decrease", non_breed=explore, seed=seed),
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


def run(
    problem: str,
    method: str,
    seed: int,
    quick: bool,
    workdir: Path,
    fraction: float = 1.0,
    sampler_seed: int | None = None,
) -> dict[str, Any]:
    """One study; returns final statistics and the validation curve."""
    from scipy.stats import qmc

    from lightning_online import FIFO, ActiveSampling
    from lightning_online.cli import OnlineCLI

    cfg = PROBLEMS[problem]
    budget = 6 if quick else max(4, round(fraction * cfg["budget"]))
    args = [
        "--config",
        str(ROOT / "recipes" / f"{cfg['recipe']}.yaml"),
        f"--seed_everything={seed}",
        f"--data.n_simulations={budget}",
        f"--data.val_parameters={3 if quick else 16}",  # replaced below by the held-out set
        f"--trainer.default_root_dir={workdir / f'{problem}-{method}-{seed}-{budget}'}",
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
    per_run = int(getattr(dm.solver, "n_steps", 1))
    total_steps = budget * per_run // dm.batch_size
    cli.model.lr_decay_steps = total_steps
    # --sampler-seed: the same runs (sampler and buffer) whatever the model's seed
    data_seed = seed if sampler_seed is None else sampler_seed
    dm.buffer = FIFO(capacity=4000, watermark=4 * dm.batch_size, seed=data_seed)
    dm.sampler, steered = _sampler(method, data_seed)
    curve: list[dict[str, Any]] = []
    trainer.callbacks.append(_curve_recorder(dm, dm.batch_size, per_run, curve))
    if steered:
        trainer.callbacks.append(ActiveSampling(update_every_n_steps=UPDATE_EVERY, window=WINDOW))
    trainer.val_check_interval = max(1, total_steps // N_CURVE)
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
        "budget": budget,
        "seed": seed,
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


def budget_to_reach(points: list[tuple[float, float]], target: float) -> float:
    """Budget at which the final error against budget, ``(budget, error)`` sorted by budget,
    reaches ``target`` (log-log interpolation); 0 if the smallest budget already does, inf if
    the largest does not."""
    if points[0][1] <= target:
        return 0.0
    for (b0, e0), (b1, e1) in itertools.pairwise(points):
        if e1 <= target:
            f = (np.log(e0) - np.log(target)) / (np.log(e0) - np.log(e1))
            return float(np.exp(np.log(b0) + f * (np.log(b1) - np.log(b0))))
    return float("inf")


def summarise(
    results: dict[str, dict[str, list[dict[str, Any]]]],
    curves: dict[str, dict[str, dict[int, list[dict[str, Any]]]]],
) -> tuple[list, dict]:
    rng = np.random.default_rng(0)
    rows, summary = [], {}
    for problem, by_method in results.items():
        uni = by_method.get("uniform")
        if not uni:  # e.g. ablations run alone: keep the runs for --merge
            summary[problem] = {m: {"runs": runs} for m, runs in by_method.items()}
            continue
        base = {s: np.array([r[s] for r in uni]) for s in STATS}
        for method, runs in by_method.items():
            vals = {s: np.array([r[s] for r in runs]) for s in STATS}
            ratio = {s: bootstrap_ratio(base[s], vals[s], rng) for s in STATS}
            entry: dict[str, Any] = {
                "mean_over_seeds": {s: float(vals[s].mean()) for s in STATS},
                "ratio_uniform_over_method": {s: ratio[s][0] for s in STATS},
                "ratio_90ci": {s: [ratio[s][1], ratio[s][2]] for s in STATS},
                "seeds": len(runs),
                "runs": runs,
            }
            fewer_cells = ["", ""]
            by_budget = curves.get(problem, {}).get(method, {})
            if len(by_budget) > 1:
                budgets = sorted(by_budget)
                full = budgets[-1]
                entry["budget_curve"] = {
                    k: [(b, float(np.mean([r[k] for r in by_budget[b]]))) for b in budgets]
                    for k in ("mean", "max")
                }
                fewer = {}
                for i, k in enumerate(("mean", "max")):
                    need = budget_to_reach(entry["budget_curve"][k], float(base[k].mean()))
                    fewer[k] = full / need if need > 0 else float("inf")
                    if need == 0:
                        fewer_cells[i] = f"> {full / budgets[0]:.0f}"
                    elif not np.isfinite(need):
                        fewer_cells[i] = "< 1"
                    else:
                        fewer_cells[i] = f"{fewer[k]:.2f}"
                entry["fewer_runs_to_uniform_final"] = fewer
            summary.setdefault(problem, {})[method] = entry
            rows.append(
                [
                    problem,
                    method,
                    *(float(vals[s].mean()) for s in STATS),
                    *(f"{ratio[s][0]:.2f} ({ratio[s][1]:.2f}-{ratio[s][2]:.2f})" for s in STATS),
                    *fewer_cells,
                ]
            )
    return rows, summary


def plot(summary: dict[str, Any], out: Path, name: str) -> None:
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import NullFormatter
    except ImportError:
        return

    def log_axes(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)

    budgets = any("budget_curve" in s for by in summary.values() for s in by.values())
    fig = Figure(figsize=(4.2 * len(summary), 6.8 if budgets else 3.6))
    grid = fig.subplots(2 if budgets else 1, len(summary), squeeze=False)
    for ax, (problem, by_method) in zip(grid[-1] if budgets else [], summary.items(), strict=False):
        for method, s in by_method.items():
            if "budget_curve" in s:
                b, e = zip(*s["budget_curve"]["mean"], strict=True)
                ax.plot(b, e, marker="o", label=method)
        log_axes(
            ax,
            "solver budget (runs), a whole study each",
            "final held-out error, mean",
            f"{problem}: sample efficiency",
        )
        if ax.lines:
            ax.legend(fontsize=7)
    axes = grid[0]
    for ax, (problem, by_method) in zip(axes, summary.items(), strict=True):
        for method, s in by_method.items():
            curves = [r["curve"] for r in s["runs"]]
            n = min(len(c) for c in curves)
            x = np.array([p["runs_trained"] for p in curves[0][:n]])
            y = np.mean([[p["mean"] for p in c[:n]] for c in curves], axis=0)
            ax.plot(x, y, marker=".", label=method)
        log_axes(
            ax,
            "runs trained on (equal steps)",
            "held-out per-run error, mean",
            f"{problem}: during the study",
        )
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{name}.png"
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--problems", "--recipes", nargs="+", default=list(PROBLEMS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--methods", nargs="+", default=MAIN)
    p.add_argument("--ablations", action="store_true", help="also the ablations (shock problem)")
    p.add_argument(
        "--fractions",
        type=float,
        nargs="*",
        default=[],
        help="also whole studies at these fractions of the budget (sample-efficiency curve)",
    )
    p.add_argument("--curve-methods", nargs="+", default=["uniform", "halton", "error_model"])
    p.add_argument("--quick", action="store_true", help="smoke test: tiny settings")
    p.add_argument(
        "--sampler-seed",
        type=int,
        default=None,
        help="fix the sampler's and buffer's seed (the same runs); --seeds then vary only the "
        "model's initialisation and training (Allen-Cahn's bimodality)",
    )
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="no new studies: the table of these earlier outputs together (e.g. ablations "
        "run on their own against the uniform runs of the main output), on --seeds",
    )
    p.add_argument("--plot-only", type=Path, default=None, help="redraw the figure of an output")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--name", default=None, help="output file name (default sample_efficiency)")
    a = p.parse_args()
    if a.plot_only:
        plot(json.loads(a.plot_only.read_text()), a.out or OUT, a.name or a.plot_only.stem)
        return
    plan = [(pr, m, 1.0) for pr in a.problems for m in a.methods]
    if a.ablations:
        plan += [("burgers1d_shock", m, 1.0) for m in ABLATIONS]
    plan += [
        (pr, m, f) for f in a.fractions for pr in a.problems for m in a.curve_methods if f != 1.0
    ]
    if a.quick:
        plan = [("burgers1d_shock", m, 1.0) for m in ("uniform", "error_model")]
        a.seeds = a.seeds[:1]
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    curves: dict[str, dict[str, dict[int, list[dict[str, Any]]]]] = {}
    if a.merge:
        plan = []
        for path in a.merge:
            for problem, by_method in json.loads(path.read_text()).items():
                for method, entry in by_method.items():
                    runs = [{**r, "seed": r.get("seed", i)} for i, r in enumerate(entry["runs"])]
                    keep = [r for r in runs if r["seed"] in a.seeds]
                    results.setdefault(problem, {}).setdefault(method, []).extend(keep)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in a.seeds:  # seeds outermost: a partial run still compares every method
            for problem, method, fraction in plan:
                r = run(problem, method, seed, a.quick, Path(tmp), fraction, a.sampler_seed)
                if fraction == 1.0:
                    results.setdefault(problem, {}).setdefault(method, []).append(r)
                by_budget = curves.setdefault(problem, {}).setdefault(method, {})
                by_budget.setdefault(r["budget"], []).append(r)
                print(
                    f"{problem:<16} {method:<15} seed {seed} budget {r['budget']}: "
                    f"mean {r['mean']:.3g} max {r['max']:.3g} "
                    f"({r['steps']} steps, {r['seconds']:.0f} s)",
                    flush=True,
                )
    rows, summary = summarise(results, curves)
    header = [
        "problem",
        "method",
        *STATS,
        *(f"uni/{s} (90% CI)" for s in STATS),
        "x fewer runs: mean",
        "max",
    ]
    print(table(rows, header))
    out = a.out or OUT
    name = a.name or ("sample_efficiency" + ("_quick" if a.quick else ""))
    print(f"wrote {save(name, summary, out)}")
    plot(summary, out, name)


if __name__ == "__main__":
    main()
