"""The tests' view of a real SLURM: does one answer here, how many nodes, and how to run a job on
it to its end. ``recipes/slurm/local-cluster.sh up [--nodes 2]`` starts one on this machine
(``.ci/run`` does); ``SLURM_CONF`` names its configuration, and when it is unset the script's
default place is tried, so that a developer's ``local-cluster.sh up`` is found without it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from functools import cache
from pathlib import Path

DEFAULT_CONF = Path(os.environ.get("LO_SLURM_DIR", "/tmp/lightning-online-slurm")) / "slurm.conf"
if "SLURM_CONF" not in os.environ and DEFAULT_CONF.exists():
    os.environ["SLURM_CONF"] = str(DEFAULT_CONF)


@cache
def idle_nodes() -> int:
    """Nodes of a real SLURM that answer ``sinfo`` here (0: none, or no SLURM at all)."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return 0
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return 0
    if out.returncode:
        return 0
    return len(
        {line.split()[0] for line in out.stdout.splitlines() if "idle" in line or "mix" in line}
    )


def slurm_dir() -> Path | None:
    """The folder of a local-cluster.sh cluster (its daemons' logs), if that is the one here."""
    conf = os.environ.get("SLURM_CONF")
    return Path(conf).parent if conf and (Path(conf).parent / "log").is_dir() else None


#: States of a job that has not ended yet ("UNKNOWN": scontrol did not answer this time).
NOT_ENDED = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "UNKNOWN")


def job_state(job: str) -> str:
    """The job's state; "GONE" once slurmctld has forgotten it (``MinJobAge`` after its end:
    30 s on local-cluster.sh's cluster, so poll while it runs), "UNKNOWN" if scontrol failed."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=10
        )
    except subprocess.TimeoutExpired:
        return "UNKNOWN"
    m = re.search(r"JobState=(\S+)", out.stdout)
    if m:
        return m.group(1)
    return "GONE" if "Invalid job id" in out.stderr else "UNKNOWN"


def wait_job(job: str, timeout: float) -> str:
    """Poll (every 0.2 s: ``sbatch --wait`` polls every few seconds) until the job has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = job_state(job)
        if state not in NOT_ENDED:
            return state
        time.sleep(0.2)
    subprocess.run(["scancel", job], timeout=10)
    raise TimeoutError(f"job {job} still running after {timeout} s (cancelled)")


def steps_by_node(job: str) -> dict[str, int]:
    """How many job steps of ``job`` (beyond the first, the training step) each node's slurmd
    launched, from the daemons' logs of a local-cluster.sh cluster."""
    where = slurm_dir()
    assert where is not None, "needs recipes/slurm/local-cluster.sh's logs"
    counts = {}
    for log in sorted((where / "log").glob("slurmd.*.log")):
        node = log.name.split(".")[1]
        found = re.findall(rf"launch task StepId={job}\.(\d+) ", log.read_text())
        counts[node] = len({int(s) for s in found} - {0})
    return counts
