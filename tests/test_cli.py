"""The ``lightning-online`` command line and its recipes: every recipe runs end to end (tiny
settings, in process), ``--print_config`` round-trips, overrides and shorthands work, and the
recipe models behave as documented."""

from __future__ import annotations

import json
import re
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_processes import assert_none_left, run_marked

from lightning_online.callbacks.active_sampling import ActiveSampling
from lightning_online.callbacks.monitor import StudyMonitor
from lightning_online.cli import OnlineCLI, auto_num_threads, main, mpi_world_size
from lightning_online.client import build, example_source
from lightning_online.models import CNN1D, FNO1D, FieldMLP

ROOT = Path(__file__).parent.parent
RECIPES = ROOT / "recipes"
NAMES = ["heat2d", "burgers1d", "allen_cahn1d"]
EXTERNAL = ["heat2d_c"]  # need a compiled program: tested on their own below
STEERED = ["burgers1d_shock"]  # steered by themselves, without a plain twin
ALL = sorted(p.stem for p in RECIPES.glob("*.yaml") if p.stem not in EXTERNAL)

# A few runs of a few steps on small grids: seconds per recipe on two cores.
TINY = {
    "heat2d": ["--data.solver.init_args.n_steps=5"],
    "burgers1d": ["--data.solver.init_args.nx=32", "--data.solver.init_args.n_steps=5"],
    "allen_cahn1d": ["--data.solver.init_args.nx=32", "--data.solver.init_args.n_steps=5"],
    "burgers1d_shock": ["--data.solver.init_args.nx=32", "--data.solver.init_args.n_steps=5"],
}
COMMON = [
    "--data.n_simulations=4",
    "--data.val_parameters=2",
    "--data.batch_size=8",
    "--data.buffer.init_args.capacity=64",
    "--data.buffer.init_args.watermark=8",
    "--trainer.max_steps=20",
    "--trainer.val_check_interval=3",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]
STEERING = ["--trainer.callbacks.update_every_n_steps=2", "--trainer.callbacks.window=4"]


@pytest.fixture(autouse=True)
def cli_process(monkeypatch):
    """As if started from the shell; the CLI sets torch's threads: restore them afterwards."""
    monkeypatch.setattr(sys, "argv", ["lightning-online"])
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def tiny_args(name: str, root: Path) -> list[str]:
    base = name.removesuffix("_breed")
    args = ["--config", str(RECIPES / f"{name}.yaml"), *TINY[base], *COMMON]
    if name.endswith("_breed") or name in STEERED:
        args += STEERING
    return [*args, f"--trainer.default_root_dir={root}"]


def print_config(args: list[str], capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        OnlineCLI(args=[*args, "--print_config"])
    assert exc.value.code in (0, None)
    return capsys.readouterr().out


def test_recipes_come_in_plain_and_breed_pairs():
    assert ALL == sorted([*NAMES, *(f"{n}_breed" for n in NAMES), *STEERED])
    assert all((RECIPES / f"{n}.yaml").exists() for n in EXTERNAL)


def test_breed_variants_differ_only_in_sampler_callbacks_and_folder():
    for name in NAMES:
        plain = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
        bred = yaml.safe_load((RECIPES / f"{name}_breed.yaml").read_text())
        assert bred["data"]["sampler"]["class_path"] == "lightning_online.Breed"
        callbacks = [c["class_path"] for c in bred["trainer"]["callbacks"]]
        assert "lightning_online.ActiveSampling" in callbacks
        for cfg in (plain, bred):
            del cfg["data"]["sampler"], cfg["trainer"]["callbacks"]
            del cfg["trainer"]["default_root_dir"]
        assert plain == bred, name


# ---------------------------------------------------------------------------- whole recipes
@pytest.mark.parametrize("name", ALL)
@pytest.mark.timeout(240)
@pytest.mark.usefixtures("no_orphans")
def test_recipe_runs_through_the_cli(name, tmp_path, summary_log):
    cli = OnlineCLI(args=["fit", *tiny_args(name, tmp_path)])
    dm, trainer = cli.datamodule, cli.trainer
    assert dm.stats["completed"] == 4 and dm.stats["failed"] == 0
    assert trainer.global_step > 0

    # The live view: progress bar figures, summary table, pictures, saved config.
    monitor = next(c for c in trainer.callbacks if isinstance(c, StudyMonitor))
    for key in ("runs_launched", "runs_done", "runs_failed", "buffer_fill"):
        assert key in trainer.progress_bar_metrics
    assert monitor.summary is not None and monitor.summary["runs_completed"] == 4
    assert monitor.summary["val_runs"] == 2
    out = summary_log.text()
    assert "online study summary" in out and "validation error" in out
    log_dir = Path(trainer.log_dir)
    assert (log_dir / "val_error_last.png").stat().st_size > 1000
    assert json.loads((log_dir / "study_summary.json").read_text())["runs_completed"] == 4
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert saved["data"]["n_simulations"] == 4

    if name.endswith("_breed"):
        steer = next(c for c in trainer.callbacks if isinstance(c, ActiveSampling))
        assert type(dm.sampler).__name__ == "Breed"
        assert steer.updates >= 1
    if name in STEERED:
        steer = next(c for c in trainer.callbacks if isinstance(c, ActiveSampling))
        assert type(dm.sampler).__name__ == "ErrorModel"
        assert steer.updates >= 1


@pytest.mark.timeout(240)
@pytest.mark.usefixtures("no_orphans")
@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_validate_and_test_from_a_checkpoint(tmp_path, capsys):
    cli = OnlineCLI(args=["fit", *tiny_args("heat2d", tmp_path)])
    ckpt = Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    # Without the checkpoint, validate and test would evaluate these (the seeded initial weights).
    fresh = OnlineCLI(args=tiny_args("heat2d", tmp_path / "fresh"), run=False).model.state_dict()
    assert any(not torch.equal(fresh[k], saved[k]) for k in saved)
    args = [*tiny_args("heat2d", tmp_path / "eval"), f"--ckpt_path={ckpt}"]
    val = OnlineCLI(args=["validate", *args])
    assert "val_loss" in val.trainer.callback_metrics
    assert val.datamodule.val_report is not None
    test = OnlineCLI(args=["test", *args])
    assert "test_loss" in test.trainer.callback_metrics
    for cli in (val, test):  # both evaluated the checkpoint's weights
        weights = cli.model.state_dict()
        assert weights.keys() == saved.keys()
        for k in saved:
            assert torch.equal(weights[k], saved[k]), k


# ---------------------------------------------------------------------------- scale-out
# The same recipe locally (above), on two training ranks under mpiexec, and with the solver
# swapped for the compiled C program (2 MPI ranks per run).
@pytest.mark.timeout(240)
def test_heat2d_recipe_under_mpiexec_on_two_ranks(tmp_path):
    bin_dir = Path(sys.executable).parent
    cmd = [str(bin_dir / "mpiexec"), "-n", "2", str(bin_dir / "lightning-online"), "fit"]
    cmd += [*tiny_args("heat2d", tmp_path), "--trainer.strategy=ddp", "--trainer.devices=2"]
    out, marker = run_marked(cmd, tmp_path, timeout=200)
    assert "Starting with 2 processes" in out.stderr + out.stdout
    log_dir = tmp_path / "lightning_logs" / "version_0"
    summary = json.loads((log_dir / "study_summary.json").read_text())
    assert summary["runs_completed"] == 4 and summary["runs_failed"] == 0
    assert summary["val_runs"] == 2
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert saved["trainer"]["plugins"][0]["class_path"].endswith("MPIEnvironment")
    assert_none_left(marker)


def test_mpi_launch_is_read_from_the_launchers_environment(monkeypatch, capsys):
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    args = ["fit", "--config", str(RECIPES / "heat2d.yaml")]
    assert mpi_world_size() == 1
    assert yaml.safe_load(print_config(args, capsys))["trainer"]["plugins"] is None
    monkeypatch.setenv("MV2_COMM_WORLD_SIZE", "4")  # as under an MPI launcher (MVAPICH2's)
    assert mpi_world_size() == 4
    plugins = yaml.safe_load(print_config(args, capsys))["trainer"]["plugins"]
    assert plugins == [{"class_path": "lightning.pytorch.plugins.environments.MPIEnvironment"}]
    monkeypatch.setenv("SLURM_NTASKS", "4")  # under srun, Lightning's SLURMEnvironment applies
    assert yaml.safe_load(print_config(args, capsys))["trainer"]["plugins"] is None


@pytest.fixture(scope="module")
def heat2d_program(tmp_path_factory) -> Path:
    """A folder holding build/heat2d, compiled with the wheel's mpicc as the recipe says."""
    root = tmp_path_factory.mktemp("heat2d_c")
    build([example_source("heat2d")], root / "build" / "heat2d")
    return root


@pytest.mark.timeout(240)
@pytest.mark.usefixtures("no_orphans")
def test_heat2d_recipe_with_the_external_c_solver(
    heat2d_program, tmp_path, monkeypatch, summary_log
):
    monkeypatch.chdir(heat2d_program)  # the recipe's command is build/heat2d
    short = '[build/heat2d, --nx, "16", --ny, "16", --n-steps, "5", --parts]'
    args = ["--config", str(RECIPES / "heat2d_c.yaml"), f"--data.solver.init_args.command={short}"]
    args += ["--data.solver.init_args.n_steps=5", *COMMON, f"--trainer.default_root_dir={tmp_path}"]
    cli = OnlineCLI(args=["fit", *args])
    dm, trainer = cli.datamodule, cli.trainer
    assert type(dm.solver).__name__ == "ExternalSolver" and dm.solver.n_procs == 2
    assert dm.stats["completed"] == 4 and dm.stats["failed"] == 0
    assert dm.stats["samples_received"] == 20 and trainer.global_step > 0
    assert "online study summary" in summary_log.text()
    # The C program's validation fields are the Python solver's, to float32 rounding.
    from lightning_online.solvers import Heat2D

    val = dm._val_set
    got = [val.samples[i] for i in np.flatnonzero(val.sim_index == 0)]
    want = list(Heat2D(nx=16, ny=16, n_steps=5)(dm._val_thetas[0]))
    assert len(got) == len(want) == 5
    for (gx, gy), (wx, wy) in zip(got, want, strict=True):
        np.testing.assert_allclose(gx, wx, rtol=1e-6)
        np.testing.assert_allclose(gy, wy, rtol=1e-6)


def test_external_recipe_without_its_program_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="build it first"):
        OnlineCLI(args=["fit", "--config", str(RECIPES / "heat2d_c.yaml")])


# ---------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("name", [*ALL, *EXTERNAL])
def test_print_config_round_trips(name, tmp_path, capsys):
    first = print_config(["fit", "--config", str(RECIPES / f"{name}.yaml")], capsys)
    saved = tmp_path / "printed.yaml"
    saved.write_text(first)
    second = print_config(["fit", "--config", str(saved)], capsys)
    assert first == second
    cfg = yaml.safe_load(first)
    assert cfg["data"]["space"]["class_path"] == "lightning_online.ParameterSpace"
    assert "monitor" in cfg


def test_overrides_shorthands_and_interpolation(capsys):
    args = [
        "fit",
        "--config",
        str(RECIPES / "heat2d.yaml"),
        "--trainer.max_steps=200",
        "--data.n_simulations=32",
        "--data.sampler=Breed",
        "--data.buffer=FIFO",
        "--data.buffer.capacity=500",
        "--trainer.callbacks+=ActiveSampling",
        "--data.val_parameters=[[100, 200, 300, 400, 500]]",
        "--monitor.plot=false",
    ]
    cfg = yaml.safe_load(print_config(args, capsys))
    assert cfg["trainer"]["max_steps"] == 200
    assert cfg["data"]["n_simulations"] == 32
    assert cfg["data"]["sampler"]["class_path"] == "lightning_online.Breed"
    assert cfg["data"]["sampler"]["init_args"]["seed"] == 0  # kept from the recipe's Halton
    assert cfg["data"]["buffer"]["class_path"] == "lightning_online.FIFO"
    assert cfg["data"]["buffer"]["init_args"]["capacity"] == 500
    assert cfg["trainer"]["callbacks"][-1]["class_path"] == "lightning_online.ActiveSampling"
    assert cfg["data"]["val_parameters"] == [[100.0, 200.0, 300.0, 400.0, 500.0]]
    assert cfg["monitor"]["plot"] is False
    # OmegaConf interpolation: the model's output follows the solver's grid in the file.
    assert cfg["model"]["init_args"]["field_shape"] == [16, 16]
    assert cfg["trainer"]["check_val_every_n_epoch"] is None


def test_model_shorthand_and_bad_option(capsys):
    args = ["fit", "--config", str(RECIPES / "burgers1d.yaml"), "--model=CNN1D"]
    cfg = yaml.safe_load(print_config(args, capsys))
    assert cfg["model"]["class_path"] == "lightning_online.models.CNN1D"
    with pytest.raises(SystemExit) as exc:
        OnlineCLI(args=["fit", "--config", str(RECIPES / "heat2d.yaml"), "--data.n_simulationz=3"])
    assert exc.value.code != 0
    assert "n_simulationz" in capsys.readouterr().err


def test_console_script_and_help(capsys):
    scripts = entry_points(group="console_scripts")
    assert any(
        e.name == "lightning-online" and e.value == "lightning_online.cli:main" for e in scripts
    )
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--help"])
    assert exc.value.code in (0, None)
    out = capsys.readouterr().out
    for option in ("--data.solver", "--data.sampler", "--monitor.plot", "--torch_num_threads"):
        assert option in out


def test_auto_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert auto_num_threads(2) is None  # the user decided
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert auto_num_threads(2) == 6
    assert auto_num_threads(12) == 1
    assert auto_num_threads(0) is None  # nothing to give up


# ---------------------------------------------------------------------------- recipe models
def test_field_mlp_shape_and_mismatch_message():
    model = FieldMLP(n_inputs=6, field_shape=[4, 8], hidden=[16])
    assert model(torch.zeros(3, 6)).shape == (3, 32)
    with pytest.raises(ValueError, match=re.escape("field_shape")):
        model.training_step((torch.zeros(3, 6), torch.zeros(3, 64)), 0)


@pytest.mark.parametrize("cls", [FNO1D, CNN1D])
def test_1d_models_start_as_identity_and_roll_out(cls):
    model = cls(width=8, n_layers=2) if cls is CNN1D else cls(width=8, modes=4, n_layers=2)
    for nx in (16, 33):  # any grid size, even odd
        x = torch.randn(5, 2, nx)
        assert torch.equal(model(x), x[:, :1])  # zero-initialised head: u(t_k) -> u(t_k)
        assert model.rollout(x, 3).shape == (5, 3, nx)
    # One optimiser step moves it off the identity.
    opt = model.configure_optimizers()
    x, y = torch.randn(5, 2, 16), torch.randn(5, 1, 16)
    for _ in range(2):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(model(x), x[:, :1])


def test_lr_decay_steps_follow_a_cosine_to_a_hundredth():
    model = FNO1D(width=8, modes=4, n_layers=2, lr=1e-3, lr_decay_steps=10)
    conf = model.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-3) and lrs[5] == pytest.approx(0.505e-3)
    assert lrs[10] == pytest.approx(1e-5) and lrs[11] == pytest.approx(1e-5)
    assert isinstance(FNO1D(lr_decay_steps=0).configure_optimizers(), torch.optim.Adam)
    with pytest.raises(ValueError, match="lr_decay_steps must be a non-negative integer, got -1"):
        CNN1D(lr_decay_steps=-1)


def test_spectral_layer_is_translation_equivariant():
    spec = FNO1D(width=8, modes=8, n_layers=2).spectral[0]
    h = torch.randn(2, 8, 32)
    assert torch.allclose(
        spec(torch.roll(h, 5, dims=-1)), torch.roll(spec(h), 5, dims=-1), atol=1e-5
    )


# ---------------------------------------------------------------------------- docs
def test_every_recipe_has_a_doc_page_and_doc_links_resolve():
    docs = ROOT / "docs"
    for name in NAMES:
        page = docs / "recipes" / f"{name}.md"
        assert page.exists(), page
        assert f"recipes/{name}.yaml" in page.read_text()
    api = "\n".join(p.read_text() for p in (docs / "api").glob("*.md"))
    import lightning_online

    for public in [*lightning_online.__all__, "StudyMonitor", "OnlineCLI"]:
        assert re.search(rf"\b{public}\b", api), f"docs/api/ does not mention {public}"
    readme = (ROOT / "README.md").read_text()
    for name in ALL:
        assert f"recipes/{name}.yaml" in readme or name.endswith("_breed"), name
    for md in [ROOT / "README.md", *docs.rglob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", md.read_text()):
            if "://" in target:
                continue
            assert (md.parent / target).exists(), f"{md.relative_to(ROOT)}: broken link {target}"
