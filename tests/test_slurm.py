"""SLURM without a cluster: the tests' stand-in ``srun`` (tests/programs/srun) on PATH runs the
same command lines locally, so the training job and its job steps are started exactly as on a
cluster: training ranks by ``srun --mpi=none``, each solver run as an ``srun`` step.

Only for machines without SLURM: where a real one answers ``sinfo`` (``.ci/run`` starts one with
recipes/slurm/local-cluster.sh), these skip and tests/test_slurm_real.py runs the same job
script, steps and faults on it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from _slurm import idle_nodes
from test_processes import assert_none_left, run_marked

from lightning_online import ExternalSolver, Srun

HERE = Path(__file__).parent
ROOT = HERE.parent
PROGRAM = str(HERE / "programs" / "lo_ext_client.py")
pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        idle_nodes() > 0,
        reason="a real SLURM answers sinfo here: tests/test_slurm_real.py ran on it instead",
    ),
]


@pytest.fixture
def slurm_env(tmp_path, monkeypatch):
    """Inside an 'allocation': the stand-in srun first on PATH and the job's variables set."""
    path = os.pathsep.join([str(HERE / "programs"), str(Path(sys.executable).parent)])
    monkeypatch.setenv("PATH", path + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_NAME", "lightning-online-test")
    monkeypatch.setenv("SRUN_STANDIN_LOG", str(tmp_path / "srun.log"))
    return tmp_path / "srun.log"


def test_each_run_is_an_srun_step(slurm_env):
    solver = ExternalSolver(
        [sys.executable, PROGRAM, "--steps", "3"],
        fields=["x", "y"],
        n_procs=2,
        launcher=Srun(cpus_per_task=1),
        n_steps=3,
    )
    steps = list(solver(np.array([0.5, 0.25])))
    assert len(steps) == 3
    np.testing.assert_array_equal(steps[2][0], np.array([0.5, 0.25, 2 / 3], np.float32))
    call = slurm_env.read_text().splitlines()
    assert len(call) == 1
    assert call[0].startswith(
        "srun --ntasks=2 --cpus-per-task=1 --kill-on-bad-exit=1 "
        "--job-name=lightning-online-run --exact --mpi=pmi2 "
    )


def test_training_job_under_srun_with_runs_as_srun_steps(slurm_env, tmp_path):
    """``srun --mpi=none --ntasks=2 python train.py``: Lightning's SLURMEnvironment, 2 DDP ranks,
    each spawning its own workers, every solver run an ``srun --ntasks=2`` step."""
    train = [sys.executable, HERE / "scripts" / "slurm_fit.py", "result"]
    # slurm_env put the stand-in srun and the job's variables into os.environ, which is passed on
    _, marker = run_marked(["srun", "--mpi=none", "--ntasks=2", *train], tmp_path, timeout=200)
    ranks = [json.loads((tmp_path / f"result.{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]
    assert ranks[0]["env"] == "SLURMEnvironment"
    assert ranks[0]["stats"]["completed"] == 8 and ranks[0]["stats"]["failed"] == 0
    assert ranks[0]["stats"]["samples_received"] == 48  # 8 runs x 6 steps, over both ranks
    steps = [c for c in slurm_env.read_text().splitlines() if "--mpi=none" not in c]
    assert len(steps) == 8 and all(c.startswith("srun --ntasks=2 ") for c in steps)
    assert_none_left(marker)


def test_the_cluster_recipe_runs_its_study_with_the_stand_in_srun(slurm_env, tmp_path):
    """recipes/heat2d_c.sbatch as sbatch would run it (a bash script in the submit folder):
    builds the C solver, starts 2 training ranks with srun, every run an srun step of 2 ranks."""
    short = '[build/heat2d, --nx, "16", --ny, "16", --n-steps, "5", --parts]'
    tiny = [
        f"--data.solver.init_args.command={short}",
        "--data.solver.init_args.n_steps=5",
        "--data.n_simulations=6",
        "--data.val_parameters=2",
        "--data.batch_size=8",
        "--data.buffer.init_args.capacity=64",
        "--data.buffer.init_args.watermark=8",
        "--trainer.max_steps=20",
        "--trainer.val_check_interval=3",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    _, marker = run_marked(
        ["bash", ROOT / "recipes/heat2d_c.sbatch", *tiny],
        tmp_path,
        timeout=220,
        TRAINING_TASKS="2",
        ACCELERATOR="cpu",
        RECIPE=str(ROOT / "recipes/heat2d_c.yaml"),
    )
    assert (tmp_path / "build" / "heat2d").exists()
    log_dir = tmp_path / "lightning_logs" / "version_4242"  # under SLURM: the job's id
    summary = json.loads((log_dir / "study_summary.json").read_text())
    assert summary["runs_completed"] == 6 and summary["runs_failed"] == 0
    calls = slurm_env.read_text().splitlines()
    assert calls[0].startswith("srun --mpi=none --nodes=1 --ntasks=2 --ntasks-per-node=2 --overlap")
    steps = [c for c in calls[1:] if c.startswith("srun --ntasks=2 ")]
    assert len(steps) == 6 + 2  # the runs and the validation runs, each a job step
    assert_none_left(marker)
