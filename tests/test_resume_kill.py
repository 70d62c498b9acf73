"""kill -9 of the whole training job (every rank), then a resume from its last periodic
checkpoint: under DDP (2 CPU ranks, gloo) and with external solver programs. The resumed study
starts exactly the runs that had not completed and trains on every sample of a completed run
exactly once (a run in flight at the checkpoint runs again, whole)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MARKER, solver_processes

HERE = Path(__file__).parent
SCRIPT = HERE / "scripts" / "resume_exact_fit.py"
STEPS = 20


def _key(x) -> tuple[float, ...]:
    return tuple(float(v) for v in np.round(np.asarray(x, dtype=np.float64), 5))


def _samples_of(theta) -> list[tuple[float, ...]]:
    x = np.array([[*theta, k / STEPS] for k in range(STEPS)], dtype=np.float32)
    return [_key(r) for r in x.astype(np.float64)]


def _kill_and_resume(tmp_path: Path, *flags: str) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(HERE) + os.pathsep + env.get("PYTHONPATH", "")
    ckpt, out = tmp_path / "ckpt", tmp_path / "out.json"
    cmd = [sys.executable, str(SCRIPT), str(ckpt), str(out), *flags]
    first = subprocess.Popen(
        cmd,
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert first.stdout.readline().strip() == "READY"
        os.killpg(first.pid, signal.SIGKILL)  # every rank of the job at once, as a scheduler does
        first.wait(30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    deadline = time.monotonic() + 15  # workers, sandboxes and programs end with their trainer
    while solver_processes(os.environ[MARKER]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not solver_processes(os.environ[MARKER])

    saved = torch.load(ckpt / "last.ckpt", weights_only=False)
    state = saved["OnlineDataModule"]["study"]
    done_before = [tuple(t) for _, t in state["completed"]]
    # every run completed when the checkpoint was taken is recorded as completed
    ledger = next(v for k, v in saved["callbacks"].items() if k.startswith("Ledger"))
    assert 0 < len(ledger["done"]) < 16
    assert {tuple(t) for t in ledger["done"]} <= set(done_before)

    second = subprocess.run(
        [*cmd, "--resume"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=200,
        start_new_session=True,
    )
    assert second.returncode == 0, second.stderr[-4000:]
    result = json.loads(out.read_text())
    stats = result["stats"]
    assert stats["completed"] == 16 and stats["failed"] == 0
    # exactly the runs that had not completed are started by the resumed study
    assert stats["launched"] - state["counters"]["launched"] == 16 - len(done_before)
    completed = [tuple(t) for _, t in result["completed"]]
    assert len(set(completed)) == 16 and set(done_before) <= set(completed)
    trained = Counter(_key(x) for x in result["seen"])
    once = Counter(s for theta in done_before for s in _samples_of(theta))
    missing = once - trained
    assert not missing, f"{sum(missing.values())} samples of completed runs never trained on"
    # (under DDP a rank that has drained repeats its last batch while the other still serves)
    repeated = sum(trained[s] - 1 for s in once if trained[s] > 1)
    assert repeated <= stats["samples_replayed"], f"{repeated} samples trained on twice"
    later = {s for theta in completed for s in _samples_of(theta)}
    assert later <= set(trained) and set(trained) == later  # all of them, nothing else


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("no_orphans")
def test_kill_9_of_a_ddp_job_then_resume_trains_every_completed_sample_once(tmp_path):
    _kill_and_resume(tmp_path, "--ddp")


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("no_orphans")
def test_kill_9_with_external_programs_then_resume_trains_every_completed_sample_once(tmp_path):
    _kill_and_resume(tmp_path, "--external")
