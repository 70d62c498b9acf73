"""Process hygiene: plain python and mpiexec launch, interrupts, and nothing left behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import torch

HERE = Path(__file__).parent
pytestmark = pytest.mark.timeout(180)

USER_SCRIPT = """
import json, sys
import numpy as np, lightning.pytorch as pl
sys.path.insert(0, {here!r})
from _models import Regressor
from lightning_online import OnlineDataModule, ParameterSpace, FIFO

def my_solver(theta):
    for k in range(5):
        x = np.array([theta[0], k], np.float32)
        yield x, (2.0 * x[:1]).astype(np.float32)

if __name__ == "__main__":
    dm = OnlineDataModule(my_solver, ParameterSpace([0], [1]), n_simulations=4, batch_size=4,
                          buffer=FIFO(20, 4))
    pl.Trainer(max_steps=1000, logger=False, enable_checkpointing=False,
               enable_progress_bar=False).fit(Regressor(2, 1), dm)
    print(json.dumps(dict(dm.stats)))
"""


def marked_processes(marker: str) -> list[psutil.Process]:
    """Every process on the machine whose environment carries this test's marker."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("LIGHTNING_ONLINE_TEST_MARKER") == marker:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def assert_none_left(marker: str) -> None:
    deadline = time.monotonic() + 15
    while marked_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = marked_processes(marker)
    assert not left, [(p.pid, p.cmdline()) for p in left]


def env_with_marker() -> tuple[dict[str, str], str]:
    marker = uuid.uuid4().hex
    env = dict(os.environ, LIGHTNING_ONLINE_TEST_MARKER=marker)
    env["PYTHONPATH"] = str(HERE) + os.pathsep + env.get("PYTHONPATH", "")
    return env, marker


def run_marked(
    cmd: list[str], cwd: Path, timeout: float, **extra_env: str
) -> tuple[subprocess.CompletedProcess, str]:
    """Run a training command to its end in a session of its own (the mpich process manager
    kills the process group of a trainer that dies), with this test's marker; it must succeed."""
    env, marker = env_with_marker()
    env.update(extra_env)
    out = subprocess.run(
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return out, marker


def test_workers_inherit_the_marker_so_the_checks_below_can_fail(tmp_path):
    # Guards the other tests: the marker must reach workers and solver sandboxes.
    env, marker = env_with_marker()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "scripts" / "interruptible_fit.py")],
        env=env,
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "READY"
        names = " ".join(" ".join(p.cmdline()) for p in marked_processes(marker))
        assert (
            "lightning_online._transport.worker" in names
            and "lightning_online._transport.runner" in names
        )
    finally:
        proc.kill()
        proc.wait(30)


@pytest.mark.parametrize("launcher", ["python", "mpiexec"])
def test_user_script_runs_with_python_and_under_mpiexec(tmp_path, launcher):
    script = tmp_path / "user_script.py"
    script.write_text(USER_SCRIPT.format(here=str(HERE)))
    cmd = [sys.executable, str(script)]
    if launcher == "mpiexec":
        mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which(
            "mpiexec"
        )
        assert mpiexec, "mpiexec from the mpich wheel is missing"
        cmd = [mpiexec, "-n", "1", *cmd]
    out, marker = run_marked(cmd, tmp_path, timeout=150)
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    assert stats["completed"] == 4 and stats["samples_served"] == 20
    assert_none_left(marker)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_cleanly_and_leaves_nothing(tmp_path, sig):
    env, marker = env_with_marker()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "scripts" / "interruptible_fit.py"), str(tmp_path / "ckpt")],
        env=env,
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "READY"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_none_left(marker)
    # the user asked for checkpoints: a final one holds the study's progress
    ckpts = list((tmp_path / "ckpt").glob("*.ckpt"))
    assert ckpts, err[-2000:]
    study = torch.load(ckpts[0], weights_only=False)["OnlineDataModule"]["study"]
    assert study["counters"]["launched"] >= 2 and len(study["unfinished"]) >= 1


def test_two_training_ranks_under_mpiexec(tmp_path):
    """``mpiexec -n 2``: each MPI rank trains (DDP over gloo) and spawns its own workers."""
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or "mpiexec"
    cmd = [mpiexec, "-n", "2", sys.executable, HERE / "scripts" / "mpi_fit.py", "result"]
    _, marker = run_marked(cmd, tmp_path, timeout=150)
    ranks = [json.loads((tmp_path / f"result.{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]  # same stats and steps on both ranks
    assert ranks[0]["stats"]["completed"] == 12 and ranks[0]["stats"]["launched"] == 12
    assert_none_left(marker)
