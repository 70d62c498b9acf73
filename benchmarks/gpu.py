"""GPU check: the online data path, a recipe and DDP steering on one CUDA GPU, in three checks.

Run it on a machine with one CUDA GPU (and this package installed, ``pip install -e .``)::

    python benchmarks/gpu.py            # writes docs/benchmarks/gpu.json
    python benchmarks/gpu.py --quick    # fewer steps and repeats, a smaller study
    python benchmarks/gpu.py --dry-run  # no GPU needed: the same checks on CPU at tiny sizes (tests
                                        # the script; writes docs/benchmarks/gpu_dry_run.json)

Options: ``--out FILE`` (where the JSON goes), ``--only p1 recipe ddp`` (a subset of the checks).
Without ``--dry-run`` on a machine without CUDA it stops at once with exit code 2. Otherwise it
exits 0 when every check passed and 1 when one failed or timed out; the JSON and the table are
written in both cases (the JSON after each check, so a run stopped from outside keeps what it
measured). Each check runs in its own subprocess with a timeout (full run: 210 + 150 + 120 s at
most, so under 10 minutes whatever happens; expected about 3 minutes on one H200, 1.5 with
``--quick``, not yet measured there), so a crash or a hang of one does not stop the others. The
dry run takes about 20 s on 2 CPU cores.

The three checks:

``p1``: stream throughput on one GPU (P1 of docs/benchmarks.md, section 1, on a GPU). The MLP of
    benchmarks/throughput.py (6-256-256-1024), trained for ``steps`` steps and timed after
    ``warmup`` (CUDA synchronised at both ends), fed by (a) an in-memory ``TensorDataset``
    ``DataLoader`` (shuffled, ``pin_memory=True``) and (b) ``OnlineDataModule`` with a
    ``Reservoir`` kept full by a solver that yields precomputed arrays (``throughput.Precomputed``),
    once with ``pin_memory=True`` and once with ``pin_memory=False``. The sides alternate (their
    order rotates each repeat). If ``OnlineDataModule.__init__`` has no ``pin_memory`` argument,
    only its default is measured and ``pin_memory_arg`` is false. On a GPU the check also fails if
    the batches that reach the model are not pinned as asked.
``recipe``: ``recipes/heat2d.yaml`` through the package's CLI: ``OnlineCLI`` called in the check's
    own subprocess with the arguments of ``lightning-online fit --config recipes/heat2d.yaml
    --trainer.accelerator=gpu --trainer.devices=1`` (logs to a temporary folder); it passes when
    that process exits 0 after the study completed its budget on the expected device.
``ddp``: a short steered study (Heat2D, ``sampler=Breed``, ``ActiveSampling(update_every_n_steps=2)``)
    under ``Trainer(accelerator="gpu", devices=1, strategy=DDPStrategy(process_group_backend=
    "nccl"))``. It passes when the fit ends, ran on the expected backend and the callback made at
    least one sampler update (so its cross-rank gather ran). A failure is reported with its
    exception text and traceback. (``ActiveSampling`` gathers its statistics on the package's
    gloo group, never on the Trainer's NCCL one: this check confirms it on a GPU.)

``--dry-run`` runs the same three checks on CPU (``accelerator="cpu"``, gloo instead of NCCL, a few
steps, one repeat); its figures say nothing about a GPU.

The JSON:

* ``dry_run``, ``quick``: the mode; ``accelerator`` (``gpu`` or ``cpu``), ``ddp_backend``.
* ``versions``: ``python``, ``platform``, ``torch``, ``lightning``, ``lightning_online``,
  ``numpy``, ``cuda`` (the CUDA torch was built with), ``cudnn``, ``nccl``, ``gpu_name``,
  ``gpu_count``, ``gpu_memory_gib``, ``gpu_capability``, ``driver`` (null where unknown).
* ``started`` (UTC, ISO 8601), ``wall_s`` (the whole script), ``all_passed``.
* ``checks``: one entry per check (``p1``, ``recipe``, ``ddp``), each with

  * ``status``: ``pass``, ``fail`` (the check ran and failed, or its process died) or ``timeout``;
  * ``error``: the exception text (``Type: message``) or why it failed, null when it passed;
  * ``wall_s``, ``timeout_s``, ``returncode`` of its subprocess, ``killed`` (true when it had to be
    stopped at its timeout) and ``hung_at_exit`` (it had written its result, then did not exit);
  * ``result``: what the check measured (below), possibly partial when it failed;
  * ``traceback`` (when it raised) and ``log_tail`` (end of its output, when it did not pass).

* ``checks.p1.result``: ``config`` (steps, warmup, batch, hidden, repeats, threads),
  ``pin_memory_arg`` (whether ``OnlineDataModule`` takes ``pin_memory``), ``note``, ``sides``
  (name -> ``pin_memory`` passed to it, null for the default: ``tensordataset`` and, on a GPU,
  ``stream_pinned`` and ``stream_not_pinned``; without CUDA, where ``pin_memory=True`` is refused,
  ``stream_default`` and ``stream_not_pinned``; without the argument, ``stream_default`` only),
  ``samples_per_s`` (side -> median, min, max, n over the repeats), ``ratio_vs_tensordataset``
  (stream side -> median, min, max, n of the per-repeat ratio stream / TensorDataset samples/s;
  above 1 means the stream fed training faster),
  ``batches_pinned`` (side -> fraction of the first batches that reached the model pinned, null if
  not observed), ``repeats`` (per repeat: order and samples/s of each side), ``device``.
* ``checks.recipe.result``: ``args`` (the CLI arguments), ``fit_s`` (wall time of the CLI call),
  ``device`` (the trainer's root device), ``global_step``, ``val_sim_loss_mean`` (the last logged,
  null if none), ``metrics`` (the last value of every logged metric), ``stats`` (``dm.stats``:
  launched, completed, failed, samples received, ...), ``n_simulations``.
* ``checks.ddp.result``: ``config``, ``backend`` (the process group's, seen at train start),
  ``world_size``, ``device``, ``fit_s``, ``global_step``, ``updates`` (sampler updates made by
  ``ActiveSampling``), ``stats``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import inspect
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import cloudpickle
import lightning
import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
import throughput  # noqa: E402
from _common import OUT, summary, table  # noqa: E402
from throughput import D_IN, D_OUT, MLP, Clock, stream  # noqa: E402

from lightning_online import (  # noqa: E402
    ActiveSampling,
    Breed,
    OnlineDataModule,
    ParameterSpace,
    Reservoir,
)

# The solver is defined in throughput.py, which solver processes cannot import: send it by value.
cloudpickle.register_pickle_by_value(throughput)

CHECKS = ("p1", "recipe", "ddp")
TITLES = {
    "p1": "P1 stream throughput, pinned vs not",
    "recipe": "heat2d recipe through the CLI",
    "ddp": "DDP devices=1 + ActiveSampling",
}
IN_MEMORY_BATCHES = 64  # TensorDataset size in batches: an epoch restart every 64 steps only
PROBED_BATCHES = 10  # batches whose pinning is looked at (before timing starts)


# ---------------------------------------------------------------------------------- settings
def settings(dry_run: bool, quick: bool) -> dict[str, dict[str, Any]]:
    """Parameters and timeout (seconds) of each check in this mode."""
    acc = "cpu" if dry_run else "gpu"
    if dry_run:
        p1 = dict(steps=30, warmup=10, batch=16, hidden=32, repeats=1)
        recipe = [
            "--data.solver.init_args.n_steps=5",
            "--data.n_simulations=4",
            "--data.val_parameters=2",
            "--data.batch_size=8",
            "--data.buffer.init_args.capacity=64",
            "--data.buffer.init_args.watermark=8",
            "--trainer.val_check_interval=3",
            "--monitor.plot=false",
        ]
        ddp = dict(nx=8, n_steps=5, n_simulations=4, val=2, batch=8, capacity=64, max_steps=12)
        timeouts = {"p1": 60, "recipe": 60, "ddp": 60}
    elif quick:
        p1 = dict(steps=600, warmup=100, batch=256, hidden=256, repeats=2)
        recipe = ["--data.n_simulations=16", "--data.val_parameters=4"]
        ddp = dict(nx=16, n_steps=10, n_simulations=8, val=4, batch=32, capacity=512, max_steps=30)
        timeouts = {"p1": 150, "recipe": 120, "ddp": 120}
    else:
        p1 = dict(steps=1500, warmup=300, batch=256, hidden=256, repeats=3)
        recipe = []
        ddp = dict(nx=16, n_steps=20, n_simulations=8, val=4, batch=32, capacity=512, max_steps=60)
        timeouts = {"p1": 210, "recipe": 150, "ddp": 120}
    ddp |= dict(every=2, window=4, backend="gloo" if dry_run else "nccl")
    return {
        "p1": {"params": p1 | {"threads": 1, "accelerator": acc}, "timeout": timeouts["p1"]},
        "recipe": {
            "params": {"overrides": recipe, "accelerator": acc},
            "timeout": timeouts["recipe"],
        },
        "ddp": {"params": ddp | {"accelerator": acc}, "timeout": timeouts["ddp"]},
    }


def versions() -> dict[str, Any]:
    def dist(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    v: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "lightning_online": dist("lightning_online") or dist("lightning-online"),
        "numpy": np.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "nccl": None,
        "gpu_name": None,
        "gpu_count": 0,
        "gpu_memory_gib": None,
        "gpu_capability": None,
        "driver": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        v |= {
            "gpu_name": torch.cuda.get_device_name(0),
            "gpu_count": torch.cuda.device_count(),
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "gpu_capability": f"{props.major}.{props.minor}",
        }
        try:
            n = torch.cuda.nccl.version()
            v["nccl"] = ".".join(map(str, n)) if isinstance(n, tuple) else str(n)
        except (AttributeError, RuntimeError):
            pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            v["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, IndexError):
            pass
    return v


def jsonable(obj: Any) -> Any:
    """Plain JSON: numpy scalars and arrays as numbers and lists, NaN and infinities as null."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer | int):
        return int(obj)
    if isinstance(obj, np.floating | float):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


# ---------------------------------------------------------------------------------- p1
def pin_memory_supported(cls: type = OnlineDataModule) -> bool:
    """Whether ``OnlineDataModule`` takes ``pin_memory`` (added in parallel with this script)."""
    return "pin_memory" in inspect.signature(cls.__init__).parameters


def p1_sides(supported: bool, cuda: bool) -> dict[str, bool | None]:
    """Side name -> the ``pin_memory`` given to it (``None``: the default, not passed).

    ``OnlineDataModule`` refuses ``pin_memory=True`` without CUDA, so on a machine without it
    (``--dry-run``) its default (``None``: not pinned there) stands in for the pinned side."""
    if not supported:
        return {"tensordataset": True, "stream_default": None}
    if not cuda:
        return {"tensordataset": True, "stream_default": None, "stream_not_pinned": False}
    return {"tensordataset": True, "stream_pinned": True, "stream_not_pinned": False}


class SyncedClock(Clock):
    """``throughput.Clock`` with the GPU's queued work finished at both ends of the timing."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.warmup and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_end(self, trainer, pl_module):
        if pl_module.device.type == "cuda" and self.samples:
            torch.cuda.synchronize(pl_module.device)
            self.t1 = time.perf_counter()


class ProbedMLP(MLP):
    """throughput's MLP, noting whether its first batches arrive in pinned host memory."""

    def __init__(self, hidden: int) -> None:
        super().__init__(hidden)
        self.pinned: list[bool] = []

    def on_before_batch_transfer(self, batch, dataloader_idx):
        if len(self.pinned) < PROBED_BATCHES:
            self.pinned.append(bool(batch[0].is_pinned()))
        return batch


def p1_trainer(p: dict[str, Any], clock: Clock) -> pl.Trainer:
    return pl.Trainer(
        accelerator=p["accelerator"],
        devices=1,
        max_steps=p["steps"],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )


def p1_side(p: dict[str, Any], side: str, pin: bool | None) -> tuple[float, float | None]:
    """One fit: (training samples/s after warm-up, fraction of probed batches that were pinned)."""
    batch = p["batch"]
    clock = SyncedClock(p["warmup"])
    torch.manual_seed(0)
    model = ProbedMLP(p["hidden"])
    if side == "tensordataset":
        g = torch.Generator().manual_seed(0)
        n = IN_MEMORY_BATCHES * batch
        data = TensorDataset(torch.rand(n, D_IN, generator=g), torch.rand(n, D_OUT, generator=g))
        loader = DataLoader(data, batch_size=batch, shuffle=True, drop_last=True, pin_memory=True)
        p1_trainer(p, clock).fit(model, loader)
    else:
        dm = stream(batch, **({} if pin is None else {"pin_memory": pin}))
        p1_trainer(p, clock).fit(model, dm)
    pinned = sum(model.pinned) / len(model.pinned) if model.pinned else None
    return clock.rate, pinned


def check_p1(p: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(p["threads"])
    supported, cuda = pin_memory_supported(), torch.cuda.is_available()
    sides = p1_sides(supported, cuda)
    names = list(sides)
    streams = [s for s in names if s != "tensordataset"]
    rates: dict[str, list[float]] = {s: [] for s in names}
    ratios: dict[str, list[float]] = {s: [] for s in streams}
    pinned: dict[str, list[float]] = {s: [] for s in names}
    rows = []
    for r in range(p["repeats"]):
        order = names[r % len(names) :] + names[: r % len(names)]
        this = {}
        for side in order:
            rate, frac = p1_side(p, side, sides[side])
            this[side] = rate
            rates[side].append(rate)
            if frac is not None:
                pinned[side].append(frac)
        for s in streams:
            ratios[s].append(this[s] / this["tensordataset"])
        rows.append({"order": order, "samples_per_s": this})
    gpu = p["accelerator"] == "gpu"
    result = {
        "config": {k: p[k] for k in ("steps", "warmup", "batch", "hidden", "repeats", "threads")},
        "device": torch.cuda.get_device_name(0) if gpu else "cpu",
        "pin_memory_arg": supported,
        "note": (
            "OnlineDataModule has no pin_memory argument (yet): only its default measured"
            if not supported
            else "OnlineDataModule takes pin_memory: measured pinned and not pinned"
            if cuda
            else "no CUDA here: pin_memory=True is refused, so the default (None: no pinning "
            "without CUDA) stands in for the pinned side"
        ),
        "sides": sides,
        "samples_per_s": {s: summary(v) for s, v in rates.items()},
        "ratio_vs_tensordataset": {s: summary(v) for s, v in ratios.items()},
        "batches_pinned": {s: (min(v) if v else None) for s, v in pinned.items()},
        "repeats": rows,
    }
    bad = [s for s, v in rates.items() if not all(math.isfinite(x) and x > 0 for x in v)]
    if bad:
        return result | {"status": "fail", "error": f"no positive finite rate for {bad}"}
    if gpu:  # what pin_memory asked for must be what reached the model (where it was seen)
        wrong = [
            f"{s} (pin_memory={sides[s]}: {result['batches_pinned'][s]:.0%} of batches pinned)"
            for s in names
            if sides[s] is not None
            and result["batches_pinned"][s] is not None
            and (result["batches_pinned"][s] == 1.0) != sides[s]
        ]
        if wrong:
            return result | {"status": "fail", "error": "pinning not as asked: " + ", ".join(wrong)}
    return result | {"status": "pass"}


# ---------------------------------------------------------------------------------- recipe
def check_recipe(p: dict[str, Any]) -> dict[str, Any]:
    from lightning_online.cli import OnlineCLI

    root = Path.cwd() / "runs"
    args = [
        "fit",
        "--config",
        str(ROOT / "recipes" / "heat2d.yaml"),
        f"--trainer.accelerator={p['accelerator']}",
        "--trainer.devices=1",
        f"--trainer.default_root_dir={root}",
        "--trainer.enable_progress_bar=false",
        *p["overrides"],
    ]
    t0 = time.perf_counter()
    cli = OnlineCLI(args=args)
    fit_s = time.perf_counter() - t0
    dm, trainer = cli.datamodule, cli.trainer
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    device = str(trainer.strategy.root_device)
    result = {
        "args": args[1:],
        "fit_s": fit_s,
        "device": device,
        "global_step": trainer.global_step,
        "val_sim_loss_mean": metrics.get("val_sim_loss_mean"),
        "metrics": metrics,
        "stats": dict(dm.stats),
        "n_simulations": dm.n_simulations,
    }
    want = "cuda" if p["accelerator"] == "gpu" else "cpu"
    if trainer.strategy.root_device.type != want:
        return result | {"status": "fail", "error": f"trained on {device}, not {want}"}
    if dm.stats.get("completed", 0) < dm.n_simulations:
        return result | {
            "status": "fail",
            "error": f"the study ended with {dm.stats.get('completed')} of {dm.n_simulations} "
            "runs completed",
        }
    return result | {"status": "pass"}


# ---------------------------------------------------------------------------------- ddp
class Backend(Callback):
    """Notes the process group's backend and size once training starts."""

    def __init__(self) -> None:
        self.backend: str | None = None
        self.world_size: int | None = None

    def on_train_start(self, trainer, pl_module):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self.backend = str(torch.distributed.get_backend())
            self.world_size = torch.distributed.get_world_size()


def check_ddp(p: dict[str, Any]) -> dict[str, Any]:
    from lightning.pytorch.strategies import DDPStrategy

    from lightning_online.models import FieldMLP
    from lightning_online.solvers import Heat2D, heat2d_space

    low, high, names = heat2d_space()
    n = p["nx"]
    dm = OnlineDataModule(
        Heat2D(nx=n, ny=n, n_steps=p["n_steps"]),
        ParameterSpace(low, high, names),
        n_simulations=p["n_simulations"],
        sampler=Breed(seed=0),
        buffer=Reservoir(p["capacity"], watermark=p["batch"]),
        batch_size=p["batch"],
        n_workers=2,
        val_parameters=p["val"],
    )
    steer = ActiveSampling(update_every_n_steps=p["every"], window=p["window"])
    seen = Backend()
    trainer = pl.Trainer(
        accelerator=p["accelerator"],
        devices=1,
        strategy=DDPStrategy(process_group_backend=p["backend"]),
        max_steps=p["max_steps"],
        val_check_interval=5,
        check_val_every_n_epoch=None,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[steer, seen],
    )
    torch.manual_seed(0)
    model = FieldMLP(n_inputs=6, field_shape=(n, n), hidden=(64, 64))
    result: dict[str, Any] = {"config": p}
    t0 = time.perf_counter()
    try:
        trainer.fit(model, dm)
    except Exception as exc:
        return result | {
            "status": "fail",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()[-6000:],
            "fit_s": time.perf_counter() - t0,
            "backend": seen.backend,
            "world_size": seen.world_size,
            "global_step": trainer.global_step,
            "updates": steer.updates,
            "stats": dict(dm.stats),
        }
    result |= {
        "fit_s": time.perf_counter() - t0,
        "backend": seen.backend,
        "world_size": seen.world_size,
        "device": str(trainer.strategy.root_device),
        "global_step": trainer.global_step,
        "updates": steer.updates,
        "stats": dict(dm.stats),
    }
    if seen.backend != p["backend"]:
        return result | {
            "status": "fail",
            "error": f"process group backend {seen.backend!r}, expected {p['backend']!r}",
        }
    if steer.updates < 1:
        return result | {
            "status": "fail",
            "error": "ActiveSampling made no sampler update: its cross-rank reduce never ran",
        }
    return result | {"status": "pass"}


CHECK_FNS = {"p1": check_p1, "recipe": check_recipe, "ddp": check_ddp}


def child(name: str, result_path: Path, params: dict[str, Any]) -> int:
    """Runs one check in this (sub)process and writes its outcome to ``result_path``."""
    try:
        out = CHECK_FNS[name](params)
    except Exception as exc:
        out = {
            "status": "fail",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()[-6000:],
        }
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(jsonable(out), indent=2))
    tmp.replace(result_path)
    sys.stdout.flush()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0 if out.get("status") == "pass" else 1


# ---------------------------------------------------------------------------------- parent
def stop(proc: subprocess.Popen) -> None:
    """Stops a check's process group: SIGINT (Lightning and the DataModule end their runs),
    then SIGTERM, then SIGKILL."""
    for sig, grace in ((signal.SIGINT, 10), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def run_check(name: str, plan: dict[str, Any]) -> dict[str, Any]:
    """Runs one check in a subprocess with a timeout; never raises for what happens inside it."""
    timeout = plan["timeout"]
    with tempfile.TemporaryDirectory(prefix=f"gpu_check_{name}_") as tmp:
        result_path, log_path = Path(tmp) / "result.json", Path(tmp) / "output.log"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name]
        cmd += ["--result", str(result_path), "--params", json.dumps(plan["params"])]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        t0 = time.perf_counter()
        killed = False
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp, env=env, start_new_session=True
            )
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                killed = True
                stop(proc)
            except BaseException:  # e.g. Ctrl+C: the check runs in its own session, stop it too
                stop(proc)
                raise
        wall = time.perf_counter() - t0
        data = json.loads(result_path.read_text()) if result_path.exists() else None
        record: dict[str, Any] = {
            "status": "fail",
            "error": None,
            "wall_s": wall,
            "timeout_s": timeout,
            "returncode": proc.returncode,
            "killed": killed,
            "hung_at_exit": killed and data is not None,
            "result": {},
        }
        if data is not None:
            record["status"] = data.pop("status", "fail")
            record["error"] = data.pop("error", None)
            if "traceback" in data:
                record["traceback"] = data.pop("traceback")
            record["result"] = data
        if killed and data is None:
            record["status"] = "timeout"
            record["error"] = f"no result within {timeout} s; stopped"
        elif data is None:
            record["error"] = f"its process exited with code {proc.returncode} without a result"
        elif record["status"] == "pass" and proc.returncode != 0 and not killed:
            record["status"] = "fail"
            record["error"] = f"the check passed, then its process exited with {proc.returncode}"
        if record["status"] != "pass":
            record["log_tail"] = tail(log_path)
        return record


def fmt(x: float | None, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def detail(name: str, rec: dict[str, Any]) -> str:
    r = rec["result"]
    if name == "p1" and r.get("ratio_vs_tensordataset"):
        return "; ".join(
            f"{s} / TensorDataset {v['median']:.3f} ({v['min']:.3f}-{v['max']:.3f})"
            for s, v in r["ratio_vs_tensordataset"].items()
        )
    if name == "recipe" and r.get("stats"):
        st = r["stats"]
        return (
            f"{r['device']}, {r['global_step']} steps, val_sim_loss_mean "
            f"{fmt(r['val_sim_loss_mean'], '.4g')}, runs {st.get('completed')}/"
            f"{r['n_simulations']} completed, {st.get('failed')} failed"
        )
    if name == "ddp" and "updates" in r:
        return f"backend {r.get('backend')}, {r.get('global_step')} steps, {r['updates']} updates"
    return ""


def report(result: dict[str, Any]) -> str:
    v = result["versions"]
    mode = (
        "DRY RUN on CPU (gloo, tiny sizes): says nothing about a GPU"
        if result["dry_run"]
        else ("GPU, quick" if result["quick"] else "GPU")
    )
    lines = [
        f"GPU check: {mode}",
        f"torch {v['torch']} (CUDA {v['cuda']}, NCCL {v['nccl']}), lightning {v['lightning']}, "
        f"GPU {v['gpu_name']} (driver {v['driver']})",
        "",
    ]
    rows = [
        [name, TITLES[name], rec["status"], rec["wall_s"], detail(name, rec)]
        for name, rec in result["checks"].items()
    ]
    lines.append(table(rows, ["check", "what", "status", "wall s", "detail"]))
    p1 = result["checks"].get("p1", {}).get("result", {})
    if p1.get("samples_per_s"):
        lines += ["", f"P1: {p1['note']}"]
        rows = []
        for side, s in p1["samples_per_s"].items():
            r = p1["ratio_vs_tensordataset"].get(side)
            pin = p1["sides"][side]
            rows.append(
                [
                    side,
                    "default" if pin is None else str(pin),
                    f"{s['median']:,.0f}",
                    f"{s['min']:,.0f}-{s['max']:,.0f}",
                    f"{r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f})" if r else "(reference)",
                    fmt(p1["batches_pinned"].get(side), ".0%"),
                ]
            )
        header = [
            "feeding",
            "pin_memory",
            "samples/s (median)",
            "min-max",
            "stream / TensorDataset",
        ]
        lines.append(table(rows, [*header, "batches pinned"]))
    for name, rec in result["checks"].items():
        if rec["status"] != "pass":
            lines += ["", f"{name} {rec['status']}: {rec['error']}"]
            if rec.get("hung_at_exit"):
                lines.append("  (its process did not exit after writing its result: stopped)")
    lines += ["", "DRY RUN: all figures above are from the CPU" if result["dry_run"] else ""]
    return "\n".join(lines).rstrip()


def write(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(jsonable(result), indent=2))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="the checks on CPU, tiny, gloo")
    p.add_argument("--quick", action="store_true", help="a shorter GPU run")
    p.add_argument("--only", nargs="+", choices=CHECKS, default=list(CHECKS), metavar="CHECK")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default docs/benchmarks/)")
    p.add_argument("--child", choices=CHECKS, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--params", type=json.loads, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return child(a.child, a.result, a.params)

    if not a.dry_run and not torch.cuda.is_available():
        print(
            f"benchmarks/gpu.py: no CUDA GPU here (torch {torch.__version__}, built with CUDA "
            f"{torch.version.cuda}; torch.cuda.is_available() is False). Run it on a machine with "
            "one CUDA GPU, or check the script on CPU with --dry-run.",
            file=sys.stderr,
        )
        return 2
    out = a.out or OUT / ("gpu_dry_run.json" if a.dry_run else "gpu.json")
    plans = settings(a.dry_run, a.quick)
    result: dict[str, Any] = {
        "dry_run": a.dry_run,
        "quick": a.quick,
        "accelerator": "cpu" if a.dry_run else "gpu",
        "ddp_backend": "gloo" if a.dry_run else "nccl",
        "versions": versions(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_s": None,
        "all_passed": None,
        "checks": {},
    }
    t0 = time.perf_counter()
    if a.dry_run:
        print("DRY RUN: the GPU checks on CPU at tiny sizes (gloo instead of NCCL)", flush=True)
    for name in a.only:
        print(f"[{name}] {TITLES[name]} (timeout {plans[name]['timeout']} s) ...", flush=True)
        rec = run_check(name, plans[name])
        result["checks"][name] = rec
        print(f"[{name}] {rec['status']} in {rec['wall_s']:.1f} s", flush=True)
        result["wall_s"] = time.perf_counter() - t0
        write(out, result)  # after each check: a run stopped from outside keeps what it measured
    result["all_passed"] = all(r["status"] == "pass" for r in result["checks"].values())
    write(out, result)
    print()
    print(report(result))
    print(f"wrote {out}")
    return 0 if result["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
