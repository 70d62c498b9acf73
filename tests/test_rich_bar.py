"""RichStudyProgressBar where ``rich`` is not installed in the test environment.

``rich`` stays out of the dev extra: installed, it switches Lightning's default progress bar and
model summary to Rich for every other test. CI installs it apart (``.ci/run``: ``pip install
--target .ci/rich rich``, path in ``LIGHTNING_ONLINE_TEST_RICH``), and the tests that need it run
here in a pytest subprocess that sees it. Where ``rich`` is installed, they run in place instead.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
RICH_TESTS = [
    "test_lightning.py::test_loggers_hyperparameters_checkpoints_and_the_progress_bar"
    "[RichStudyProgressBar]",
    "test_recipe_overrides.py::test_the_cli_shows_the_study_progress_bar_by_default",
]


@pytest.mark.timeout(280)
@pytest.mark.usefixtures("no_orphans")
def test_the_rich_bar_tests_run_where_rich_is_apart(tmp_path):
    if importlib.util.find_spec("rich") is not None:
        pytest.skip("rich is installed here: the tests run in place")
    where = os.environ.get("LIGHTNING_ONLINE_TEST_RICH")
    if not where:
        pytest.skip("rich is not installed; LIGHTNING_ONLINE_TEST_RICH (set by .ci/run) names none")
    assert (Path(where) / "rich").is_dir(), f"LIGHTNING_ONLINE_TEST_RICH={where} holds no rich"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(Path(where).resolve()), env.get("PYTHONPATH")])
    )
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *RICH_TESTS],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
        timeout=260,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert f"{len(RICH_TESTS)} passed" in out.stdout and "skipped" not in out.stdout, out.stdout
