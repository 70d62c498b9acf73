"""kill -9 of the trainer, then ``fit(ckpt_path=...)`` resumes the study where it stood."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_processes import assert_none_left, env_with_marker

HERE = Path(__file__).parent
SCRIPT = HERE / "scripts" / "resumable_fit.py"


@pytest.mark.timeout(240)
def test_resume_after_kill_9_honours_the_budget_and_skips_finished_runs(tmp_path):
    env, marker = env_with_marker()
    ckpt, out = tmp_path / "ckpt", tmp_path / "out.json"
    first = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(ckpt), str(out)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert first.stdout.readline().strip() == "READY"
        os.kill(first.pid, signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    assert_none_left(marker)  # workers and solver sandboxes died with the trainer
    state = torch.load(ckpt / "last.ckpt", weights_only=False)["OnlineDataModule"]["study"]
    done_before = {tuple(t) for _, t in state["completed"]}
    assert 0 < len(done_before) < 16
    assert state["counters"]["completed"] == len(done_before)

    second = subprocess.run(
        [sys.executable, str(SCRIPT), str(ckpt), str(out), "resume"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        start_new_session=True,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    result = json.loads(out.read_text())
    stats = result["stats"]
    assert stats["completed"] == 16  # the budget, exactly, across the interruption
    launched = [tuple(t) for t in result["launched"]]
    before = len(state["launched"])
    assert launched[:before] == [tuple(t) for _, t in state["launched"]]
    relaunched = launched[before:]
    assert not done_before & set(relaunched)  # finished runs are not run again
    unfinished = {tuple(t) for t, _ in state["unfinished"]}
    assert unfinished <= set(relaunched)  # runs in flight at the checkpoint run again
    assert len(set(relaunched)) == 16 - len(done_before)
    assert_none_left(marker)
