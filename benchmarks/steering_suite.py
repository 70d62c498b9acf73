"""The steering suite: samplers against an oracle on eight problems, three of them solved by
third-party solvers (py-pde, scikit-fem), in both regimes (each sample served once / re-served).

What runs. The package's own samplers (``Uniform``, ``Halton``, ``ErrorModel``, ``Breed``),
fed with the statistics ``ActiveSampling`` computes (per run, over the last ``WINDOW`` steps:
mean per-sample loss, its decrease, samples seen; an update every ``UPDATE_EVERY`` steps), in
an **in-process** online loop: no MPI, no solver processes, no Lightning (what 2 shared cores
allow for hundreds of studies; the full stack is measured by ``sample_efficiency.py``). The
loop keeps the online structure: a run is drawn when the buffer needs it (4 runs ahead), its
samples enter the buffer, training steps take random batches from it, the statistics reach the
sampler during the study.

* Pool-based (AL4PDE's setting): every problem is solved once on a pool of ``POOL`` scrambled
  Sobol points of its unit box (cached under ``$LO_BENCH_CACHE``, default
  ``/tmp/lo_bench_cache``); a drawn parameter is snapped to the nearest pool point not used
  yet (the same for every method). Held out: ``N_VAL`` Sobol points of another scramble
  (seed 12345), solved the same way, never in a pool, never drawn.
* Surrogate: the Melissa heat-pde layout, an MLP ``(theta, t) -> field`` (three hidden layers
  of 128, SiLU), Adam 2e-3 decayed along a cosine to 1/100 over the study.
* Regimes: ``fifo``: every sample served once (batch 16; ``budget * T / 16`` steps), the
  error bounded by training; ``reservoir``: runs arrive over the first half of ``STEPS``
  steps, batches drawn from everything received (samples re-served until convergence).
* Methods: ``uniform``, ``halton``, ``error_model`` (``ErrorModel(seed=s)``, the recommended
  one-liner), ``breed`` (``Breed(seed=s)`` with Halton exploration) and ``oracle``: RAD's
  density (error / mean error + 1, Wu et al.) over the pool, on the dense error map of
  reference studies (uniform, the same budget and regime, two seeds not in the study, error
  on every pool point, smoothed over the 5 nearest): the hard region known before the study.
* Reported per problem, regime and method, over seeds: the held-out per-run error's mean / p95
  / max of the online model and of a **fixed refit** (a fresh model, the same initialisation
  for every method, trained ``REFIT_STEPS`` steps on the study's completed runs: it tells
  where the runs were drawn from the noise of online training); ratios (better of
  uniform/Halton) / method as the median over seeds, with a bootstrap 90 % interval (seeds
  resampled, paired); the oracle's headroom; the share of the oracle's log-gain a method
  captures; the share of runs in the hard region (the top 20 % of the reference error map).

    python benchmarks/steering_suite.py --quick                    # smoke, < 1 min
    python benchmarks/steering_suite.py --problems box6d smooth --regimes reservoir
    python benchmarks/steering_suite.py --budgets 50 100 200 400 --methods uniform halton error_model
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT, save, table

POOL, N_VAL, T_OUT = 1024, 128, 10
STEPS = 1000  # reservoir regime: training steps per study
REFIT_STEPS = 1000
UPDATE_EVERY, WINDOW = 50, 100
AHEAD = 4  # runs drawn ahead of the buffer's need (runs in flight)
STATS = ("mean", "p95", "max")
CACHE = Path(os.environ.get("LO_BENCH_CACHE", "/tmp/lo_bench_cache"))


# ----------------------------------------------------------------------------- problems
def _burgers(unit: np.ndarray) -> np.ndarray:
    from lightning_online.solvers import Burgers1D

    s = Burgers1D(nx=128, n_steps=50, t_end=2.0)
    nu = 10 ** (-3 + 3 * unit[0])
    theta = np.array([nu, 0.05 + 0.95 * unit[1], -0.1 + 0.2 * unit[2], 2 * np.pi * unit[3]])
    traj = s.simulate(s.initial_condition(theta), nu)[5::5]  # 10 frames
    return traj.reshape(T_OUT, 64, 2).mean(axis=2)


def _allen_cahn(unit: np.ndarray) -> np.ndarray:
    from lightning_online.solvers import AllenCahn1D

    s = AllenCahn1D(nx=256, n_steps=100, t_end=1.0)
    d = 10 ** (-4 + 2 * unit[0])
    theta = np.array([d, 0.5 + unit[1], -0.25 + 0.5 * unit[2]])
    traj = s.simulate(s.initial_condition(theta), d)[10::10]
    return traj.reshape(T_OUT, 64, 4).mean(axis=2)


def _thirdparty(name: str) -> Callable[[np.ndarray], np.ndarray]:
    def solve(unit: np.ndarray) -> np.ndarray:
        from lightning_online.solvers import thirdparty

        solver = getattr(thirdparty, name)()
        low, high, *_ = solver.space()
        return solver.trajectory(np.asarray(low) + unit * (np.asarray(high) - np.asarray(low)))

    return solve


_X = (np.arange(64) + 0.5) / 64


def _box6d(unit: np.ndarray) -> np.ndarray:
    """6 parameters, 2 that matter: a travelling wave inside a disc of radius 0.22 in
    (u0, u1) (15 % of the box), whose wavenumber and phase vary with them; u2 shifts the
    smooth part a little; u3-u5 do nothing."""
    t = np.arange(1, T_OUT + 1)[:, None] / T_OUT
    r = np.hypot(unit[0] - 0.7, unit[1] - 0.7)
    inside = np.clip(1.0 - r / 0.22, 0.0, 1.0)
    smooth = np.exp(-t) * np.sin(2 * np.pi * _X + 0.3 * unit[2])
    wave = inside * np.sin(2 * np.pi * (2 + 2 * unit[0]) * (_X - 0.3 * t) + 4 * unit[1])
    return smooth + wave


def _box6d_fast(unit: np.ndarray) -> np.ndarray:
    """The first box6d: a fast ripple (6-16 periods) in a disc of radius 0.25 that the MLP
    does not learn at this budget and training whatever the runs: a case with no headroom."""
    t = np.arange(1, T_OUT + 1)[:, None] / T_OUT
    r = np.hypot(unit[0] - 0.7, unit[1] - 0.7)
    inside = np.clip(1.0 - r / 0.25, 0.0, 1.0)
    smooth = np.exp(-t) * np.sin(2 * np.pi * _X + 0.3 * unit[2])
    ripple = inside * np.sin(2 * np.pi * (6 + 10 * unit[0]) * (_X - 0.2 * t) + 6 * unit[1])
    return smooth + ripple


def _smooth(unit: np.ndarray) -> np.ndarray:
    """Meant as the case without headroom (a decaying, shifted wave, every parameter about
    as easy); the MLP's error is still larger near the edges of the box."""
    t = np.arange(1, T_OUT + 1)[:, None] / T_OUT
    return np.exp(-(0.5 + unit[0]) * t) * np.sin(2 * np.pi * (_X + 0.25 * unit[1]))


PROBLEMS: dict[str, tuple[int, Callable[[np.ndarray], np.ndarray], str]] = {
    "burgers_shock": (4, _burgers, "package (numpy finite volumes)"),
    "allen_cahn": (3, _allen_cahn, "package (numpy ETDRK4)"),
    "gray_scott": (2, _thirdparty("GrayScott1D"), "py-pde"),
    "brusselator": (2, _thirdparty("Brusselator1D"), "py-pde"),
    "heat_channel": (2, _thirdparty("HeatChannel2D"), "scikit-fem"),
    "box6d": (6, _box6d, "analytic"),
    "box6d_fast": (6, _box6d_fast, "analytic"),
    "smooth": (2, _smooth, "analytic"),
}


def _solve_set(problem: str, unit: np.ndarray) -> np.ndarray:
    import inspect

    _, fn, _ = PROBLEMS[problem]  # the cache follows the points and the problem's code
    key = hashlib.sha1(unit.tobytes() + inspect.getsource(fn).encode()).hexdigest()[:12]
    path = CACHE / f"{problem}-{len(unit)}-{key}.npy"
    if path.exists():
        return np.load(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = np.stack([fn(u) for u in unit]).astype(np.float32)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


def load(problem: str, pool: int | None = None, n_val: int | None = None) -> dict[str, np.ndarray]:
    from scipy.stats import qmc

    pool, n_val = pool or POOL, n_val or N_VAL

    dim = PROBLEMS[problem][0]
    pool_u = qmc.Sobol(dim, scramble=True, seed=1).random(pool)
    val_u = qmc.Sobol(dim, scramble=True, seed=12345).random(n_val)
    pf, vf = _solve_set(problem, pool_u), _solve_set(problem, val_u)
    mu, sd = float(pf.mean()), float(pf.std()) or 1.0
    return {"pool": pool_u, "pool_y": (pf - mu) / sd, "val": val_u, "val_y": (vf - mu) / sd}


# ----------------------------------------------------------------------------- training
def _mlp(dim: int, n: int, seed: int) -> Any:
    import torch

    torch.manual_seed(seed)
    act = torch.nn.SiLU
    return torch.nn.Sequential(
        torch.nn.Linear(dim + 1, 128), act(), torch.nn.Linear(128, 128), act(),
        torch.nn.Linear(128, 128), act(), torch.nn.Linear(128, n),
    )  # fmt: skip


class Trainer:
    """Adam with a cosine decay to 1/100 over ``total`` steps; per-sample losses returned."""

    def __init__(self, dim: int, n: int, seed: int, total: int) -> None:
        import torch

        self.torch = torch
        self.net = _mlp(dim, n, seed)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=2e-3)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: 0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * min(s, total) / total))
        )

    def step(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        torch = self.torch
        pred = self.net(torch.from_numpy(x))
        per = ((pred - torch.from_numpy(y)) ** 2).mean(dim=1)
        self.opt.zero_grad()
        per.mean().backward()
        self.opt.step()
        self.sched.step()
        return per.detach().numpy()

    def errors(self, unit: np.ndarray, fields: np.ndarray) -> np.ndarray:
        """Per-run mean squared error over its frames and field."""
        x, y = _samples(unit, fields)
        with self.torch.no_grad():
            pred = self.net(self.torch.from_numpy(x)).numpy()
        return ((pred - y) ** 2).reshape(len(unit), -1).mean(axis=1)


def _samples(unit: np.ndarray, fields: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(1, fields.shape[1] + 1) / fields.shape[1]
    th = np.repeat(unit, fields.shape[1], axis=0)
    x = np.hstack([th, np.tile(t, len(unit))[:, None]]).astype(np.float32)
    return x, fields.reshape(-1, fields.shape[2]).astype(np.float32)


# ----------------------------------------------------------------------------- the study
def _sampler(method: str, seed: int) -> tuple[Any, bool]:
    from lightning_online import Breed, ErrorModel, Halton, Uniform

    if method == "uniform":
        return Uniform(seed=seed), False
    if method == "halton":
        return Halton(seed=seed), False
    if method in ("error_model", "error_model_snapped"):
        return ErrorModel(seed=seed), True
    if method in ("em_drawn", "em_fresh"):  # the drawn parameters in its statistics
        return ErrorModel(seed=seed), True
    if method == "breed":
        return Breed(seed=seed, non_breed=Halton(seed=seed + 1000)), True
    if method.startswith("em_"):  # em_<key><value>[+<key><value>...], e.g. em_power0.5+min_snr0
        kw: dict[str, Any] = {}
        keys = ("min_runs", "min_snr", "explore", "power", "beta")
        for part in method[3:].split("+"):
            if part == "selfcheck":
                kw["self_check"] = True
                continue
            key = next((k for k in keys if part.startswith(k)), None)
            if key is None:
                raise SystemExit(f"unknown method {method!r}")
            value = float(part[len(key) :])
            kw[key] = int(value) if key == "min_runs" else value
        return ErrorModel(seed=seed, **kw), True
    raise SystemExit(f"unknown method {method!r}")


def study(
    data: dict[str, np.ndarray],
    method: str,
    seed: int,
    budget: int,
    regime: str,
    density: np.ndarray | None = None,
) -> dict[str, Any]:
    """One online study; returns the final and refit per-run held-out errors and the runs.

    The statistics report each run at the parameters that were drawn for it, as the DataModule
    does (its data are its pool point's, at most the snapping distance away);
    ``error_model_snapped`` reports the pool point instead (how the first suite ran).
    """
    drawn_stats = method not in ("error_model_snapped",)
    fresh = method == "em_fresh"
    from scipy.spatial import cKDTree

    from lightning_online import ParameterSpace
    from lightning_online.sampling.steering import SimulationStats

    pool, pool_y = data["pool"], data["pool_y"]
    dim, n_out, n_field = pool.shape[1], pool_y.shape[1], pool_y.shape[2]
    rng = np.random.default_rng(seed)
    space = ParameterSpace([0.0] * dim, [1.0] * dim)
    sampler, steered = (None, False) if method == "oracle" else _sampler(method, seed)
    tree = cKDTree(pool)
    used = np.zeros(len(pool), dtype=bool)
    runs: list[int] = []
    # the parameters a run reports (what the DataModule hands ActiveSampling: the drawn ones)
    reported = pool.copy() if drawn_stats else pool

    def launch() -> None:
        if method == "oracle":
            assert density is not None
            p = np.where(used, 0.0, density)
            idx = int(rng.choice(len(pool), p=p / p.sum()))
        else:
            theta = sampler.draw(space, 1)[0]
            k = min(len(pool), 64)
            while True:
                _, cand = tree.query(theta, k=k)
                free = [int(c) for c in np.atleast_1d(cand) if not used[c]]
                if free or k == len(pool):
                    break
                k = min(len(pool), 4 * k)
            idx = free[0] if free else int(rng.choice(np.flatnonzero(~used)))
            if drawn_stats:
                reported[idx] = theta
        used[idx] = True
        runs.append(idx)

    if regime == "fifo":
        batch = 16
        total = budget * n_out // batch
    else:
        batch = 32
        total = STEPS
    trainer = Trainer(dim, n_field, seed, total)
    window: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=WINDOW)
    served = np.zeros(budget * n_out, dtype=bool)  # em_fresh: sample ids served before
    fresh_sum, fresh_n = np.zeros(len(pool)), np.zeros(len(pool), dtype=np.int64)
    level: float | None = None  # em_fresh: running mean log loss of the batches
    unserved: list[int] = []  # fifo: sample ids (run position * n_out + frame)
    t0 = time.perf_counter()
    for step in range(total):
        if regime == "fifo":
            while len(unserved) < (AHEAD + 1) * n_out and len(runs) < budget:
                launch()
                unserved.extend(range((len(runs) - 1) * n_out, len(runs) * n_out))
            if not unserved:
                break
            pick = rng.choice(len(unserved), size=min(batch, len(unserved)), replace=False)
            ids = np.array([unserved[i] for i in pick])
            for i in sorted(pick, reverse=True):
                unserved[i] = unserved[-1]
                unserved.pop()
        else:
            due = min(budget, AHEAD + int(np.ceil((step + 1) * budget / (total // 2))))
            while len(runs) < due:
                launch()
            ids = rng.integers(0, len(runs) * n_out, size=batch)
        r_pos, frame = ids // n_out, ids % n_out
        pidx = np.asarray(runs)[r_pos]
        t = ((frame + 1) / n_out)[:, None]
        x = np.hstack([pool[pidx], t]).astype(np.float32)
        per = trainer.step(x, pool_y[pidx, frame])
        if steered and fresh:
            log_per = np.log(np.maximum(per, 1e-30))
            level = float(log_per.mean()) if level is None else 0.9 * level + 0.1 * log_per.mean()
            new = ~served[ids]
            served[ids] = True
            np.add.at(fresh_sum, pidx[new], log_per[new] - level)
            np.add.at(fresh_n, pidx[new], 1)
            if (step + 1) % UPDATE_EVERY == 0:
                seen = np.flatnonzero(fresh_n)
                sampler.update(
                    SimulationStats(
                        parameters=reported[seen],
                        loss=np.exp(fresh_sum[seen] / fresh_n[seen]),
                        loss_decrease=np.zeros(len(seen)),
                        n_observed=fresh_n[seen],
                    )
                )
        elif steered:
            window.append((pidx, per))
            if (step + 1) % UPDATE_EVERY == 0:
                sampler.update(_stats(window, reported, SimulationStats))
    seconds = time.perf_counter() - t0
    online = trainer.errors(data["val"], data["val_y"])
    # the fixed refit: the same initialisation and steps for every method
    refit = Trainer(dim, n_field, 0, REFIT_STEPS)
    x_all, y_all = _samples(pool[runs], pool_y[runs])
    rr = np.random.default_rng(0)
    for _ in range(REFIT_STEPS):
        i = rr.integers(0, len(x_all), size=64)
        refit.step(x_all[i], y_all[i])
    return {
        "seed": seed,
        "online": online.tolist(),
        "refit": refit.errors(data["val"], data["val_y"]).tolist(),
        "runs": runs,
        "steps": total,
        "seconds": seconds,
        "headroom": getattr(sampler, "headroom", None),  # ErrorModel's last (ratio, snr)
        "_trainer": trainer,
    }


def _stats(window: deque, pool: np.ndarray, cls: Any) -> Any:
    """What ActiveSampling hands the sampler: per run over the window, mean loss, first-half
    minus second-half mean, samples seen."""
    ids = np.concatenate([w[0] for w in window])
    loss = np.concatenate([w[1] for w in window])
    half = np.concatenate([np.full(len(w[0]), i < len(window) // 2) for i, w in enumerate(window)])
    runs, inv = np.unique(ids, return_inverse=True)
    n = np.bincount(inv)
    mean = np.bincount(inv, loss) / n
    n1, n2 = (
        np.bincount(inv[half], minlength=len(runs)),
        np.bincount(inv[~half], minlength=len(runs)),
    )
    s1 = np.bincount(inv[half], loss[half], minlength=len(runs))
    s2 = np.bincount(inv[~half], loss[~half], minlength=len(runs))
    with np.errstate(invalid="ignore", divide="ignore"):
        dec = np.where((n1 > 0) & (n2 > 0), s1 / np.maximum(n1, 1) - s2 / np.maximum(n2, 1), 0.0)
    return cls(parameters=pool[runs], loss=mean, loss_decrease=dec, n_observed=n)


def reference_density(
    data: dict[str, np.ndarray], budget: int, regime: str, seeds: tuple[int, ...] = (900, 901)
) -> tuple[np.ndarray, np.ndarray]:
    """The oracle's knowledge: the error map over the pool of uniform studies at the same
    budget and regime (seeds not in the study), smoothed over the 5 nearest pool points; and
    RAD's density on it."""
    from scipy.spatial import cKDTree

    maps = []
    for s in seeds:
        r = study(data, "uniform", s, budget, regime)
        maps.append(r["_trainer"].errors(data["pool"], data["pool_y"]))
    err = np.mean(maps, axis=0)
    _, nb = cKDTree(data["pool"]).query(data["pool"], k=5)
    err = err[nb].mean(axis=1)
    return err, err / err.mean() + 1.0


# ----------------------------------------------------------------------------- summary
def _stat(errs: np.ndarray, s: str) -> float:
    return float({"mean": np.mean, "p95": lambda e: np.percentile(e, 95), "max": np.max}[s](errs))


def _hard_share(r: dict[str, Any], hard: np.ndarray) -> float:
    """Share of a study's runs in the hard region (stored as is in compacted outputs)."""
    return float(np.mean(hard[r["runs"]])) if "runs" in r else float(r["hard_share"])


def compact(res: dict[str, Any]) -> dict[str, Any]:
    """The outputs kept in docs/benchmarks: per study the held-out errors to 3 digits and the
    hard-region share instead of the run list (``--merge`` reads either)."""
    out: dict[str, Any] = {}
    for key, by in res.items():
        hard = np.asarray(by.get("_hard", []), dtype=bool)
        out[key] = {"_hard": hard.tolist()} if len(hard) else {}
        for m, runs in by.items():
            if m == "_hard":
                continue
            out[key][m] = [
                {
                    "seed": r["seed"],
                    "online": [float(f"{v:.3g}") for v in r["online"]],
                    "refit": [float(f"{v:.3g}") for v in r["refit"]],
                    "hard_share": _hard_share(r, hard) if len(hard) else None,
                    "seconds": round(r["seconds"], 1),
                    "headroom": r.get("headroom"),
                }
                for r in runs
            ]
    return out


def summarise(res: dict[str, Any]) -> tuple[list[list[Any]], dict[str, Any]]:
    """Per problem/regime/budget: medians over seeds, ratios with bootstrap intervals."""
    rng = np.random.default_rng(0)
    rows, out = [], {}
    for key, by_method in res.items():
        if "uniform" not in by_method or "halton" not in by_method:
            continue
        entry: dict[str, Any] = {}
        hard = by_method.get("_hard")
        for kind in ("online", "refit"):
            per = {
                m: {s: np.array([_stat(np.array(r[kind]), s) for r in runs]) for s in STATS}
                for m, runs in by_method.items()
                if not m.startswith("_")
            }
            med = {m: {s: float(np.median(v[s])) for s in STATS} for m, v in per.items()}
            best = {s: min(med["uniform"][s], med["halton"][s]) for s in STATS}
            best_name = {
                s: "uniform" if med["uniform"][s] <= med["halton"][s] else "halton" for s in STATS
            }
            for m, v in per.items():
                e: dict[str, Any] = {"median": med[m]}
                for s in STATS:
                    base = per[best_name[s]][s]
                    n = min(len(base), len(v[s]))
                    ratio = best[s] / med[m][s]
                    idx = rng.integers(0, n, (2000, n))
                    boot = np.median(base[:n][idx], axis=1) / np.median(v[s][:n][idx], axis=1)
                    e[f"best_over_{s}"] = [ratio, *np.percentile(boot, [5, 95]).tolist()]
                    e[f"uni_over_{s}"] = med["uniform"][s] / med[m][s]
                    if "oracle" in med:
                        g_or = np.log(med["uniform"][s] / med["oracle"][s])
                        e[f"share_{s}"] = (
                            float(np.log(e[f"uni_over_{s}"]) / g_or) if g_or > 0 else None
                        )
                if hard is not None:
                    e["hard_share"] = float(
                        np.mean([_hard_share(r, np.asarray(hard)) for r in by_method[m]])
                    )
                e["seeds"] = len(v["mean"])
                hr = [r["headroom"] for r in by_method[m] if r.get("headroom")]
                if hr:  # ErrorModel's own estimate at the end of the study (median)
                    e["headroom_estimate"] = np.median(np.array(hr), axis=0).tolist()
                entry.setdefault(kind, {})[m] = e
                if kind == "online" or m in ("oracle", "error_model"):
                    rows.append(
                        [key, kind, m, len(v["mean"]),
                         *(f"{e[f'best_over_{s}'][0]:.2f} ({e[f'best_over_{s}'][1]:.2f}-{e[f'best_over_{s}'][2]:.2f})" for s in STATS),
                         *(f"{e[f'uni_over_{s}']:.2f}" for s in STATS),
                         *(("-" if e.get(f"share_{s}") is None else f"{e[f'share_{s}']:.2f}") for s in ("mean", "max")),
                         f"{e.get('hard_share', float('nan')):.2f}"]
                    )  # fmt: skip
        out[key] = entry
    return rows, out


def _cell(e: dict[str, Any], s: str) -> str:
    r, lo, hi = e[f"best_over_{s}"]
    return f"{r:.2f} ({lo:.2f}-{hi:.2f})"


def _method_order(m: str) -> tuple[int, str]:
    return (0 if m == "error_model" else 1, m)


def markdown(summary: dict[str, Any]) -> str:
    """One row per problem/regime/budget and steered method: the oracle's headroom, the method
    (online and refit) against the better of uniform/Halton, its log-gain share, hard shares."""
    lines = [
        "| problem / regime / budget | method | oracle's headroom, uniform / oracle: mean / p95 / max "
        "| online: better of uniform, Halton / method: mean / p95 / max "
        "| refit: the same | uniform / method (online): mean / p95 / max "
        "| share of the oracle's log-gain: mean / p95 / max "
        "| runs in the hard region: uniform / method / oracle |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, entry in summary.items():
        on, rf = entry["online"], entry.get("refit", {})
        for m in sorted(set(on) - {"uniform", "halton", "oracle"}, key=_method_order):
            em = on[m]
            orc = on.get("oracle")
            head = " / ".join(f"{orc[f'uni_over_{s}']:.2f}" for s in STATS) if orc else "-"
            steer = " / ".join(_cell(em, s) for s in STATS)
            refit = " / ".join(_cell(rf[m], s) for s in STATS) if m in rf else "-"
            uni = " / ".join(f"{em[f'uni_over_{s}']:.2f}" for s in STATS)
            share = " / ".join(
                "-" if em.get(f"share_{s}") is None else f"{em[f'share_{s}']:.2f}" for s in STATS
            )
            hard = " / ".join(
                f"{on[x].get('hard_share', float('nan')):.2f}" if x in on else "-"
                for x in ("uniform", m, "oracle")
            )
            lines.append(
                f"| {key} | `{m}` | {head} | {steer} | {refit} | {uni} | {share} | {hard} |"
            )
    return "\n".join(lines)


def goals(summary: dict[str, Any], method: str = "error_model") -> str:
    """The steering issue's goals for ``method``, one row per problem/regime/budget (Markdown).

    Where the oracle's tail headroom (uniform / oracle on p95 or max) is at least 1.3: at least
    half of the oracle's log-gain on that statistic, uniform / method >= 1.5 on the max and
    >= 1.3 on p95, and >= 1.0 on the mean. Everywhere: the better of uniform and Halton /
    method >= 0.95 on the mean, p95 and max (medians; the interval beside)."""
    lines = [
        "| problem / regime / budget | tail headroom, uniform / oracle: p95 / max "
        "| uniform / method: mean (>= 1) / p95 (>= 1.3) / max (>= 1.5) "
        "| share of the oracle's log-gain (>= 0.5) "
        "| never 5 % worse: better of uniform, Halton / method: mean / p95 / max "
        "| its headroom estimate: ratio / snr |",
        "|---|---|---|---|---|---|",
    ]
    for key, entry in summary.items():
        on = entry["online"]
        if method not in on:
            continue
        e, orc = on[method], on.get("oracle")
        tail = [s for s in ("p95", "max") if orc and orc[f"uni_over_{s}"] >= 1.3]
        head = " / ".join(f"{orc[f'uni_over_{s}']:.2f}" for s in ("p95", "max")) if orc else "-"
        if tail:
            need = {"mean": 1.0, "p95": 1.3, "max": 1.5}
            uni = " / ".join(
                f"{e[f'uni_over_{s}']:.2f} {'met' if e[f'uni_over_{s}'] >= need[s] else 'missed'}"
                for s in STATS
            )
            share = ", ".join(
                f"{s} {e[f'share_{s}']:.2f} {'met' if e[f'share_{s}'] >= 0.5 else 'missed'}"
                for s in tail
            )
        else:
            uni = " / ".join(f"{e[f'uni_over_{s}']:.2f}" for s in STATS) + " (no tail headroom)"
            share = "-"
        worse = [s for s in STATS if e[f"best_over_{s}"][0] < 0.95]
        never = " / ".join(_cell(e, s) for s in STATS)
        never += f": missed on {', '.join(worse)}" if worse else ": met"
        est = e.get("headroom_estimate")
        est_cell = f"{est[0]:.2f} / {est[1]:.2f}" if est else "-"
        lines.append(f"| {key} | {head} | {uni} | {share} | {never} | {est_cell} |")
    return "\n".join(lines)


HEADER = [
    "problem/regime/budget", "model", "method", "seeds",
    "best/method mean", "p95", "max", "uni/method mean", "p95", "max",
    "log-gain share mean", "max", "hard-region share",
]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--problems", nargs="+", default=list(PROBLEMS))
    p.add_argument("--regimes", nargs="+", default=["reservoir", "fifo"])
    p.add_argument("--budgets", type=int, nargs="+", default=[200])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--methods", nargs="+", default=["uniform", "halton", "oracle", "error_model"])
    p.add_argument("--quick", action="store_true", help="smoke test: tiny settings, < 1 min")
    p.add_argument("--merge", type=Path, nargs="+", default=None, help="no new studies")
    p.add_argument("--markdown", action="store_true", help="also the tables as Markdown")
    p.add_argument("--compact", action="store_true", help="keep 3 digits, no run lists")
    p.add_argument(
        "--goals", default=None, metavar="METHOD", help="also the issue's goals for METHOD"
    )
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--name", default=None)
    a = p.parse_args()
    global POOL, N_VAL, STEPS, REFIT_STEPS
    if a.quick:
        POOL, N_VAL, STEPS, REFIT_STEPS = 128, 16, 120, 60
        a.problems, a.regimes, a.budgets, a.seeds = ["box6d"], ["reservoir", "fifo"], [24], [0, 1]
    import torch

    torch.set_num_threads(1)
    res: dict[str, Any] = {}
    if a.merge:
        for path in a.merge:
            for key, by in json.loads(path.read_text())["runs"].items():
                for m, runs in by.items():
                    if m == "_hard":
                        res.setdefault(key, {})[m] = np.array(runs)
                    else:
                        res.setdefault(key, {}).setdefault(m, []).extend(runs)
    for problem in [] if a.merge else a.problems:
        t0 = time.perf_counter()
        data = load(problem)
        print(
            f"{problem}: pool and held-out solved/loaded in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        for regime in a.regimes:
            for budget in a.budgets:
                key = f"{problem}/{regime}/{budget}"
                by = res.setdefault(key, {})
                density = None
                if "oracle" in a.methods:
                    err, density = reference_density(data, budget, regime)
                    by["_hard"] = err >= np.percentile(err, 80)
                for seed in a.seeds:
                    for m in a.methods:
                        r = study(data, m, seed, budget, regime, density)
                        r.pop("_trainer")
                        by.setdefault(m, []).append(r)
                        print(f"{key:<28} {m:<12} seed {seed}: online mean {np.mean(r['online']):.3g} "
                              f"max {np.max(r['online']):.3g} refit mean {np.mean(r['refit']):.3g} "
                              f"({r['seconds']:.1f} s)", flush=True)  # fmt: skip
                        _save_runs(res, a, partial=True)  # a partial run keeps its studies
    rows, summary = summarise(res)
    print(table(rows, HEADER))
    if a.markdown:
        print(markdown(summary))
    if a.goals:
        print(goals(summary, a.goals))
    _save_runs(res, a, summary=summary)


def _save_runs(
    res: dict[str, Any], a: Any, summary: dict[str, Any] | None = None, partial: bool = False
) -> None:
    runs = {
        k: {m: (v.tolist() if isinstance(v, np.ndarray) else v) for m, v in by.items()}
        for k, by in res.items()
    }
    if getattr(a, "compact", False):
        runs = compact(res)
    name = a.name or ("steering_suite" + ("_quick" if a.quick else ""))
    args = json.loads(json.dumps(vars(a), default=str))
    result = {"summary": summary or {}, "runs": runs, "args": args}
    if getattr(a, "compact", False):  # one line: indentation would triple the size
        path = (a.out or OUT) / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, separators=(",", ":")))
    else:
        path = save(name, result, a.out or OUT)
    if not partial:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
