"""The cluster path on a real SLURM (``slurmctld``, one ``slurmd`` per node, ``srun`` job steps,
PMI): the shipped job script submitted with ``sbatch --wait`` on one node and across two, a
study's solver runs as multi-rank job steps, ``scancel`` and a resuming job, job steps killed
mid-study, the process-manager interface of the steps, and the job's output file as a person
reads it. Runs wherever ``sinfo`` answers (``recipes/slurm/local-cluster.sh up --nodes 2`` on
one machine; ``.ci/run`` starts it); elsewhere these tests skip, and ``tests/test_slurm.py``
runs the same job script with a stand-in ``srun``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from _slurm import NOT_ENDED, idle_nodes, job_state, slurm_dir, steps_by_node, wait_job
from test_processes import assert_none_left, env_with_marker

from lightning_online import ExternalSolver, Mpiexec, Srun
from lightning_online.errors import ExternalRunError

HERE = Path(__file__).parent
ROOT = HERE.parent
PROGRAM = str(HERE / "programs" / "lo_ext_client.py")
pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        idle_nodes() == 0,
        reason="no real SLURM answers sinfo here (recipes/slurm/local-cluster.sh up starts one; "
        "tests/test_slurm.py runs with a stand-in srun instead)",
    ),
]
two_nodes = pytest.mark.skipif(
    idle_nodes() < 2, reason="needs 2 SLURM nodes (recipes/slurm/local-cluster.sh up --nodes 2)"
)
TINY = [
    '--data.solver.init_args.command=[build/heat2d, --nx, "16", --ny, "16", --n-steps, "5", --parts]',
    "--data.solver.init_args.n_steps=5",
    "--data.n_simulations=6",
    "--data.val_parameters=2",
    "--data.batch_size=8",
    "--data.buffer.init_args.capacity=64",
    "--data.buffer.init_args.watermark=8",
    "--trainer.max_steps=20",
    "--trainer.val_check_interval=5",
    "--monitor.plot=false",
]


@pytest.fixture(scope="module")
def heat2d(tmp_path_factory) -> Path:
    """The shipped C solver, built once with the mpich wheel's mpicc."""
    exe = tmp_path_factory.mktemp("build") / "heat2d"
    subprocess.run(
        [sys.executable, "-m", "lightning_online.client", "--build-example", "heat2d", "-o", exe],
        check=True,
        timeout=120,
    )
    return exe


def sbatch_wait(options: list[str], script: Path, args: list[str], cwd: Path, **env: str):
    """``sbatch --wait``: the job to its end; its id, exit status, output and this test's marker."""
    full, marker = env_with_marker()
    full.update(env)
    out = subprocess.run(
        ["sbatch", "--wait", "--parsable", "--output=job.out", *options, str(script), *args],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=280,
    )
    job = out.stdout.strip().split(";")[0]
    return job, out.returncode, (cwd / "job.out").read_bytes(), marker


def assert_readable(raw: bytes, n_validations: int) -> None:
    """The job's output file as a person reads it: plain lines, each thing said once."""
    assert raw.count(b"\r") == 0 and raw.count(b"\x1b") == 0, raw[-2000:]
    text = raw.decode()
    lines = text.splitlines()
    assert sum(line.startswith("training: from step 0") for line in lines) == 1, text
    assert sum(line.startswith("validation at step ") for line in lines) == n_validations, text
    assert any(
        re.match(r"step \d+(/\d+)? \| .* steps/s \| runs=\d+\+\d+/\d+ failed=\d+ buf=\d+%", x)
        for x in lines
    ), text
    assert "online study summary" in text
    said = Counter(x for x in lines if x.strip() and not set(x) <= set("-| "))
    assert not [x for x, n in said.items() if n > 1], said.most_common(5)
    assert "sync_dist" not in text and "[rank: 1]" not in text


def test_the_cluster_job_script_on_one_node(heat2d, tmp_path):
    """recipes/heat2d_c.sbatch with ``sbatch --wait`` on one node: 2 DDP training ranks, every
    run and validation run an srun step of the C solver on 2 MPI ranks (PMI2), to the end."""
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "heat2d").symlink_to(heat2d)
    job, rc, raw, marker = sbatch_wait(
        ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0"],
        ROOT / "recipes/heat2d_c.sbatch",
        [*TINY, f"--trainer.default_root_dir={tmp_path}"],
        tmp_path,
        TRAINING_TASKS="2",
        ACCELERATOR="cpu",
        RECIPE=str(ROOT / "recipes/heat2d_c.yaml"),
    )
    print(f"ran on the real SLURM: job {job}")
    assert rc == 0, raw.decode()[-4000:]
    summary = json.loads(
        (tmp_path / f"lightning_logs/version_{job}/study_summary.json").read_text()
    )
    assert summary["runs_completed"] >= 4 and summary["runs_failed"] == 0, summary
    assert summary["val_runs"] == 2
    if slurm_dir() is not None:  # every run and validation run was a job step (and nothing else)
        assert sum(steps_by_node(job).values()) == summary["runs_launched"] + 2
    assert_readable(raw, n_validations=4)
    assert_none_left(marker)


@two_nodes
def test_the_cluster_job_script_across_two_nodes(heat2d, tmp_path):
    """The same job script on two nodes: one DDP rank (gloo) per node, every run an srun step
    whose 2 MPI ranks sit on both nodes; the budget of 6 runs shared exactly by the 2 ranks."""
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "heat2d").symlink_to(heat2d)
    job, rc, raw, marker = sbatch_wait(
        ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0"],
        ROOT / "recipes/heat2d_c.sbatch",
        [
            *TINY,
            "--data.solver.init_args.launcher.init_args.nodes=2",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        tmp_path,
        TRAINING_NODES="2",
        TRAINING_TASKS="1",
        ACCELERATOR="cpu",
        RECIPE=str(ROOT / "recipes/heat2d_c.yaml"),
    )
    print(f"ran on the real SLURM, 2 nodes: job {job}")
    assert rc == 0, raw.decode()[-4000:]
    summary = json.loads(
        (tmp_path / f"lightning_logs/version_{job}/study_summary.json").read_text()
    )
    assert summary["runs_launched"] == 6 and summary["runs_failed"] == 0, summary
    assert "Starting with 2 processes" in raw.decode()
    if slurm_dir() is not None:
        by_node = steps_by_node(job)
        # both training ranks' steps: each step spans node1 and node2
        assert by_node["node1"] == by_node["node2"] == summary["runs_launched"] + 2, by_node
    assert_readable(raw, n_validations=4)
    assert_none_left(marker)


def _solve(heat2d: Path, launcher, theta=(300.0, 100.0, 500.0, 200.0, 400.0)):
    solver = ExternalSolver(
        [str(heat2d), "--nx", "16", "--ny", "16", "--n-steps", "4", "--parts"],
        fields=["x", "y"],
        n_procs=2,
        launcher=launcher,
        n_steps=4,
        connect_timeout=60,
    )
    return list(solver(np.array(theta)))


def test_steps_need_the_process_manager_interface_and_say_so(heat2d):
    """Without PMI (``--mpi=none``) both ranks of a step are singletons: the run fails with a
    message that says so and names the fix; with ``--mpi=pmi2`` (the default) the same program
    streams the same numbers as under the mpich wheel's mpiexec."""
    with pytest.raises(ExternalRunError) as err:
        _solve(heat2d, Srun(mpi="none"))
    text = str(err.value)
    assert "singleton (rank 0 of 1)" in text and "--mpi=none" in text, text
    assert "Srun(mpi='pmi2')" in text and "srun --mpi=list" in text, text
    got = _solve(heat2d, Srun())
    want = _solve(heat2d, Mpiexec())
    assert len(got) == 4
    for a, b in zip(got, want, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="this SLURM offers"):
        Srun(mpi="pmi9").check(2)


@two_nodes
def test_a_step_whose_mpi_ranks_span_two_nodes(heat2d):
    """``srun --nodes=2 --mpi=pmi2``: rank 0 on node1, rank 1 on node2 (mpich's inter-node path
    over loopback); the stream is the same as on one node."""
    got = _solve(heat2d, Srun(nodes=2))
    want = _solve(heat2d, Mpiexec())
    for a, b in zip(got, want, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    hosts = subprocess.run(
        ["srun", "--nodes=2", "--ntasks=2", "--mpi=pmi2", "hostname"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sorted(hosts.stdout.split()) == ["node1", "node2"], hosts


def _study_job(tmp_path: Path, name: str, cfg: dict, options: list[str], ntasks: int) -> Path:
    script = tmp_path / f"{name}.sbatch"
    script.write_text(
        "#!/bin/bash\n"
        f"srun --mpi=none --ntasks={ntasks} --overlap {sys.executable} "
        f"{HERE / 'scripts' / 'slurm_study.py'} {tmp_path / name} '{json.dumps(cfg)}'\n"
    )
    return script


def _wait_for(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in {path} after {timeout} s")


def test_scancel_stops_cleanly_and_a_second_job_resumes(tmp_path):
    """``scancel`` mid-study: the training rank stops on SLURM's SIGTERM with a checkpoint of
    the study, nothing is left running; a second job goes on from it to the end of the budget."""
    ckpt = tmp_path / "ckpt"
    cfg = {"n_simulations": 8, "steps": 40, "delay": 0.05, "ckpt": str(ckpt)}
    first = _study_job(tmp_path, "first", cfg, [], 1)
    env, marker = env_with_marker()
    out = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--nodes=1",
            "--ntasks=1",
            "--cpus-per-task=2",
            "-o",
            "first.out",
            first,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    job = out.stdout.strip().split(";")[0]
    _wait_for(tmp_path / "first.out", "READY", 150)
    subprocess.run(["scancel", job], check=True, timeout=30)
    assert wait_job(job, 90) == "CANCELLED"
    assert_none_left(marker)
    saved = sorted(ckpt.glob("*.ckpt"))
    assert saved, (tmp_path / "first.out").read_text()[-3000:]
    study = torch.load(saved[0], weights_only=False)["OnlineDataModule"]["study"]
    assert study["counters"]["launched"] >= 2 and len(study["unfinished"]) >= 1, study["counters"]
    cfg2 = {**cfg, "resume": str(saved[0])}  # the same study, or the resume is refused
    second = _study_job(tmp_path, "second", cfg2, [], 1)
    _, rc, raw, marker2 = sbatch_wait(
        ["--nodes=1", "--ntasks=1", "--cpus-per-task=2"], second, [], tmp_path
    )
    assert rc == 0, raw.decode()[-4000:]
    stats = json.loads((tmp_path / "second.json").read_text())["stats"]
    assert stats["completed"] == 8 and stats["launched"] >= 8, stats
    assert_none_left(marker2)


@two_nodes
def test_solver_steps_killed_on_one_node_are_retried_and_training_goes_on(tmp_path):
    """One DDP rank per node; every run a 2-rank srun step on one node. The steps running on
    node2 are killed (``scancel --signal=KILL job.step``) mid-study: those runs fail, are counted
    and retried, the budget is still met, the job ends with status 0, nothing is left."""
    cfg = {
        "n_simulations": 8,
        "steps": 30,
        "delay": 0.05,
        "step_nodes": 1,
        "devices": 1,
        "num_nodes": 2,
    }
    script = _study_job(tmp_path, "kill", cfg, [], 2)
    env, marker = env_with_marker()
    out = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--nodes=2",
            "--ntasks-per-node=1",
            "--cpus-per-task=2",
            "-o",
            "kill.out",
            script,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    job = out.stdout.strip().split(";")[0]
    _wait_for(tmp_path / "kill.out", "READY", 150)
    killed: set[str] = set()
    deadline = time.monotonic() + 60
    state = "RUNNING"
    # until two steps are killed or the job ends (slurmctld forgets an ended job after
    # MinJobAge, 30 s: waiting out the deadline after the end made wait_job see "GONE")
    while len(killed) < 2 and time.monotonic() < deadline:
        state = job_state(job)
        if state not in NOT_ENDED:
            break
        steps = subprocess.run(
            ["squeue", "-h", "-s", "-j", job, "-o", "%i %N %j"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split("\n")
        for line in steps:
            parts = line.split()
            if len(parts) == 3 and parts[1] == "node2" and parts[2] == "lightning-online-run":
                if parts[0] not in killed:
                    subprocess.run(["scancel", "--signal=KILL", parts[0]], timeout=10)
                    killed.add(parts[0])
        time.sleep(0.1)
    assert killed, "no solver step ran on node2"
    if state in NOT_ENDED:
        state = wait_job(job, 200)
    assert state == "COMPLETED", (tmp_path / "kill.out").read_text()[-4000:]
    stats = json.loads((tmp_path / "kill.json").read_text())["stats"]
    assert 1 <= stats["failed"] <= len(killed), (stats, killed)
    assert stats["completed"] == 8, stats
    assert_none_left(marker)
