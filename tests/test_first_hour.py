"""A person's first hour (issue 23), tested as they see it: the README's first fit and a recipe
in a pseudo-terminal of 80 columns (what is on the screen) and piped to a file (what is in the
file); a float64 solver; a solver that hangs, one that fails the same way every time and one
stopped in flight; the validation-error picture opened as a PNG; the recipes without a clone;
a misspelt option.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
from _models import Regressor
from _screen import Screen, frames, run_in_terminal
from test_cli import tiny_args
from test_processes import assert_none_left, env_with_marker

from lightning_online import FIFO, OnlineDataModule, ParameterSpace, StudyMonitor
from lightning_online._wire.samples import check_step
from lightning_online.callbacks.monitor import expected_steps, plot_validation_error
from lightning_online.cli import OnlineCLI, recipes

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
#: The study's figures on a bar, whole: runs done + in flight / budget, failed, buffer fill.
FIGURES = re.compile(r"runs=\d+\+\d+/(\d+), failed=\d+, buf=\d+%")


def _quiet_trainer(**kw) -> pl.Trainer:
    args = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    args.update(kw)
    return pl.Trainer(**args)


# ---------------------------------------------------------------------- 1, 9: the live view
@pytest.mark.timeout(300)
def test_readme_first_fit_shows_the_run_counts_in_80_columns(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "trainer.fit(MLP(), dm)" in b)
    example = example.replace("n_simulations=64", "n_simulations=12")  # the same, shorter
    script = tmp_path / "first_fit.py"
    script.write_text(example)
    env, marker = env_with_marker()
    rc, out = run_in_terminal([sys.executable, str(script)], cols=80, env=env, cwd=tmp_path)
    assert rc == 0, str(Screen(out))[-3000:]
    bars = [f for f in frames(out) if "runs=" in f]
    assert bars, str(Screen(out))[-3000:]
    # Every look of the bar fits the terminal, and shows the figures whole, as integers.
    assert all(len(f) <= 80 for f in bars), max(bars, key=len)
    assert all(FIGURES.search(f) and FIGURES.search(f).group(1) == "12" for f in bars), bars[-1]
    assert not any("/10000" in f or "Epoch 0" in f or "v_num" in f for f in bars), bars[-1]
    # The last look: the whole study, and the loss still there.
    assert re.search(r"100% (\d+)/\1 .*runs=12\+0/12, failed=0, buf=\d+%, train_loss=", bars[-1])
    screen = Screen(out).text()
    assert any(line.startswith("runs stopped in flight") for line in screen)
    assert_none_left(marker)


@pytest.mark.timeout(400)
def test_a_recipe_in_80_columns_and_piped_to_a_file(tmp_path):
    args = [
        *tiny_args("heat2d", tmp_path),
        "--trainer.enable_progress_bar=true",  # (tiny_args turns it off)
        "--trainer.max_steps=-1",  # the recipe's own end: the study
        "--monitor.plot=false",
    ]
    command = [sys.executable, "-m", "lightning_online.cli", "fit", *args]
    env, marker = env_with_marker()
    rc, out = run_in_terminal(command, cols=80, env=env, cwd=tmp_path)
    assert rc == 0, str(Screen(out))[-3000:]
    bars = [f for f in frames(out) if "runs=" in f]
    assert bars and all(len(f) <= 80 for f in bars), max(bars or [""], key=len)
    assert all(FIGURES.search(f) for f in bars), bars[-1]
    assert_none_left(marker)

    with open(tmp_path / "out.log", "wb") as log:  # stdout and stderr: a file, as under sbatch
        proc = subprocess.run(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, timeout=300
        )
    raw = (tmp_path / "out.log").read_bytes()
    text = raw.decode()
    assert proc.returncode == 0, text[-3000:]
    assert b"\r" not in raw and b"\x1b" not in raw
    lines = text.splitlines()
    vals = [x for x in lines if x.startswith("validation at step ")]
    assert vals and all("val_loss=" in x for x in vals)
    steps = [x for x in lines if re.match(r"step \d+(/\d+)? \| ", x)]
    assert steps and all(re.search(r"runs=\d+\+\d+/4 failed=\d+ buf=\d+%", x) for x in steps)
    # No warning that the package's own wiring causes, and nothing said twice.
    for noise in ("max_epochs", "sync_dist", "val_dataloader", "validation_step"):
        assert noise not in text, noise
    assert text.count("online study summary") == 1
    summary = text[text.index("online study summary") :].splitlines()
    assert all(len(line) <= 80 for line in summary), summary
    assert_none_left(marker)


def test_the_bar_total_is_the_study_not_max_steps():
    stats = {"completed": 0, "running": 2, "samples_received": 10, "samples_served": 0}
    assert expected_steps(stats, 64, 3, 10_000) is None  # nothing completed: unknown
    # FIFO (reuse 1): 64 runs of 50 samples, batches of 32 -> 100 steps; half of them served
    stats = {
        "completed": 30,
        "running": 4,
        "samples_received": 1600,
        "samples_served": 1600,
        "mean_reuse": 1.0,
    }
    assert expected_steps(stats, 64, 50, 10_000) == 100
    assert expected_steps(stats, 64, 50, 80) == 80  # max_steps comes first: it is the total


# ---------------------------------------------------------------------- 3: dtypes
def _f64(theta):
    for t in range(6):
        yield np.array([theta[0], t / 6.0]), np.array([theta[0] * t])  # float64


@pytest.mark.timeout(180)
def test_a_float64_solver_trains_a_float32_model_with_one_notice(caplog):
    dm = OnlineDataModule(
        _f64, ParameterSpace([0], [1]), n_simulations=4, batch_size=4, buffer=FIFO(64, 4)
    )
    model = Regressor(2, 1)
    with caplog.at_level("INFO"):
        _quiet_trainer(max_steps=50).fit(model, dm)
    assert dm.stats["completed"] == 4
    notices = [r.getMessage() for r in caplog.records if "solver yields float64" in r.getMessage()]
    assert len(notices) == 1 and "float32" in notices[0] and "dtype='keep'" in notices[0]


@pytest.mark.timeout(180)
def test_dtype_keep_with_a_float32_model_is_refused_at_the_first_batch_with_the_fix():
    dm = OnlineDataModule(
        _f64,
        ParameterSpace([0], [1]),
        n_simulations=4,
        batch_size=4,
        buffer=FIFO(64, 4),
        dtype="keep",
    )
    with pytest.raises(TypeError, match=r"float64 samples .* model's parameters are float32"):
        _quiet_trainer(max_steps=50).fit(Regressor(2, 1), dm)
    with pytest.raises(ValueError, match="dtype must be"):
        OnlineDataModule(_f64, ParameterSpace([0], [1]), n_simulations=4, dtype="float31")
    assert OnlineDataModule(_f64, ParameterSpace([0], [1]), n_simulations=4, dtype="float64")


def test_messages_name_dtypes_as_numpy_names_them():
    first = [(np.dtype(np.float32).str, (3,))]
    msg = check_step((np.ones(3),), 1, first)
    assert "float64(3,)" in msg and "float32(3,)" in msg and "<f" not in msg


# ---------------------------------------------------------------------- 4, 5: no silence
class _Hangs:
    """Yields one sample, then hangs for ``seconds``, then yields the rest."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, theta):
        yield np.array([theta[0], 0.0], np.float32), np.array([0.0], np.float32)
        time.sleep(self.seconds)
        for t in range(1, 4):
            yield np.array([theta[0], t], np.float32), np.array([t], np.float32)


@pytest.mark.timeout(180)
def test_a_silence_is_told_with_the_runs_in_flight():
    dm = OnlineDataModule(
        _Hangs(4.0),
        ParameterSpace([0], [1]),
        n_simulations=2,
        n_workers=2,
        batch_size=8,
        buffer=FIFO(64, 8),
        warn_after_silence=1.0,
    )
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _quiet_trainer(max_steps=20).fit(Regressor(2, 1), dm)
    told = [str(w.message) for w in seen if "no new sample for" in str(w.message)]
    assert told, [str(w.message) for w in seen]
    assert re.search(r"2 run\(s\) in flight on rank 0: run \d+ \(theta=.*\) for \d+ s", told[0])
    assert "run_timeout" in told[0]


FAILING = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import numpy as np
    from _models import Regressor
    import lightning.pytorch as pl
    from lightning_online import FIFO, OnlineDataModule, ParameterSpace
    from lightning_online.errors import StudyError

    def solver(theta):
        for t in range(4):
            if theta[0] > 0.5:
                raise ValueError("too hot")  # line 13
            yield np.array([theta[0], t], np.float32), np.array([t], np.float32)

    def fit(**kw):
        dm = OnlineDataModule(solver, ParameterSpace([0], [1]), n_simulations=6, batch_size=4,
                              buffer=FIFO(64, 4), max_retries=1, max_failed_fraction=1.0, **kw)
        pl.Trainer(max_steps=200, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False).fit(Regressor(2, 1), dm)
        return dm

    if __name__ == "__main__":
        dm = fit()
        print("STATS", dm.stats["failed"], dm.stats["completed"])
        try:
            fit(stop_on_deterministic_failure=True)
        except StudyError as exc:
            print("STOPPED", str(exc).splitlines()[0])
    """
)


@pytest.mark.timeout(300)
def test_a_failing_solver_is_shown_with_its_file_and_line_and_called_deterministic(tmp_path):
    script = tmp_path / "study.py"
    script.write_text(FAILING.format(tests=str(Path(__file__).parent)))
    env, marker = env_with_marker()
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=280,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    err = out.stderr
    # Shown without any logging set-up, with the user's file and line, once per distinct error.
    assert f'File "{script}", line 13, in solver' in err, err[-3000:]
    assert "<dynamic-code>" not in err
    # once per distinct error and study (two studies here), however many runs fail with it
    assert err.count("later failures with the same error are not shown again") == 2
    assert "the failure is deterministic" in err
    failed, completed = out.stdout.split("STATS ")[1].split()[:2]
    assert float(completed) == 6 and float(failed) >= 2
    assert "STOPPED" in out.stdout and "deterministic" in out.stdout.split("STOPPED")[1]
    assert_none_left(marker)


class _Slow:
    def __call__(self, theta):
        for t in range(40):
            time.sleep(0.05)
            yield np.array([theta[0], t], np.float32), np.array([t], np.float32)


@pytest.mark.timeout(180)
def test_runs_stopped_in_flight_are_counted_and_shown(tmp_path):
    dm = OnlineDataModule(
        _Slow(), ParameterSpace([0], [1]), n_simulations=20, batch_size=2, buffer=FIFO(64, 2)
    )
    monitor = StudyMonitor(plot=False)
    trainer = _quiet_trainer(max_steps=3, callbacks=[monitor], default_root_dir=tmp_path)
    trainer.fit(Regressor(2, 1), dm)
    s = dm.stats
    assert s["stopped"] >= 1 and s["running"] == 0
    assert s["launched"] == s["completed"] + s["failed"] + s["stopped"]
    assert monitor.summary["runs_stopped"] == s["stopped"]


# ---------------------------------------------------------------------- 6: the picture
def test_the_validation_error_picture_as_a_person_opens_it(tmp_path):
    from matplotlib.image import imread

    space = ParameterSpace(
        [0.0, 0.0, 1e-3], [1.0, 1.0, 1.0], ["a", "b", "nu"], log=[False, False, True]
    )
    rng = np.random.default_rng(0)
    theta = space.from_unit(rng.random((16, 3)))
    loss = 1e-3 * (1 + 20 * theta[:, 1] ** 2) * (1 + 5 * (theta[:, 2] < 0.01))
    launched = space.from_unit(rng.random((40, 3)))
    fig = plot_validation_error(theta, loss, space, launched=launched, title="step 10")
    fig.savefig(tmp_path / "v.png", dpi=100)
    png = imread(tmp_path / "v.png")
    width, height = fig.get_size_inches() * 100
    assert png.shape[:2] == (round(height), round(width))
    assert png[..., :3].std() > 0.05  # not blank
    # 3 parameter panels + their 3 count axes + the map + its colour bar
    assert len(fig.axes) == 8
    twins = [ax for ax in fig.axes if len(ax.patches) >= 20]  # the histograms' axes
    assert len(twins) == 3 and len({ax.get_ylim() for ax in twins}) == 1  # one count scale
    assert [ax.get_ylabel() for ax in twins] == ["", "", "runs launched"]
    for ax in twins:
        ticks = [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
        assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)
    assert fig.legends and len(fig.legends[0].get_texts()) == 3
    (mapped,) = [ax for ax in fig.axes if ax.get_title().startswith("error over")]
    assert "b" in mapped.get_title()  # the parameter the error depends on most


# ---------------------------------------------------------------------- 7: recipes
def test_recipes_ship_in_the_package_and_are_found_by_name(tmp_path, monkeypatch):
    shipped = recipes()
    repo = sorted(p.name for p in (ROOT / "recipes").glob("*.yaml"))
    assert sorted(p.name for p in shipped.values()) == repo
    for path in shipped.values():  # the same files (edit recipes/, then copy them over)
        assert path.read_text() == (ROOT / "recipes" / path.name).read_text(), path.name
    monkeypatch.chdir(tmp_path)  # no clone here
    cli = OnlineCLI(args=["--config", "heat2d", "--data.n_simulations=4"], run=False)
    assert cli.datamodule.n_simulations == 4 and cli.datamodule.space.dim == 5
    listed = subprocess.run(
        [sys.executable, "-m", "lightning_online.cli", "recipes"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.splitlines()
    assert len(listed) == len(shipped) + 1 and all(len(x) <= 80 for x in listed)
    for name, line in zip(shipped, listed, strict=False):
        assert line.split()[0] == name and len(line.split()) > 2


@pytest.mark.timeout(120)
def test_a_misspelt_option_is_one_line_with_the_nearest(tmp_path):
    for wrong, right in (
        (["--data.n_simulation=4"], "--data.n_simulations"),
        (["--trainer.max_stepz=3"], "--trainer.max_steps"),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "lightning_online.cli", "fit", "--config", "heat2d", *wrong],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=100,
        )
        assert out.returncode == 2
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and f"did you mean {right}?" in lines[0], out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "lightning_online.cli", "fit", "--config", "heat2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=100,
    )
    assert out.returncode != 0 and "did you mean heat2d" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
