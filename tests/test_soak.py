"""The soak's short variant (benchmarks/soak.py): a few hundred short runs with random faults;
the budget exact, every failure reported, no descriptor, thread or process leaked, RSS flat."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parent.parent / "benchmarks" / "soak.py"


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("no_orphans")
def test_a_short_soak_with_random_faults_leaks_nothing(tmp_path):
    # its own process: descriptors, threads and children are those of the soak alone
    done = subprocess.run(
        [sys.executable, str(SOAK), "--runs", "150", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert (tmp_path / "soak.json").exists(), done.stderr[-3000:]
    result = json.loads((tmp_path / "soak.json").read_text())
    assert result["problems"] == [], result
    assert done.returncode == 0, done.stderr[-3000:]
    assert result["runs"] == 150 and result["failed"] > 0
    assert set(result["faults_injected"]) >= {"raise", "sigkill", "nan", "shape"}


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("no_orphans")
def test_a_sandbox_start_up_does_not_count_toward_run_timeout():
    """Found by the soak: a run that followed a crash (a new sandbox: Python, imports, the
    solver unpickled) timed out before its solver began when start-up took longer than
    run_timeout; the clock now starts once the sandbox has loaded the solver."""
    from _hostile import SlowStart
    from _models import fit_study

    from lightning_online import Uniform

    dm, _ = fit_study(
        SlowStart(),
        n_simulations=6,
        sampler=Uniform(seed=3),
        run_timeout=0.5,
        max_retries=0,
        max_failed_fraction=0.9,
    )
    assert dm.stats["completed"] == 6
    failed = [r for r in dm.runs.values() if r.status == "failed"]
    assert failed and all("killed by SIGKILL" in r.reason for r in failed), [
        r.reason for r in failed
    ]
