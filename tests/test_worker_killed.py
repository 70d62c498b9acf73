"""The MPI worker process itself killed during a study (not its solver sandbox: that is a failed
run, tests/test_faults.py). Documented in docs/cluster.md (known limits): the mpich wheel's
process manager then kills the whole MPI job, trainer included; nothing is left behind."""

from __future__ import annotations

import signal
import subprocess
import sys

import psutil
import pytest
from test_processes import HERE, assert_none_left, env_with_marker

pytestmark = pytest.mark.timeout(180)


def workers_of(pid: int) -> list[psutil.Process]:
    """The MPI workers among the trainer's descendants (spawned through its process manager)."""
    return [
        p
        for p in psutil.Process(pid).children(recursive=True)
        if "lightning_online._transport.worker" in " ".join(p.cmdline())
    ]


def test_a_killed_worker_ends_the_whole_job_and_leaves_nothing(tmp_path):
    env, marker = env_with_marker()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "scripts" / "interruptible_fit.py")],
        env=env,
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "READY"  # training has started
        workers = workers_of(proc.pid)
        assert len(workers) == 2, workers  # n_workers=2, both running a run
        sandboxes = [c for w in workers for c in w.children()]
        assert len(sandboxes) == 2 and all(
            "lightning_online._transport.runner" in " ".join(s.cmdline()) for s in sandboxes
        )
        workers[0].send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)  # it does not hang
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # The process manager killed the trainer (no StudyError, no message: see docs/cluster.md).
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, err[-3000:])
    assert_none_left(marker)  # the other worker, both sandboxes, the process manager
