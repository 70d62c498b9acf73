"""Smoke versions of the benchmark scripts: each completes and writes its table and files.

The real figures come from running the scripts with their defaults (docs/benchmarks.md); these
runs are tiny and assert nothing about speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
pytestmark = pytest.mark.timeout(240)

CASES = {
    "throughput": ["--steps", "30", "--warmup", "10", "--batch", "16", "--repeats", "1"],
    "transport": ["--sizes", "1024", "--messages", "60", "--repeats", "1"],
    "online_vs_offline": [
        "--runs",
        "2",
        "--steps",
        "10",
        "--nx",
        "8",
        "--n-steps",
        "10",
        "--repeats",
        "1",
    ],
    "steering_overhead": ["--steps", "30", "--repeats", "1", "--hidden", "16", "--batch", "8"],
    "recording_overhead": [
        "--runs",
        "2",
        "--nx",
        "8",
        "--n-steps",
        "10",
        "--batch",
        "8",
        "--repeats",
        "1",
        "--gzip",
    ],
    "sample_efficiency": ["--quick"],
}


def run(script: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, str(BENCH / f"{script}.py"), *args],
        capture_output=True,
        text=True,
        timeout=220,
        cwd=tmp_path,
        start_new_session=True,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.parametrize("script", list(CASES))
def test_benchmark_smoke(script, tmp_path):
    out = run(script, [*CASES[script], "--out", str(tmp_path)], tmp_path)
    assert "|" in out.stdout or "ratio" in out.stdout  # a table was printed
    written = list(tmp_path.glob("*.json"))
    assert written, out.stdout[-2000:]
    for path in written:
        json.loads(path.read_text())
    pytest.importorskip("matplotlib")
    assert list(tmp_path.glob("*.png"))


def test_memory_benchmark_smoke(tmp_path):
    target = tmp_path / "memory.json"
    out = run(
        "memory",
        ["--capacity", "200", "--sample-kb", "1", "--passes", "3", "--out", str(target)],
        tmp_path,
    )
    assert "growth" in out.stdout
    result = json.loads(target.read_text())
    assert result["stream_in_capacities"] >= 2
    assert target.with_suffix(".png").exists()


def test_scaling_benchmark_smoke(tmp_path):
    psutil = pytest.importorskip("psutil")
    out = run("scaling", ["--quick", "--out", str(tmp_path)], tmp_path)
    for heading in ("(1) samples/s", "(2) maximum rate", "(3) runs of", "launch overhead"):
        assert heading in out.stdout, out.stdout[-2000:]
    assert "ranks for 1000" in out.stdout
    result = json.loads((tmp_path / "scaling.json").read_text())
    assert [r["n_workers"] for r in result["rate_vs_runs"]] == [1, 2]
    assert all(r["received"]["median"] > 0 for r in result["rate_vs_runs"])
    assert set(result["external"]) >= {"ExternalSolver, direct", "ExternalSolver, mpiexec -n 1"}
    assert all(v["ranks_for_N"] >= 1 for v in result["estimate"].values())
    assert all(v["ratio"] > 0 for v in result["ingest_vs_raw"].values())

    # nothing the script started (MPI workers, sandboxes, solver programs, mpiexec) outlives it:
    # they all run in its working directory, tmp_path
    def left() -> list:
        found = []
        for p in psutil.process_iter(["cwd", "cmdline"]):
            if p.info["cwd"] and Path(p.info["cwd"]).is_relative_to(tmp_path):
                found.append(p.info["cmdline"])
        return found

    deadline = time.monotonic() + 10
    while left() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left()
    pytest.importorskip("matplotlib")
    assert (tmp_path / "scaling.png").exists()


def test_scaling_ingest_only_smoke(tmp_path):
    args = ["--ingest-only", "--ingest-kb", "64", "--max-workers", "1", "--repeats", "1"]
    args += ["--warmup", "0.3", "--window", "0.6", "--batch", "8", "--out", str(tmp_path)]
    out = run("scaling", args, tmp_path)
    assert "ingest of 64 KB samples into one rank / raw mpi4py" in out.stdout, out.stdout[-2000:]
    result = json.loads((tmp_path / "scaling_ingest.json").read_text())
    assert set(result) == {
        "Python solver, 1 runs",
        "ExternalSolver (Python client, direct), 1 runs",
    }
    assert all(v["ratio"]["median"] > 0 for v in result.values())


def test_agreement_benchmark_smoke(tmp_path):
    out = run("agreement", ["--quick", "--out", str(tmp_path)], tmp_path)
    assert "of a 10 ms step" in out.stdout
    result = json.loads((tmp_path / "agreement.json").read_text())
    two = result["ranks"]["2"]
    assert two["sync_us"]["median"] > 0 and two["all_gather_us"]["median"] > 0


def test_external_inflight_benchmark_smoke(tmp_path):
    target = tmp_path / "external_inflight.json"
    run("external_inflight", ["--quick", "--out", str(target)], tmp_path)
    result = json.loads(target.read_text())
    assert result["config"]["quick"] and result["after"], result
