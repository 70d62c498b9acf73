"""The steering suite (benchmarks/steering_suite.py) and the third-party solver wrappers it uses
(lightning_online.solvers.thirdparty: py-pde and scikit-fem, the optional extra ``bench``)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.timeout(240)
def test_suite_quick_reports_the_oracle_the_refit_and_the_shares(tmp_path):
    out = subprocess.run(
        [sys.executable, str(BENCH / "steering_suite.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=220,
        cwd=tmp_path,
        env=dict(os.environ, PYTHONWARNINGS="ignore", LO_BENCH_CACHE=str(tmp_path / "cache")),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "steering_suite_quick.json").read_text())
    for key in ("box6d/reservoir/24", "box6d/fifo/24"):
        entry = result["summary"][key]
        for kind in ("online", "refit"):
            methods = entry[kind]
            assert set(methods) == {"uniform", "halton", "oracle", "error_model"}
            for m in methods.values():
                assert m["seeds"] == 2
                lo, hi = m["best_over_max"][1:]
                assert lo <= hi
                assert 0.0 <= m["hard_share"] <= 1.0
        # every held-out run evaluated, never drawn: distinct Sobol scrambles
        runs = result["runs"][key]["uniform"][0]
        assert len(runs["online"]) == 16 and len(runs["refit"]) == 16
        assert len(runs["runs"]) == 24 and len(set(runs["runs"])) == 24
    # the oracle puts more of its runs where the reference error is large than uniform draws
    res = result["summary"]["box6d/reservoir/24"]["online"]
    assert res["oracle"]["hard_share"] > res["uniform"]["hard_share"]
    # the compact form kept in docs/benchmarks gives the same summary through --merge
    script = str(BENCH / "steering_suite.py")
    quick = str(tmp_path / "steering_suite_quick.json")
    for args in (
        ["--merge", quick, "--compact", "--name", "c"],
        [
            "--merge",
            str(tmp_path / "c.json"),
            "--markdown",
            "--goals",
            "error_model",
            "--name",
            "m",
        ],
    ):
        out = subprocess.run(
            [sys.executable, script, *args, "--out", str(tmp_path)],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
    assert "| box6d/reservoir/24 | `error_model` |" in out.stdout
    # the goals, one row per problem/regime, each "never 5 % worse" verdict given
    goal_rows = [r for r in out.stdout.splitlines() if r.startswith("| box6d/")]
    assert sum(": met" in r or ": missed on" in r for r in goal_rows) == 2, out.stdout
    again = json.loads((tmp_path / "m.json").read_text())["summary"]
    assert again["box6d/fifo/24"]["online"]["oracle"]["hard_share"] == pytest.approx(
        result["summary"]["box6d/fifo/24"]["online"]["oracle"]["hard_share"]
    )


def test_held_out_points_are_not_in_the_pool():
    sys.path.insert(0, str(BENCH))
    import steering_suite as s

    data = s.load("smooth", pool=64, n_val=16)
    d = np.abs(data["pool"][:, None, :] - data["val"][None, :, :]).sum(axis=2)
    assert d.min() > 1e-6


@pytest.mark.timeout(300)
def test_pypde_wrappers_cross_their_transitions():
    pytest.importorskip("pde", reason="py-pde not installed (pip install lightning-online[bench])")
    from lightning_online.solvers.thirdparty import Brusselator1D, GrayScott1D

    br = pickle.loads(pickle.dumps(Brusselator1D()))
    below = br.trajectory([2.0, 1.5])  # b < (1 + a / sqrt(8))^2 = 2.9: the state is stable
    above = br.trajectory([2.0, 5.0])  # above the Turing threshold (and Hopf at 5): growth
    assert np.abs(below[-1]).max() < 0.05 < np.abs(above[-1]).max()
    gs = GrayScott1D()
    dies = gs.trajectory([0.03, 0.069])  # large k: the pulse dies out
    lives = gs.trajectory([0.04, 0.06])
    assert np.abs(dies[-1]).max() < 1e-3 < np.abs(lives[-1]).max()
    # one sample per output time: x = [theta, t], y = the field
    x, y = next(iter(gs(np.array([0.04, 0.06]))))
    assert x.shape == (3,) and y.shape == (64,) and x.dtype == np.float32
    np.testing.assert_allclose(y, lives[0].astype(np.float32))


@pytest.mark.timeout(120)
def test_skfem_heat_channel_conducts():
    pytest.importorskip("skfem", reason="scikit-fem not installed")
    from lightning_online.solvers.thirdparty import HeatChannel2D

    s = HeatChannel2D()
    plain = s.trajectory([0.0, 0.5])[-1].reshape(8, 8)
    fast = s.trajectory([3.0, 0.5])[-1].reshape(8, 8)
    # the probes next to a conducting channel are warmer; far from it about the same
    assert fast[3:5, 4:].mean() > plain[3:5, 4:].mean() + 0.05
    assert abs(fast[0, 4] - plain[0, 4]) < abs(fast[3, 4] - plain[3, 4])
    with pytest.raises(ValueError, match="theta"):
        s.trajectory([1.0])
