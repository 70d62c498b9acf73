"""Soak: thousands of short solver runs with faults injected at random, then a check that nothing
leaked and nothing went unreported.

Faults (chosen per run from its parameters, so a retry repeats its run's fault): the solver
raises, is killed by SIGKILL, hangs past ``run_timeout``, yields NaN, changes the shape of a field
mid-run, or exits. At the end it checks:

* the budget is exact: ``completed == n_simulations`` and ``launched == completed + failed``;
* every failure is reported: each failed run has the reason of its fault, one warning each, and
  ``dm.stats["failed"]`` counts them all; samples of failed runs are counted
  (``samples_received = samples of completed runs + samples_from_failed``);
* open file descriptors, threads (Python and native) and child processes are back to their
  counts before the soak (measured after a short warm-up study, which starts MPI's process
  manager once for the life of the process);
* resident memory is flat: sampled every 5 training steps, the last quarter of the soak holds
  no more than ``--rss-slack-mb`` above the first quarter.

Run: ``python benchmarks/soak.py --runs 3000`` (about ten minutes on 2 cores; the figures go to
``docs/benchmarks/soak.json``). ``tests/test_soak.py`` runs a small version of it.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

# Faults by theta[0]: [low, high) -> (kind, reason text recorded for it)
FAULTS: list[tuple[float, float, str, str]] = [
    (0.00, 0.04, "raise", "RuntimeError: injected fault"),
    (0.04, 0.07, "sigkill", "killed by SIGKILL"),
    (0.07, 0.08, "hang", "timed out after"),
    (0.08, 0.12, "nan", "NaN or Inf"),
    (0.12, 0.16, "shape", "differ from the first step"),
    (0.16, 0.18, "exit", "exited with code 5"),
]


def fault_of(theta0: float) -> str | None:
    for low, high, kind, _ in FAULTS:
        if low <= theta0 < high:
            return kind
    return None


REASONS = {kind: reason for _, _, kind, reason in FAULTS}


class Chaos:
    """A short solver (``n_steps`` steps of two small fields) that fails as ``fault_of`` says,
    at step 1 (after it streamed a step: a late failure)."""

    def __init__(self, n_steps: int = 3) -> None:
        self.n_steps = n_steps

    def __call__(self, theta: np.ndarray):
        kind = fault_of(float(theta[0]))
        for k in range(self.n_steps):
            x = np.array([theta[0], theta[1], k / self.n_steps], dtype=np.float32)
            y = np.array([np.sin(3 * theta[0] + k)], dtype=np.float32)
            if k == 1 and kind is not None:
                if kind == "raise":
                    raise RuntimeError("injected fault")
                if kind == "sigkill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if kind == "hang":
                    time.sleep(3600)
                if kind == "nan":
                    y[0] = np.nan
                if kind == "shape":
                    y = np.zeros(2, dtype=np.float32)
                if kind == "exit":
                    os._exit(5)
            yield x, y


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _native_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _children() -> list[str]:
    import psutil

    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            out.append(" ".join(p.cmdline())[:120])
        except psutil.Error:
            pass
    return sorted(out)


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.failed_runs: Counter[int] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("solver run "):
            self.failed_runs[int(record.args[0])] += 1  # type: ignore[index]


def _study(runs: int, workers: int, seed: int, run_timeout: float, rss: list[int] | None):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from _models import Regressor

    from lightning_online import FIFO, OnlineDataModule, ParameterSpace, Uniform

    class Sample(Callback):
        def on_train_batch_end(self, trainer, *args: Any) -> None:
            if rss is not None and trainer.global_step % 5 == 0:
                rss.append(_rss())

    dm = OnlineDataModule(
        Chaos(),
        ParameterSpace([0.0, 0.0], [1.0, 1.0]),
        n_simulations=runs,
        batch_size=16,
        n_workers=workers,
        sampler=Uniform(seed=seed),
        buffer=FIFO(256, watermark=16),
        run_timeout=run_timeout,
        max_retries=1,
        max_failed_fraction=0.9,
    )
    trainer = pl.Trainer(
        max_steps=10**9,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Sample()],
    )
    trainer.fit(Regressor(3, 1), dm)
    return dm, trainer


def soak(
    runs: int = 3000,
    workers: int = 2,
    seed: int = 0,
    run_timeout: float = 0.5,
    rss_slack_mb: float = 32.0,
) -> dict[str, Any]:
    """Run the soak; returns its figures and the list of problems found (empty: none)."""
    import lightning.pytorch as pl

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings = _Warnings()
    logging.getLogger("lightning_online").addHandler(warnings)
    try:
        _study(8, workers, seed + 1, run_timeout, None)  # warm-up: MPI's process manager starts
        gc.collect()
        time.sleep(1.0)  # what the warm-up ended is gone
        before = {
            "fds": _fds(),
            "python_threads": threading.active_count(),
            "native_threads": _native_threads(),
            "children": _children(),
            "rss": _rss(),
        }
        warnings.failed_runs.clear()
        rss: list[int] = []
        t0 = time.monotonic()
        dm, trainer = _study(runs, workers, seed, run_timeout, rss)
        seconds = time.monotonic() - t0
        del trainer
        gc.collect()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
            _fds() > before["fds"] or _children() != before["children"]
        ):
            time.sleep(0.1)
        after = {
            "fds": _fds(),
            "python_threads": threading.active_count(),
            "native_threads": _native_threads(),
            "children": _children(),
            "rss": _rss(),
        }
    finally:
        logging.getLogger("lightning_online").removeHandler(warnings)
    del pl

    stats = dict(dm.stats)
    all_runs = list(dm.runs.values())
    failed = [r for r in all_runs if r.status == "failed"]
    completed = [r for r in all_runs if r.status == "completed"]
    injected = Counter(fault_of(float(r.theta[0])) or "none" for r in all_runs)
    problems: list[str] = []
    if stats["completed"] != runs or len(completed) != runs:
        problems.append(f"budget: {stats['completed']} completed ({len(completed)} in the ledger)")
    if stats["launched"] != stats["completed"] + stats["failed"]:
        problems.append(f"launched {stats['launched']} != completed + failed")
    if stats["failed"] != len(failed):
        problems.append(f"stats say {stats['failed']} failed, the ledger {len(failed)}")
    for r in failed:
        kind = fault_of(float(r.theta[0]))
        if kind is None or REASONS[kind] not in r.reason:
            problems.append(f"run {r.sim_id} ({kind}) failed with {r.reason[:200]!r}")
        if warnings.failed_runs[r.sim_id] != 1:
            problems.append(f"run {r.sim_id}: {warnings.failed_runs[r.sim_id]} warnings")
    for r in completed:
        if fault_of(float(r.theta[0])) is not None:
            problems.append(f"faulty run {r.sim_id} completed")
    if (
        stats["samples_received"]
        != sum(r.n_samples for r in completed) + stats["samples_from_failed"]
    ):
        problems.append("samples_received != completed runs' samples + samples_from_failed")
    for key in ("fds", "python_threads", "native_threads", "children"):
        if after[key] != before[key]:
            problems.append(f"{key}: {before[key]} before, {after[key]} after")
    q = max(1, len(rss) // 4)
    first, last = (max(rss[:q]) if rss else 0), (max(rss[-q:]) if rss else 0)
    growth_mb = (last - first) / 2**20
    if growth_mb > rss_slack_mb:
        problems.append(f"RSS grew {growth_mb:.1f} MiB from the first to the last quarter")
    return {
        "runs": runs,
        "launched": stats["launched"],
        "failed": stats["failed"],
        "faults_injected": {k: v for k, v in injected.items() if k != "none"},
        "seconds": round(seconds, 1),
        "samples_received": stats["samples_received"],
        "samples_from_failed": stats["samples_from_failed"],
        "before": {k: v for k, v in before.items() if k != "children"}
        | {"children": len(before["children"])},
        "after": {k: v for k, v in after.items() if k != "children"}
        | {"children": len(after["children"])},
        "rss_first_quarter_mb": round(first / 2**20, 1),
        "rss_last_quarter_mb": round(last / 2**20, 1),
        "rss_samples": len(rss),
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-timeout", type=float, default=0.5)
    p.add_argument("--rss-slack-mb", type=float, default=32.0)
    p.add_argument("--out", type=Path, default=None, help="directory of soak.json")
    args = p.parse_args(argv)
    result = soak(args.runs, args.workers, args.seed, args.run_timeout, args.rss_slack_mb)
    print(json.dumps(result, indent=2))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import save

    print("saved", save("soak", result, args.out))
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
