"""Scaling: how many concurrent solver runs one training rank absorbs, and what 1,000 need.

Three measurements in one run of this script, each a real ``OnlineDataModule`` study feeding a
trivial model (a linear layer on 8 values of each sample, FIFO buffer) so that the receive path,
not training, is the limit. Every number is taken over a steady window (``--window`` seconds,
``--warmup`` after the first batch), samples counted as they enter the buffer:

(1) rate versus runs: ``--workers`` runs in flight (1 to 32), each a Python solver that *sleeps*
    ``--step-ms`` per step (it stands for a solver computing elsewhere) and yields a
    ``--sample-kb`` float32 array. Offered: n_workers * 1000 / step_ms samples/s; reported:
    received samples/s and MB/s, received/offered (saturation where it drops below 0.9), the CPU
    of the training process (receiver thread + training) and of all our processes (trainer, MPI
    workers, solver sandboxes), resident memory per run of the helper processes, start-up time.
(2) maximum message rate of one receiving rank: step_ms = 0 (solvers yield as fast as they
    can), ``--max-workers`` runs in flight, ``--max-sizes`` KB per sample. R_max(size) is the
    best of the run counts at each size (at (1)'s sample size, also the best rate of (1)).
(3) external programs: ``ExternalSolver`` launching a Python client program per run
    (``launcher="direct"`` and ``"mpiexec"`` with one process) against the same runs from a
    Python solver (whose sandbox process is reused between runs); and the launch overhead
    (launch -> first step, launch -> exit) of one-step runs started one at a time.

Estimate printed at the end: one rank absorbs about R_max(S) / s concurrent runs of a solver that
yields s samples/s of S bytes; keeping half of the rank for training (GIL),
ranks(N runs) = ceil(N * s / (0.5 * R_max(S))).

    python benchmarks/scaling.py [--workers 1 2 4 8 16 32] [--step-ms 5] [--sample-kb 64]
                                 [--max-workers 2 8] [--repeats 2] [--quick]
"""

from __future__ import annotations

import argparse
import faulthandler
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT, save, summary, table

from lightning_online import FIFO, ExternalSolver, OnlineDataModule, ParameterSpace

CLIENT = str(Path(__file__).resolve().parent / "_scaling_client.py")
NCPU = os.cpu_count() or 1
BUFFER_BYTES = 256 << 20  # FIFO capacity: 256 MB of samples (at least 4 batches)


class Paced:
    """A solver that yields ``n_steps`` arrays of ``n_floats`` float32, one every ``step_s``
    seconds (on a schedule: a step that could not go out on time leaves as soon as it can), so
    that each run offers a fixed rate whatever the transport costs."""

    def __init__(self, n_steps: int, n_floats: int, step_s: float) -> None:
        self.n_steps, self.n_floats, self.step_s = n_steps, n_floats, step_s

    def __call__(self, theta):
        y = np.random.default_rng(int(theta[0] * 1e9)).random(self.n_floats, dtype=np.float32)
        t = time.perf_counter()
        for _ in range(self.n_steps):
            if self.step_s:
                t += self.step_s
                pause = t - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
            yield (y,)


class Tiny(pl.LightningModule):
    """Trains (barely): a linear layer on the first 8 values of each sample."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        return self.lin(batch[0][:, :8]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), 1e-3)


def process_tree() -> tuple[float, float]:
    """(CPU seconds used so far by this process and its descendants, resident bytes of the
    descendants alone): MPI workers, solver sandboxes, mpiexec, solver programs. From /proc;
    NaN where there is none."""
    tick = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE")
    parent, ticks, rss = {}, {}, {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return float("nan"), float("nan")
    for d in names:
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                text = f.read()
        except OSError:
            continue
        # fields after the name: state ppid ... utime(11) stime(12) cutime(13) cstime(14) ...
        # rss(21); cutime/cstime hold reaped children (solver programs that ended), never live ones
        rest = text[text.rindex(")") + 2 :].split()
        pid = int(d)
        parent[pid], ticks[pid] = int(rest[1]), sum(int(x) for x in rest[11:15])
        rss[pid] = int(rest[21]) * page
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    me = os.getpid()
    cpu, mem, todo = 0, 0, [me]
    while todo:
        pid = todo.pop()
        cpu += ticks.get(pid, 0)
        mem += rss.get(pid, 0) if pid != me else 0
        todo.extend(children.get(pid, []))
    return cpu / tick, float(mem)


def cpu_machine() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine (other users' work included), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [float(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = v[3] + (v[4] if len(v) > 4 else 0.0)
    return sum(v) - idle, sum(v)


def snapshot(received: int) -> dict[str, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    busy, total = cpu_machine()
    tree_cpu, tree_rss = process_tree()
    return {
        "t": time.perf_counter(),
        "received": received,
        "trainer_cpu": r.ru_utime + r.ru_stime,  # all threads: receiver and training
        "tree_cpu": tree_cpu,
        "tree_rss": tree_rss,
        "machine_busy": busy,
        "machine_total": total,
    }


def rates(s0: dict[str, float], s1: dict[str, float], sample_bytes: int) -> dict[str, float]:
    dt = s1["t"] - s0["t"]
    rate = (s1["received"] - s0["received"]) / dt
    total = s1["machine_total"] - s0["machine_total"]
    return {
        "received_per_s": rate,
        "MBps": rate * sample_bytes / 1e6,
        "trainer_cpu_cores": (s1["trainer_cpu"] - s0["trainer_cpu"]) / dt,
        "tree_cpu_cores": (s1["tree_cpu"] - s0["tree_cpu"]) / dt,
        "machine_busy": (s1["machine_busy"] - s0["machine_busy"]) / total if total else np.nan,
        "helpers_rss_MB": s1["tree_rss"] / 1e6,
    }


class Meter(Callback):
    """Steady-state window: ``warmup`` s after the first batch, count samples received into the
    buffer for ``window`` s, then stop training. With ``window=None``, only note the first and
    the last batch (a whole study)."""

    def __init__(self, dm: OnlineDataModule, warmup: float, window: float | None) -> None:
        self.dm, self.warmup, self.window = dm, warmup, window
        self.t_fit = time.perf_counter()
        self.first: dict[str, float] | None = None
        self.s0: dict[str, float] | None = None
        self.s1: dict[str, float] | None = None
        self.t_last = 0.0

    def _snap(self) -> dict[str, float]:
        return snapshot(int(self.dm.buffer.stats()["received"]))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.t_last = time.perf_counter()
        if self.first is None:
            self.first = self._snap()
        if self.window is None:
            return
        if self.s0 is None and self.t_last - self.first["t"] >= self.warmup:
            self.s0 = self._snap()
        elif self.s0 is not None and self.t_last - self.s0["t"] >= self.window:
            self.s1 = self._snap()
            trainer.should_stop = True


def fit(dm: OnlineDataModule, meter: Meter, limit: float) -> None:
    # A hung setting must not hang the script: dump the stacks and exit (the MPI workers notice
    # that their trainer is gone and end their sandboxes).
    faulthandler.dump_traceback_later(limit, exit=True)
    try:
        pl.Trainer(
            accelerator="cpu",
            max_steps=10**9,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=[meter],
        ).fit(Tiny(), dm)
    finally:
        faulthandler.cancel_dump_traceback_later()


def buffer_for(sample_bytes: int, batch: int) -> FIFO:
    return FIFO(max(4 * batch, min(16384, BUFFER_BYTES // sample_bytes)), watermark=batch)


def steady(n_workers: int, n_floats: int, solver, a: argparse.Namespace) -> dict[str, float]:
    """Received rate over a steady window with n_workers runs of ``solver`` in flight (new runs
    start as runs end; the study never ends by itself)."""
    dm = OnlineDataModule(
        solver,
        ParameterSpace([0.0], [1.0]),
        n_simulations=10**7,
        batch_size=a.batch,
        n_workers=n_workers,
        buffer=buffer_for(4 * n_floats, a.batch),
        run_timeout=600,
    )
    meter = Meter(dm, a.warmup, a.window)
    fit(dm, meter, limit=120 + 2 * n_workers + a.warmup + a.window)
    assert meter.first and meter.s0 and meter.s1, "no steady window was measured"
    return rates(meter.s0, meter.s1, 4 * n_floats) | {"startup_s": meter.first["t"] - meter.t_fit}


def paced(n_workers: int, kb: float, step_ms: float, a: argparse.Namespace) -> dict[str, float]:
    n_floats = max(8, int(kb * 256))
    steps = a.run_steps if step_ms else 10**7  # unpaced runs: one run per worker, never ending
    return steady(n_workers, n_floats, Paced(steps, n_floats, step_ms / 1e3), a)


def ingest_only(a: argparse.Namespace) -> dict:
    """End-to-end ingest of ``--ingest-kb`` samples into one training rank, as fast as the
    solvers yield, from a Python solver and from external programs (the Python client,
    ``launcher="direct"``, runs that never end), ``--max-workers`` runs in flight; each study
    is followed at once by raw mpi4py ``Send``/``Recv`` of the same size, and the ratio is taken
    pair by pair (the machine's load moves both). Median and spread of ``--repeats`` pairs."""
    from transport import raw

    n_floats = max(8, int(a.ingest_kb * 256))
    size = 4 * n_floats
    program = [sys.executable, CLIENT, "--steps", str(10**7), "--floats", str(n_floats)]
    sides = {
        "Python solver": lambda: Paced(10**7, n_floats, 0.0),
        "ExternalSolver (Python client, direct)": lambda: ExternalSolver(
            program, launcher="direct", fields=["y"], connect_timeout=60
        ),
    }
    result: dict[str, dict] = {}
    rows = []
    for nw in a.max_workers:
        for name, make in sides.items():
            pairs = []
            for _ in range(a.repeats):
                got = steady(nw, n_floats, make(), a)
                r = raw(size, max(50, min(2000, int(2e9 // size))))
                pairs.append((got["MBps"], r / 1e6, got["trainer_cpu_cores"]))
            ratios = [st / rw for st, rw, _ in pairs]
            key = f"{name}, {nw} runs"
            result[key] = {
                "study_MBps": summary([p[0] for p in pairs]),
                "raw_MBps": summary([p[1] for p in pairs]),
                "ratio": summary(ratios),
                "trainer_cpu_cores": summary([p[2] for p in pairs]),
            }
            rows.append(
                [
                    name,
                    nw,
                    f"{result[key]['study_MBps']['median']:.0f}",
                    f"{result[key]['raw_MBps']['median']:.0f}",
                    f"{np.median(ratios):.2f}",
                    spread(ratios, "{:.2f}"),
                    f"{result[key]['trainer_cpu_cores']['median']:.2f}",
                ]
            )
            print(f"  {key}: ratio {np.median(ratios):.2f}", flush=True)
    print(
        f"\ningest of {a.ingest_kb:g} KB samples into one rank / raw mpi4py in the same run, "
        f"median of {a.repeats} pairs (load average {os.getloadavg()[0]:.1f})"
    )
    print(
        table(
            rows,
            ["solver", "runs", "study MB/s", "raw MB/s", "ratio", "spread", "trainer CPU"],
        )
    )
    return result


def launch_overhead(n: int) -> dict[str, dict[str, list[float]]]:
    """One-step runs started from this process, the launchers taking turns (so that load from
    elsewhere hits all alike): launch -> first step, -> exit. The Python client program, and the
    compiled C heat solver (built here with the client library) directly, under ``mpiexec -n 1``
    and ``-n 2``. And, for reference, the bare interpreter with the client's imports."""
    import shutil
    import tempfile

    from lightning_online.client import build, example_source

    tmp = Path(tempfile.mkdtemp(prefix="lo-scaling-"))
    heat = str(build([example_source("heat2d")], tmp / "heat2d"))
    c_args = [heat, "--nx", "16", "--ny", "16", "--n-steps", "1"]
    py_args = [sys.executable, CLIENT, "--steps", "1", "--floats", "16"]
    opts = dict(n_steps=1, connect_timeout=60, exit_timeout=30)
    solvers = {
        "Python client, direct": (ExternalSolver(py_args, launcher="direct", **opts), 1),
        "Python client, mpiexec -n 1": (ExternalSolver(py_args, launcher="mpiexec", **opts), 1),
        "C heat2d, direct": (ExternalSolver(c_args, launcher="direct", **opts), 5),
        "C heat2d, mpiexec -n 1": (ExternalSolver(c_args, launcher="mpiexec", **opts), 5),
        "C heat2d, mpiexec -n 2": (ExternalSolver(c_args, n_procs=2, **opts), 5),
    }
    out: dict[str, dict[str, list[float]]] = {
        name: {"first_step_s": [], "total_s": []} for name in [*solvers, "interpreter"]
    }
    try:
        for k in range(n):
            for name, (solver, dims) in solvers.items():
                t0 = time.perf_counter()
                gen = solver(np.full(dims, 100.0 + k))
                next(gen)
                out[name]["first_step_s"].append(time.perf_counter() - t0)
                for _ in gen:
                    pass
                out[name]["total_s"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-c", "import numpy, socket; from lightning_online import client"],
                check=True,
                timeout=60,
                cwd=str(Path(__file__).resolve().parent.parent),
            )
            out["interpreter"]["total_s"].append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def print_launches(launches: dict[str, dict[str, list[float]]], n: int) -> None:
    rows = [
        [
            name if name != "interpreter" else "(python -c 'import numpy; ...client')",
            f"{1e3 * np.median(v['first_step_s']):.0f}" if v["first_step_s"] else "-",
            f"{1e3 * np.median(v['total_s']):.0f}",
            spread([1e3 * t for t in v["total_s"]]),
        ]
        for name, v in launches.items()
    ]
    print(f"\nper-run launch overhead (one-step runs, one at a time, median of {n})")
    print(table(rows, ["launcher", "to first step ms", "to exit ms", "spread"]))


def r_max_at(size: float, sizes: list[int], rates: list[float]) -> float:
    """R_max at a sample size, from the measured points: log-log interpolation between them;
    below the smallest, its rate (bound by messages); above the largest, its MB/s (by bytes)."""
    order = np.argsort(sizes)
    x, y = np.asarray(sizes, float)[order], np.asarray(rates, float)[order]
    if size <= x[0]:
        return float(y[0])
    if size >= x[-1]:
        return float(y[-1] * x[-1] / size)
    return float(np.exp(np.interp(np.log(size), np.log(x), np.log(y))))


def ranks_needed(n_runs: int, s: float, r_max: float) -> dict[str, float]:
    """Runs one rank absorbs at R_max and at half of it, and ranks for n_runs at half."""
    return {
        "R_max_samples_per_s": r_max,
        "runs_per_rank_saturated": r_max / s,
        "runs_per_rank_half": 0.5 * r_max / s,
        "ranks_for_N": math.ceil(n_runs * s / (0.5 * r_max)),
    }


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}" if len(values) > 1 else "-"


def plot(rows: list[dict], max_rows: list[dict], out: Path | None) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    n = [r["n_workers"] for r in rows]
    med = [r["received"]["median"] for r in rows]
    lo = [r["received"]["median"] - r["received"]["min"] for r in rows]
    hi = [r["received"]["max"] - r["received"]["median"] for r in rows]
    ax.plot(n, [r["offered"] for r in rows], "k--", label="offered")
    ax.errorbar(n, med, yerr=[lo, hi], marker="o", capsize=3, label="received (min-max)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(n, [str(x) for x in n])
    ax.set_yscale("log")
    ax.set_xlabel("concurrent solver runs (n_workers)")
    ax.set_ylabel("samples / s into one training rank")
    ax.set_title("received vs offered", fontsize=9)
    ax.legend(fontsize=8)
    labels = [f"{r['kb']:g} KB" for r in max_rows]
    bx.bar(range(len(max_rows)), [r["samples"]["median"] for r in max_rows], color="tab:orange")
    bx.set_xticks(range(len(max_rows)), labels)
    bx.set_yscale("log")
    bx.set_ylabel("samples / s (step_ms = 0)")
    for i, r in enumerate(max_rows):
        bx.annotate(
            f"{r['MBps']['median']:.0f} MB/s",
            (i, r["samples"]["median"]),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    bx.set_title("maximum rate of one receiving rank (best run count)", fontsize=9)
    fig.tight_layout()
    path = (out or OUT) / "scaling.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--step-ms", type=float, default=5.0, help="solver time per step (sleep)")
    p.add_argument("--sample-kb", type=float, default=64.0, help="float32 sample size")
    p.add_argument("--run-steps", type=int, default=1000, help="steps per paced run")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before the window")
    p.add_argument("--window", type=float, default=3.0, help="seconds measured per setting")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument(
        "--max-workers", type=int, nargs="+", default=[2, 8], help="runs in flight for (2)"
    )
    p.add_argument("--max-sizes", type=float, nargs="+", default=[1, 64, 1024], help="KB")
    p.add_argument("--ext-workers", type=int, default=8)
    p.add_argument("--ext-steps", type=int, default=20)
    p.add_argument("--launches", type=int, default=8, help="one-step runs per launcher")
    p.add_argument("--study-runs", type=int, default=1000, help="N of the estimate")
    p.add_argument("--quick", action="store_true", help="~20 s: the smoke test")
    p.add_argument(
        "--launch-only", action="store_true", help="only the launch overhead (-> scaling_launch)"
    )
    p.add_argument(
        "--ingest-only",
        action="store_true",
        help="only the end-to-end ingest of --ingest-kb samples against raw mpi4py, each study "
        "next to its own raw measurement (-> scaling_ingest)",
    )
    p.add_argument("--ingest-kb", type=float, default=1024.0, help="sample size of --ingest-only")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    if a.quick:
        a.workers, a.repeats, a.warmup, a.window, a.batch = [1, 2], 1, 0.3, 0.6, 8
        a.max_workers, a.max_sizes = [2], [1, 64]
        a.ext_workers, a.ext_steps, a.launches = 2, 5, 1
    torch.set_num_threads(1)
    t_script = time.perf_counter()
    if a.launch_only:
        launches = launch_overhead(a.launches)
        print_launches(launches, a.launches)
        save("scaling_launch", {"launch_overhead_s": launches}, a.out)
        return
    if a.ingest_only:
        save("scaling_ingest", ingest_only(a), a.out)
        return

    load_start = os.getloadavg()

    # (1) received versus offered -------------------------------------------------------------
    rows, out_rows = [], []
    for n in a.workers:
        got = [paced(n, a.sample_kb, a.step_ms, a) for _ in range(a.repeats)]
        offered = n * 1000.0 / a.step_ms
        rec = [g["received_per_s"] for g in got]
        row = {
            "n_workers": n,
            "offered": offered,
            "received": summary(rec),
            "ratio": summary([r / offered for r in rec]),
            **{k: summary([g[k] for g in got]) for k in got[0] if k != "received_per_s"},
        }
        rows.append(row)
        out_rows.append(
            [
                n,
                f"{offered:.0f}",
                f"{row['received']['median']:.0f}",
                spread(rec),
                f"{row['MBps']['median']:.0f}",
                f"{row['ratio']['median']:.2f}",
                f"{row['trainer_cpu_cores']['median']:.2f}",
                f"{row['tree_cpu_cores']['median']:.2f}",
                f"{row['helpers_rss_MB']['median'] / n:.0f}",
                f"{row['startup_s']['median']:.1f}",
            ]
        )
        print(f"  n_workers={n}: {row['received']['median']:.0f} samples/s", flush=True)
    print(
        f"\n(1) samples/s into one training rank, {a.sample_kb:g} KB float32 samples, "
        f"{a.step_ms:g} ms per step and run, batch {a.batch}, median of {a.repeats}; CPU in cores "
        f"(of {NCPU})"
    )
    print(
        table(
            out_rows,
            [
                "runs",
                "offered/s",
                "received/s",
                "spread",
                "MB/s",
                "recv/offered",
                "trainer CPU",
                "all our CPU",
                "MB/run",
                "start-up s",
            ],
        )
    )
    saturated = next((r["n_workers"] for r in rows if r["ratio"]["median"] < 0.9), None)
    print(f"saturation (received/offered < 0.9): {saturated or 'not reached'} runs")

    # (2) maximum message rate ----------------------------------------------------------------
    max_rows, out_max = [], []
    for kb, nw in [(kb, nw) for kb in a.max_sizes for nw in a.max_workers]:
        got = [paced(nw, kb, 0.0, a) for _ in range(a.repeats)]
        rec = [g["received_per_s"] for g in got]
        row = {
            "kb": kb,
            "n_workers": nw,
            "bytes": max(8, int(kb * 256)) * 4,
            "samples": summary(rec),
            **{k: summary([g[k] for g in got]) for k in got[0] if k != "received_per_s"},
            # CPU of the training process (receiver + training threads) per sample, and what
            # one core would absorb at that cost
            "trainer_cpu_us_per_sample": summary(
                [1e6 * g["trainer_cpu_cores"] / g["received_per_s"] for g in got]
            ),
            # CPU of all our processes per sample: trainer, MPI workers, solver sandboxes (which
            # live on the training node in a real study too; the solver's own work excluded)
            "tree_cpu_us_per_sample": summary(
                [1e6 * g["tree_cpu_cores"] / g["received_per_s"] for g in got]
            ),
        }
        max_rows.append(row)
        out_max.append(
            [
                f"{kb:g} KB",
                nw,
                f"{row['samples']['median']:.0f}",
                spread(rec),
                f"{row['MBps']['median']:.0f}",
                f"{row['trainer_cpu_cores']['median']:.2f}",
                f"{row['tree_cpu_cores']['median']:.2f}",
                f"{row['trainer_cpu_us_per_sample']['median']:.0f}",
                f"{1e6 / row['trainer_cpu_us_per_sample']['median']:.0f}",
                f"{row['tree_cpu_us_per_sample']['median']:.0f}",
            ]
        )
        print(f"  {kb:g} KB, {nw} runs: {row['samples']['median']:.0f} samples/s", flush=True)
    print(f"\n(2) maximum rate: runs yielding as fast as they can, median of {a.repeats}")
    print(
        table(
            out_max,
            [
                "sample",
                "runs",
                "samples/s",
                "spread",
                "MB/s",
                "trainer CPU",
                "all our CPU",
                "trainer us/sample",
                "1 trainer core: samples/s",
                "all our us/sample",
            ],
        )
    )
    # R_max per size: the best number of runs in flight at that size
    best = {}
    for r in max_rows:
        if r["bytes"] not in best or r["samples"]["median"] > best[r["bytes"]]["samples"]["median"]:
            best[r["bytes"]] = r
    sizes = list(best)
    r_meas = [best[b]["samples"]["median"] for b in sizes]
    source = [f"{best[b]['n_workers']} runs, step_ms 0" for b in sizes]
    # Paced runs of (1) leave the cores to the receiver (their solvers sleep): at (1)'s sample
    # size, the best rate received there counts too.
    b1, top = max(8, int(a.sample_kb * 256)) * 4, max(rows, key=lambda r: r["received"]["median"])
    if b1 in best and top["received"]["median"] > r_meas[sizes.index(b1)]:
        r_meas[sizes.index(b1)] = top["received"]["median"]
        source[sizes.index(b1)] = f"{top['n_workers']} paced runs, (1)"
    print(
        "R_max: "
        + ", ".join(
            f"{b / 1024:g} KB {r:.0f}/s ({src})"
            for b, r, src in zip(sizes, r_meas, source, strict=True)
        )
    )

    # the same sizes through raw mpi4py, in this run: what the study's ingest is worth
    from transport import raw

    ingest = {}
    for b in sizes:
        raws = [raw(b, max(50, min(2000, int(2e9 // b)))) for _ in range(a.repeats)]
        ingest[b] = {
            "raw_MBps": summary([r / 1e6 for r in raws]),
            "study_MBps": best[b]["MBps"]["median"],
            "ratio": best[b]["MBps"]["median"] * 1e6 / float(np.median(raws)),
        }
    print("\nend-to-end ingest into one rank (a whole study, the best run count) / raw mpi4py:")
    print(
        table(
            [
                [
                    f"{b / 1024:g} KB",
                    f"{v['study_MBps']:.0f}",
                    f"{v['raw_MBps']['median']:.0f}",
                    f"{v['ratio']:.2f}",
                ]
                for b, v in ingest.items()
            ],
            ["sample", "study MB/s", "raw mpi4py MB/s", "ratio"],
        )
    )

    # (3) external programs -------------------------------------------------------------------
    n_floats = max(8, int(a.sample_kb * 256))
    program = [sys.executable, CLIENT, "--steps", str(a.ext_steps), "--floats", str(n_floats)]
    sides = {
        "Python solver (sandbox reused)": lambda: Paced(a.ext_steps, n_floats, 0.0),
        "ExternalSolver, direct": lambda: ExternalSolver(
            program, launcher="direct", n_steps=a.ext_steps, fields=["y"], connect_timeout=60
        ),
        "ExternalSolver, mpiexec -n 1": lambda: ExternalSolver(
            program, launcher="mpiexec", n_steps=a.ext_steps, fields=["y"], connect_timeout=60
        ),
    }
    ext: dict[str, list[dict]] = {k: [] for k in sides}
    for _ in range(a.repeats):
        for name, make in sides.items():
            ext[name].append(steady(a.ext_workers, n_floats, make(), a))
    out_ext, ext_result = [], {}
    for name, got in ext.items():
        ext_result[name] = {k: summary([g[k] for g in got]) for k in got[0]}
        rec = [g["received_per_s"] for g in got]
        out_ext.append(
            [
                name,
                f"{np.median(rec):.0f}",
                spread(rec),
                f"{np.median(rec) / a.ext_steps:.1f}",
                f"{ext_result[name]['trainer_cpu_cores']['median']:.2f}",
                f"{ext_result[name]['tree_cpu_cores']['median']:.2f}",
            ]
        )
    print(
        f"\n(3) runs of {a.ext_steps} steps of {a.sample_kb:g} KB, 0 ms per step, "
        f"{a.ext_workers} runs in flight, a new run as soon as one ends; median of {a.repeats}"
    )
    print(
        table(
            out_ext,
            ["solver", "samples/s", "spread", "runs/s", "trainer CPU", "all our CPU"],
        )
    )
    launches = launch_overhead(a.launches)
    print_launches(launches, a.launches)

    # estimate --------------------------------------------------------------------------------
    examples = {
        f"{a.sample_kb:g} KB every {a.step_ms:g} ms (this benchmark)": (
            1000.0 / a.step_ms,
            4 * n_floats,
        ),
        "1 MB every 1 s": (1.0, 1 << 20),
        "64 KB every 100 ms": (10.0, 64 << 10),
        "1 KB every 1 ms": (1000.0, 1 << 10),
    }
    estimate = {
        name: {
            "samples_per_s_per_run": s,
            "bytes": size,
            **ranks_needed(a.study_runs, s, r_max_at(size, sizes, r_meas)),
        }
        for name, (s, size) in examples.items()
    }
    out_est = [
        [
            name,
            f"{v['R_max_samples_per_s']:.0f}",
            f"{v['runs_per_rank_saturated']:.0f}",
            f"{v['runs_per_rank_half']:.0f}",
            v["ranks_for_N"],
        ]
        for name, v in estimate.items()
    ]
    print(
        f"\nestimate: R_max(S) from (2) (log-log between sizes, MB/s above the largest); "
        f"runs/rank = R_max / s; ranks = ceil(N * s / (0.5 * R_max)), N = {a.study_runs}"
    )
    print(
        table(
            out_est,
            [
                "solver (per run)",
                "R_max samples/s",
                "runs/rank (100 %)",
                "runs/rank (50 %)",
                f"ranks for {a.study_runs}",
            ],
        )
    )
    elapsed = time.perf_counter() - t_script
    print(
        f"\nwhole script: {elapsed:.0f} s; load average (1, 5, 15 min) at start "
        f"{', '.join(f'{x:.1f}' for x in load_start)}, at end "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    result = {
        "config": vars(a) | {"out": None},
        "rate_vs_runs": rows,
        "saturation_runs": saturated,
        "max_rate": max_rows,
        "ingest_vs_raw": ingest,
        "R_max_samples_per_s": {
            str(b): {"rate": r, "from": src}
            for b, r, src in zip(sizes, r_meas, source, strict=True)
        },
        "external": ext_result,
        "launch_overhead_s": launches,
        "load_average_start_end": [load_start, os.getloadavg()],
        "estimate": estimate,
        "seconds": elapsed,
    }
    print(f"wrote {save('scaling', result, a.out)}")
    plot(rows, list(best.values()), a.out)


if __name__ == "__main__":
    main()
