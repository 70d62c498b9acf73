"""Recipes on the command line: interpolations follow overrides, quick tries are not refused, and
every recipe runs wherever it is started (``accelerator: auto``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_online.cli import OnlineCLI

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
OWNED_ELSEWHERE: set[str] = set()  # recipes whose trainer section is maintained elsewhere


@pytest.fixture(autouse=True)
def cli_process(monkeypatch):
    """As if started from the shell; the CLI sets torch's threads: restore them afterwards."""
    monkeypatch.setattr(sys, "argv", ["lightning-online"])
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def printed(args: list[str], capsys) -> dict:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        OnlineCLI(args=[*args, "--print_config"])
    assert exc.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_every_recipe_runs_on_whatever_accelerator_there_is():
    """Each recipe's Trainer is built here as the CLI builds it: on this machine's accelerator,
    whatever it is (a recipe that asked for a GPU would be refused on a machine without one)."""
    import lightning.pytorch as pl

    here = type(pl.Trainer(accelerator="auto", devices=1, logger=False).accelerator)
    recipes = sorted(RECIPES.glob("*.yaml"))
    assert len(recipes) >= 8, recipes
    built = 0
    for recipe in recipes:
        if recipe.stem in OWNED_ELSEWHERE:
            continue
        cfg = yaml.safe_load(recipe.read_text())
        assert cfg["trainer"]["accelerator"] == "auto", recipe.name
        if recipe.stem == "heat2d_c":  # its C program must be built first (test_client_c)
            continue
        cli = OnlineCLI(args=["--config", str(recipe)], run=False)
        assert type(cli.trainer.accelerator) is here, (recipe.name, cli.trainer.accelerator)
        built += 1
    assert built >= 7
    assert "ACCELERATOR=${ACCELERATOR:-auto}" in (RECIPES / "heat2d_c.sbatch").read_text()


def test_interpolations_follow_command_line_overrides(capsys):
    heat = ["fit", "--config", str(RECIPES / "heat2d.yaml")]
    cfg = printed([*heat, "--data.solver.init_args.nx=32"], capsys)
    assert cfg["data"]["solver"]["init_args"]["nx"] == 32
    assert cfg["model"]["init_args"]["field_shape"] == [16, 32]  # [ny, nx], with no 2nd override
    # A value the command line sets itself wins over the interpolation.
    cfg = printed(
        [*heat, "--data.solver.init_args.nx=32", "--model.init_args.field_shape=[8,8]"], capsys
    )
    assert cfg["model"]["init_args"]["field_shape"] == [8, 8]
    # Without overrides, the file's own values.
    assert printed(heat, capsys)["model"]["init_args"]["field_shape"] == [16, 16]
    # The objects built from it agree (no fit: run=False).
    cli = OnlineCLI(
        args=["--config", str(RECIPES / "heat2d_breed.yaml"), "--data.solver.init_args.ny=8"],
        run=False,
    )
    assert cli.datamodule.solver.ny == 8
    assert list(cli.model.hparams.field_shape) == [8, 16]


@pytest.mark.timeout(240)
@pytest.mark.usefixtures("no_orphans")
def test_quick_try_with_a_small_budget_and_another_grid(tmp_path, summary_log):
    """`--data.n_simulations=4` with the recipe's 16 validation runs: validation runs are not
    part of the training budget, so this is not refused; the grid change reaches the model."""
    cli = OnlineCLI(
        args=[
            "fit",
            "--config",
            str(RECIPES / "heat2d.yaml"),
            "--data.n_simulations=4",
            "--data.solver.init_args.nx=32",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    dm = cli.datamodule
    assert dm.stats["completed"] == 4 and dm.val_report is not None
    assert len(dm.val_report["loss"]) == 16
    assert cli.model.n_outputs == 16 * 32
    assert "online study summary" in summary_log.text()
    saved = yaml.safe_load((Path(cli.trainer.log_dir) / "config.yaml").read_text())
    assert saved["model"]["init_args"]["field_shape"] == [16, 32]


def test_the_cli_shows_the_study_progress_bar_by_default():
    from lightning.pytorch.callbacks import TQDMProgressBar

    from lightning_online.callbacks.monitor import RichStudyProgressBar, StudyProgressBar

    base = ["--config", str(RECIPES / "heat2d.yaml"), "--data.n_simulations=4"]
    cli = OnlineCLI(args=[*base, "--trainer.callbacks+=StudyProgressBar"], run=False)
    assert isinstance(cli.trainer.progress_bar_callback, StudyProgressBar)
    # (not given, it is StudyProgressBar on a terminal: tests/test_progress_log.py)
    cli = OnlineCLI(args=[*base, "--trainer.callbacks+=TQDMProgressBar"], run=False)
    assert type(cli.trainer.progress_bar_callback) is TQDMProgressBar
    cli = OnlineCLI(args=[*base, "--trainer.enable_progress_bar=false"], run=False)
    assert cli.trainer.progress_bar_callback is None
    pytest.importorskip("rich")
    cli = OnlineCLI(args=[*base, "--trainer.callbacks+=RichStudyProgressBar"], run=False)
    assert isinstance(cli.trainer.progress_bar_callback, RichStudyProgressBar)
