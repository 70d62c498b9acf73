"""benchmarks/gpu.py, the GPU check, tested without a GPU: its ``--dry-run`` runs the three checks
on CPU (gloo) and writes its JSON; without CUDA and without ``--dry-run`` it refuses with exit
code 2; a check that fails is reported with its exception, and the known ActiveSampling/NCCL bug is
recognised as such."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.py"


@pytest.fixture(scope="module")
def gpu():
    spec = importlib.util.spec_from_file_location("benchmarks_gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        start_new_session=True,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )


def positive(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("no_orphans")
def test_dry_run_runs_the_three_checks_on_cpu(tmp_path):
    target = tmp_path / "out" / "gpu.json"
    out = run_script(["--dry-run", "--out", str(target)], tmp_path, timeout=280)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "DRY RUN" in out.stdout
    assert "stream / TensorDataset" in out.stdout  # the P1 table was printed
    result = json.loads(target.read_text())

    assert result["dry_run"] is True and result["accelerator"] == "cpu"
    assert result["ddp_backend"] == "gloo"
    assert result["versions"]["torch"] == torch.__version__
    assert result["versions"]["lightning"]
    assert set(result["checks"]) == {"p1", "recipe", "ddp"}
    for name, check in result["checks"].items():
        assert check["status"] == "pass", (name, check.get("error"), check.get("log_tail"))
        assert check["error"] is None and positive(check["wall_s"])
    assert result["all_passed"] is True

    p1 = result["checks"]["p1"]["result"]
    assert p1["config"]["repeats"] == 1
    assert "tensordataset" in p1["sides"]
    streams = set(p1["sides"]) - {"tensordataset"}
    assert streams and set(p1["ratio_vs_tensordataset"]) == streams
    for ratio in p1["ratio_vs_tensordataset"].values():
        assert all(positive(ratio[k]) for k in ("median", "min", "max")), ratio
    for rate in p1["samples_per_s"].values():
        assert positive(rate["median"])
    if p1["pin_memory_arg"]:
        assert "stream_not_pinned" in streams
    else:
        assert streams == {"stream_default"} and "no pin_memory" in p1["note"]

    recipe = result["checks"]["recipe"]["result"]
    assert recipe["device"] == "cpu"
    assert recipe["stats"]["completed"] == recipe["n_simulations"] == 4
    assert positive(recipe["val_sim_loss_mean"]) and positive(recipe["fit_s"])

    ddp = result["checks"]["ddp"]["result"]
    assert ddp["backend"] == "gloo" and ddp["world_size"] == 1
    assert ddp["updates"] >= 1  # ActiveSampling's reduce through the strategy ran


@pytest.mark.timeout(120)
def test_without_cuda_it_refuses_with_exit_code_2(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the script would run")
    target = tmp_path / "gpu.json"
    out = run_script(["--out", str(target)], tmp_path, timeout=100)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "no CUDA GPU" in out.stderr and "--dry-run" in out.stderr
    assert not target.exists()


@pytest.mark.timeout(180)
@pytest.mark.usefixtures("no_orphans")
def test_a_failing_check_is_reported_with_its_exception(gpu):
    if torch.distributed.is_nccl_available():
        pytest.skip("NCCL is built in here: asking for it on CPU would not fail the same way")
    plan = gpu.settings(True, False)["ddp"]
    plan["params"]["backend"] = "nccl"  # not built into a CPU torch: the fit raises
    record = gpu.run_check("ddp", plan)
    assert record["status"] == "fail" and record["returncode"] == 1 and not record["killed"]
    assert record["error"].startswith("RuntimeError") and "NCCL" in record["error"]
    assert "Traceback" in record["traceback"] and record["log_tail"]


def test_p1_sides_follow_the_pin_memory_argument(gpu):
    assert gpu.p1_sides(False, True) == {"tensordataset": True, "stream_default": None}
    assert gpu.p1_sides(True, True) == {
        "tensordataset": True,
        "stream_pinned": True,
        "stream_not_pinned": False,
    }
    # pin_memory=True is refused without CUDA: the default (not pinned there) stands in
    assert gpu.p1_sides(True, False) == {
        "tensordataset": True,
        "stream_default": None,
        "stream_not_pinned": False,
    }


def test_pin_memory_argument_is_detected(gpu):
    class With:
        def __init__(self, solver, space, *, n_simulations, pin_memory: bool | None = None):
            pass

    class Without:
        def __init__(self, solver, space, *, n_simulations):
            pass

    assert gpu.pin_memory_supported(With) is True
    assert gpu.pin_memory_supported(Without) is False


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("no_orphans")
def test_a_check_past_its_timeout_is_stopped_and_reported(gpu):
    plan = gpu.settings(True, False)["p1"]
    plan["timeout"] = 1  # still importing torch by then
    record = gpu.run_check("p1", plan)
    assert record["status"] == "timeout" and record["killed"] and not record["hung_at_exit"]
    assert record["returncode"] != 0 and "no result within 1 s" in record["error"]
    # Stopped at its timeout, not when it would have ended: the stop took less than twice what
    # the check needs before it can do anything (importing torch and Lightning), measured now.
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, lightning"], check=True)
    imports = time.perf_counter() - t0
    assert record["wall_s"] - record["timeout_s"] < 2 * imports, (record["wall_s"], imports)
