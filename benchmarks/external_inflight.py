"""External runs in flight on one training rank: helper memory per run, and programs in flight.

Two measurements, each in a fresh subprocess, on a small C program built with the shipped C
client (``tests/programs/lo_ext_gate.c``, compiled with ``cc``):

(1) memory per run in flight: ``--hold`` runs are started at once; each connects, sends its step
    0 and waits on a named pipe, so that all of them are in flight when memory is read. Reported:
    the proportional set size (PSS, psutil ``memory_full_info().pss``) of the training node's
    helper processes (now: the one launcher helper; before: the MPI workers, their solver
    sandboxes and MPI's process manager), divided by the runs in flight; the pool's connection
    buffers per run; and the growth of the training process's own PSS per run.
(2) programs actually in flight: ``--workers`` runs allowed at once (64), ``--runs`` runs of
    about 1 s each (20 steps of 16 KB, one every 50 ms). A sampler counts, every 50 ms, the
    program processes alive; reported: their mean over the steady part (from 1 s after the start
    until the last run is handed out) and their maximum, the wall time and the samples/s.

"after" is this working tree (``ExternalPool``: programs connect straight to the rank). With
``--before REV`` the same measurements also run on the package of git revision REV (extracted
with ``git archive``, nothing in the working tree changes), e.g. the last revision with a worker
and a sandbox process per run. Prints one JSON object.

    python benchmarks/external_inflight.py [--quick] [--before REV] [--hold 1000] [--workers 64]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GATE_SOURCE = ROOT / "tests" / "programs" / "lo_ext_gate.c"


# -- in the measuring subprocess ---------------------------------------------------------------


class Handler:
    """The study's side of a pool, reduced to counting (receiver thread)."""

    def __init__(self, n_runs: int) -> None:
        self.tasks = collections.deque(range(n_runs))
        self.total = n_runs
        self.given = 0
        self.samples = 0
        self.live: set[int] = set()
        self.max_live = 0
        self.ends = 0
        self.failed: list[str] = []
        self.done = threading.Event()

    def next_task(self):
        import numpy as np

        if not self.tasks:
            return None
        i = self.tasks.popleft()
        self.given += 1
        return i, np.array([float(i)])

    def has_room(self) -> bool:
        return True

    def on_sample(self, blob) -> None:
        sim_id = int(blob[8:16].view("<i8")[0])  # _wire header: magic, sim_id, step, n_fields
        self.samples += 1
        self.live.add(sim_id)
        self.max_live = max(self.max_live, len(self.live))

    def on_samples(self, blobs, slots=None) -> None:  # several samples of one run
        for blob in blobs:
            self.on_sample(blob)

    def slots_for(self, k: int, nbytes: int) -> None:  # no sample memory of its own
        return None

    def on_end(self, sim_id, ok, n_steps, seconds, reason) -> None:
        self.ends += 1
        self.live.discard(sim_id)
        if not ok:
            self.failed.append(reason[:500])
        if self.ends == self.total:
            self.done.set()


def _pool(kind: str, solver, n_workers: int, handler: Handler):
    if kind == "after":
        from lightning_online.external._pool import ExternalPool

        return ExternalPool(solver, n_workers, handler)
    import cloudpickle

    from lightning_online._transport.pool import WorkerPool

    return WorkerPool(cloudpickle.dumps(solver), n_workers, handler)


def _descendants(program: str):
    import psutil

    helpers, programs = [], []
    for p in psutil.Process().children(recursive=True):
        try:
            (programs if program in " ".join(p.cmdline()) else helpers).append(p)
        except psutil.NoSuchProcess:
            pass
    return helpers, programs


def _pss(procs) -> tuple[int, dict[str, int]]:
    import psutil

    total, by_name = 0, collections.Counter()
    for p in procs:
        try:
            pss = p.memory_full_info().pss
            name = " ".join(p.cmdline()[:3])[-60:]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += pss
        by_name[name] += pss
    return total, dict(by_name)


def measure_memory(kind: str, program: str, hold: int) -> dict:
    import psutil

    from lightning_online import ExternalSolver

    tmp = Path(tempfile.mkdtemp())
    gate = tmp / "gate"
    os.mkfifo(gate)
    gate_fd = os.open(gate, os.O_RDWR | os.O_NONBLOCK)
    solver = ExternalSolver(
        [program, str(gate), "3", "4", "0"], fields=["x", "y"], launcher="direct", n_steps=3
    )
    handler = Handler(hold)
    me = psutil.Process()
    pss0 = me.memory_full_info().pss
    pool = _pool(kind, solver, hold, handler)
    t0 = time.monotonic()
    pool.start(timeout=600)
    try:
        while len(handler.live) < hold and time.monotonic() - t0 < 600:
            if pool.error is not None:
                raise RuntimeError("the pool failed") from pool.error
            time.sleep(0.05)
        in_flight = len(handler.live)
        held_after = time.monotonic() - t0
        time.sleep(1.0)
        helpers, programs = _descendants(program)
        helper_pss, by_name = _pss(helpers)
        own = me.memory_full_info().pss - pss0
        buffers = pool._hub.buffer_bytes() if kind == "after" else None
        os.write(gate_fd, b"g" * hold)
        handler.done.wait(600)
    finally:
        pool.stop()
        os.close(gate_fd)
        shutil.rmtree(tmp, ignore_errors=True)
    out = {
        "runs_in_flight": in_flight,
        "seconds_until_all_in_flight": round(held_after, 2),
        "programs_alive": len(programs),
        "helper_processes": len(helpers),
        "helper_pss_mb": round(helper_pss / 2**20, 1),
        "helper_pss_per_run_kb": round(helper_pss / max(1, in_flight) / 1024, 1),
        "training_process_pss_growth_per_run_kb": round(own / max(1, in_flight) / 1024, 1),
        "helpers_by_command_mb": {k: round(v / 2**20, 1) for k, v in by_name.items()},
        "failed": len(handler.failed),
    }
    if buffers is not None:
        out["pool_buffers_per_run_kb"] = round(buffers / max(1, in_flight) / 1024, 2)
    return out


def measure_in_flight(kind: str, program: str, n_workers: int, n_runs: int) -> dict:
    from lightning_online import ExternalSolver

    solver = ExternalSolver(
        [program, "-", "20", "4096", "50"], fields=["x", "y"], launcher="direct", n_steps=20
    )
    handler = Handler(n_runs)
    pool = _pool(kind, solver, n_workers, handler)
    counts: list[tuple[float, int, int]] = []  # time, programs alive, runs handed out - ended
    per_run: list[float] = []  # the pool's connection buffers per run in flight (after)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            _, programs = _descendants(program)
            counts.append((time.monotonic(), len(programs), handler.given - handler.ends))
            hub = getattr(pool, "_hub", None)
            if kind == "after" and hub is not None and hub.in_flight:
                try:  # read from another thread than the receiver's: retry another time
                    per_run.append(hub.buffer_bytes() / hub.in_flight)
                except RuntimeError:
                    pass

    t0 = time.monotonic()
    pool.start(timeout=600)
    started = time.monotonic() - t0
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t1 = time.monotonic()
    last_given = None
    try:
        while not handler.done.wait(0.05):
            if last_given is None and not handler.tasks:
                last_given = time.monotonic()
            if pool.error is not None:
                raise RuntimeError("the pool failed") from pool.error
        wall = time.monotonic() - t1
    finally:
        stop.set()
        sampler.join()
        pool.stop()
    end = last_given or time.monotonic()
    steady = [c for t, c, _ in counts if t1 + 1.0 <= t <= end] or [c for _, c, _ in counts]
    return {
        "n_workers": n_workers,
        "runs": n_runs,
        "pool_start_s": round(started, 2),
        "programs_in_flight_mean": round(sum(steady) / max(1, len(steady)), 1),
        "programs_in_flight_max": max((c for _, c, _ in counts), default=0),
        "wall_s": round(wall, 2),
        "samples_per_s": round(handler.samples / wall, 1),
        "run_s_ideal": 19 * 0.05,
        "failed": len(handler.failed),
        "first_failure": handler.failed[0] if handler.failed else "",
        **({"pool_buffers_per_run_kb": round(max(per_run) / 1024, 1)} if per_run else {}),
    }


def child(a: argparse.Namespace) -> None:
    result = {
        "memory": [measure_memory(a.child, a.program, n) for n in a.hold],
        "in_flight": measure_in_flight(a.child, a.program, a.workers, a.runs),
    }
    print(json.dumps(result))


# -- the driver --------------------------------------------------------------------------------


def build_program(out: Path) -> str:
    sys.path.insert(0, str(ROOT))
    from lightning_online.client import build

    cc = shutil.which("cc") or shutil.which("gcc")
    flags = ("-O2", "-std=c99", "-D_POSIX_C_SOURCE=200809L")
    return str(build([GATE_SOURCE], out / "lo_ext_gate", compiler=cc, flags=flags))


def extract(rev: str, into: Path) -> Path:
    """The package as of git revision ``rev``, unpacked under ``into`` (read-only on git)."""
    data = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "lightning_online"],
        check=True,
        capture_output=True,
    ).stdout
    tar = into / "src.tar"
    tar.write_bytes(data)
    with tarfile.open(tar) as t:
        t.extractall(into / "src", filter="data")
    return into / "src"


def run_child(kind: str, tree: Path, program: str, a: argparse.Namespace) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--program", program]
    cmd += ["--hold", *map(str, a.hold), "--workers", str(a.workers), "--runs", str(a.runs)]
    # Not from the repository: a process started with python -m (the old solver sandboxes)
    # would import the lightning_online of its working directory, whatever the tree measured.
    out = subprocess.run(
        cmd,
        env=env,
        cwd=tree.parent if tree != ROOT else tempfile.gettempdir(),
        capture_output=True,
        text=True,
        timeout=3600,
        start_new_session=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{kind} measurement failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (~30 s): the smoke test")
    p.add_argument("--before", metavar="REV", help="also measure the package of this revision")
    p.add_argument("--hold", type=int, nargs="+", default=None, help="runs held in flight (1)")
    p.add_argument("--workers", type=int, default=64, help="runs allowed in flight (2)")
    p.add_argument("--runs", type=int, default=None, help="runs in (2); default 4 x workers")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--child", choices=["before", "after"], help=argparse.SUPPRESS)
    p.add_argument("--program", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.quick:
        a.workers = min(a.workers, 16)
        a.hold = a.hold or [16]
    a.hold = a.hold or [64, 1000]
    a.runs = a.runs or 4 * a.workers
    if a.child:
        child(a)
        return
    with tempfile.TemporaryDirectory() as tmp:
        program = build_program(Path(tmp))
        result = {
            "config": {"hold": a.hold, "workers": a.workers, "runs": a.runs, "quick": a.quick},
            "after": run_child("after", ROOT, program, a),
        }
        if a.before:
            old = a.hold if a.quick else [h for h in a.hold if h <= 64] or [a.hold[0]]
            b = argparse.Namespace(**{**vars(a), "hold": old})
            result["before"] = run_child("before", extract(a.before, Path(tmp)), program, b)
            result["before"]["revision"] = a.before
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
