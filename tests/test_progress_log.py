"""Progress where there is no terminal: ``lightning-online`` piped to a file prints plain
periodic lines (no carriage return, no escape sequence, validation as one line), chosen by
itself; StudyProgressLog's settings are checked at construction. The same on a real SLURM job's
output file: tests/test_slurm_real.py."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import tiny_args
from test_processes import assert_none_left, env_with_marker

from lightning_online import StudyProgressBar, StudyProgressLog
from lightning_online.cli import OnlineCLI

pytestmark = pytest.mark.timeout(240)
RECIPES = Path(__file__).parent.parent / "recipes"


def test_a_recipe_piped_to_a_file_prints_plain_lines(tmp_path):
    args = [
        *tiny_args("heat2d", tmp_path),
        "--trainer.enable_progress_bar=true",  # (tiny_args turns it off)
        "--trainer.val_check_interval=4",
        "--monitor.plot=false",
    ]
    env, marker = env_with_marker()
    with open(tmp_path / "out.log", "wb") as out:  # stdout and stderr: a file, as under sbatch
        proc = subprocess.run(
            [sys.executable, "-m", "lightning_online.cli", "fit", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
            timeout=200,
        )
    raw = (tmp_path / "out.log").read_bytes()
    assert proc.returncode == 0, raw.decode()[-3000:]
    assert raw.count(b"\r") == 0 and raw.count(b"\x1b") == 0
    lines = raw.decode().splitlines()
    assert sum(x.startswith("training: from step 0") for x in lines) == 1
    vals = [x for x in lines if x.startswith("validation at step ")]
    assert vals and all("val_loss=" in x for x in vals), lines
    assert any(
        re.match(r"step \d+(/\d+)? \| .* steps/s \| runs=\d+\+\d+/\d+ failed=\d+ buf=\d+%", x)
        for x in lines
    )
    assert any(x.startswith("training ended at step ") for x in lines)
    assert_none_left(marker)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_cli_picks_the_bar_on_a_terminal_and_lines_elsewhere(monkeypatch):
    base = ["--config", str(RECIPES / "heat2d.yaml"), "--data.n_simulations=4"]
    cli = OnlineCLI(args=base, run=False)  # pytest's captured stdout: not a terminal
    assert type(cli.trainer.progress_bar_callback) is StudyProgressLog
    monkeypatch.setattr(sys, "stdout", _Terminal())
    cli = OnlineCLI(args=base, run=False)
    assert isinstance(cli.trainer.progress_bar_callback, StudyProgressBar)


def test_progress_log_settings_are_checked():
    assert StudyProgressLog(every_n_steps=10, every_s=None).every_n_steps == 10
    for bad in (
        dict(every_n_steps=0),
        dict(every_n_steps=True),
        dict(every_s=0),
        dict(every_s=float("nan")),
        dict(every_n_steps=None, every_s=None),
    ):
        with pytest.raises(ValueError, match="StudyProgressLog"):
            StudyProgressLog(**bad)
