"""Validation at construction: one set of checks (``lightning_online._util.checks``), one message
style, every bad argument refused when the object is made, not at every run."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from _solvers import Smooth

from lightning_online import (
    FIFO,
    FIRO,
    ExternalSolver,
    Halton,
    OnlineDataModule,
    ParameterSpace,
    Reservoir,
    Uniform,
)
from lightning_online._util.checks import (
    check_choice,
    check_directory,
    check_environment,
    check_int,
    check_optional_int,
    check_real,
    check_template,
)

SPACE = ParameterSpace([0, 0], [1, 1])


def external(**kw):
    return ExternalSolver([sys.executable, "-c", "pass"], launcher="direct", **kw)


def datamodule(**kw):
    solver = kw.pop("solver", Smooth())
    return OnlineDataModule(solver, kw.pop("space", SPACE), **{"n_simulations": 4, **kw})


NAN = float("nan")

# (what is built, the error's text) for every bad input of the review, and a few more
TABLE = [
    # ExternalSolver
    (
        lambda: external(max_step_bytes=0),
        "ExternalSolver: max_step_bytes must be an integer >= 128, got 0",
    ),
    (lambda: external(max_step_bytes=-5), "max_step_bytes must be an integer >= 128, got -5"),
    (lambda: external(max_step_bytes=True), "max_step_bytes must be an integer >= 128, got True"),
    (lambda: external(max_step_bytes=2.5), "max_step_bytes must be an integer >= 128, got 2.5"),
    (lambda: external(host=""), "ExternalSolver: host must be a non-empty string, got ''"),
    (lambda: external(host=5), "host must be a non-empty string, got 5"),
    (
        lambda: external(env={"A": 1}),
        "env['A'] must be a string without NUL (convert it: str(...)), got 1",
    ),
    (lambda: external(env={"A=B": "1"}), "env key must be a non-empty string without '=' or NUL"),
    (lambda: external(env=["A"]), "env must be a mapping of variable names to string values"),
    (
        lambda: external(cwd="/nonexistent"),
        "cwd must be an existing directory or None, got '/nonexistent'",
    ),
    (lambda: external(n_procs=np.int64(0)), "n_procs must be a positive integer, got"),
    (lambda: external(n_procs=True), "n_procs must be a positive integer, got True"),
    (lambda: external(n_steps=0), "n_steps must be a positive integer or None, got 0"),
    (lambda: external(connect_timeout=NAN), "connect_timeout must be a finite number > 0, got nan"),
    (lambda: external(exit_timeout=-1), "exit_timeout must be a finite number > 0, got -1"),
    (lambda: external(echo_output="yes"), "echo_output must be one of True, False, got 'yes'"),
    (lambda: external(fields="xy"), "fields must be a list of names or None, got 'xy'"),
    (
        lambda: ExternalSolver([sys.executable, "{x}"], launcher="direct"),
        "command[1] must be a template whose fields are {0}, {1}, ..., {theta}, got '{x}'",
    ),
    (
        lambda: ExternalSolver([sys.executable, "{0"], launcher="direct"),
        "command[1] must be a valid format template",
    ),
    (
        lambda: ExternalSolver([sys.executable, "--a={}"], launcher="direct"),
        "must be a template with numbered fields",
    ),
    (
        lambda: datamodule(solver=ExternalSolver([sys.executable, "{5}"], launcher="direct")),
        "the command uses {5}, but the parameter space has 2 dimension(s) ({0} to {1})",
    ),
    # OnlineDataModule
    (
        lambda: datamodule(poll_interval=-1),
        "poll_interval must be a finite number in [1e-05, 1], got -1",
    ),
    (
        lambda: datamodule(poll_interval=NAN),
        "poll_interval must be a finite number in [1e-05, 1], got nan",
    ),
    (
        lambda: datamodule(poll_interval=0),
        "poll_interval must be a finite number in [1e-05, 1], got 0",
    ),
    (
        lambda: datamodule(poll_interval=True),
        "poll_interval must be a finite number in [1e-05, 1], got True",
    ),
    (lambda: datamodule(val_batch_size=0), "val_batch_size must be a positive integer, got 0"),
    (lambda: datamodule(n_simulations=True), "n_simulations must be a positive integer, got True"),
    (lambda: datamodule(max_retries=-1), "max_retries must be a non-negative integer, got -1"),
    (lambda: datamodule(max_retries=1.0), "max_retries must be a non-negative integer, got 1.0"),
    (
        lambda: datamodule(run_timeout=NAN),
        "run_timeout must be a finite number > 0 or None, got nan",
    ),
    (
        lambda: datamodule(run_timeout="1"),
        "run_timeout must be a finite number > 0 or None, got '1'",
    ),
    (
        lambda: datamodule(max_failed_fraction=NAN),
        "max_failed_fraction must be a finite number in (0, 1], got nan",
    ),
    (lambda: datamodule(pin_memory=1), "pin_memory must be one of True, False, None, got 1"),
    (lambda: datamodule(resume="loose"), "resume must be one of 'strict', 'relaxed', got 'loose'"),
    (
        lambda: datamodule(checkpoint_buffer="yes"),
        "checkpoint_buffer must be one of True, False, got 'yes'",
    ),
    # ParameterSpace
    (
        lambda: ParameterSpace([0, 0, 0], [1, 1, 1], names="xyz"),
        "ParameterSpace: names must be a sequence of strings, one per dimension, got 'xyz'",
    ),
    (
        lambda: ParameterSpace([-1e308], [1e308]),
        "ParameterSpace: dimension 0 ('theta0'): the span high - low overflows a float64",
    ),
    (lambda: ParameterSpace([0], [1], names=[""]), "dimension 0: name must be a non-empty string"),
    # buffers and samplers
    (lambda: FIFO(0), "FIFO: capacity must be a positive integer, got 0"),
    (lambda: FIRO(True), "FIRO: capacity must be a positive integer, got True"),
    (
        lambda: Reservoir(8, watermark=9),
        "watermark must be an integer between 1 and capacity (8), got 9",
    ),
    (
        lambda: Reservoir(8, seed=-1),
        "Reservoir: seed must be a non-negative integer or None, got -1",
    ),
    (lambda: FIFO(8, seed=1.5), "FIFO: seed must be a non-negative integer or None, got 1.5"),
    (lambda: Uniform(seed=True), "Uniform: seed must be a non-negative integer or None, got True"),
    (lambda: Halton(seed=-2), "Halton: seed must be a non-negative integer or None, got -2"),
]


@pytest.mark.parametrize(("build", "text"), TABLE, ids=[t for _, t in TABLE])
def test_bad_input_is_refused_at_construction_with_its_text(build, text):
    with pytest.raises(ValueError) as info:
        build()
    assert text in str(info.value), str(info.value)


def test_numpy_integers_are_accepted_alike():
    dm = datamodule(
        n_simulations=np.int64(4),
        max_retries=np.int64(1),  # was refused while n_simulations=np.int64(4) was accepted
        batch_size=np.int32(2),
        n_workers=np.int16(1),
        val_batch_size=np.uint8(3),
        run_timeout=np.int64(5),
        poll_interval=np.float32(0.01),
    )
    assert (dm.n_simulations, dm.max_retries, dm.batch_size, dm.val_batch_size) == (4, 1, 2, 3)
    assert all(
        type(v) is int for v in (dm.n_simulations, dm.max_retries, dm.batch_size, dm.n_workers)
    )
    assert type(dm.run_timeout) is float and type(dm.poll_interval) is float
    s = external(max_step_bytes=np.int64(1 << 20), n_procs=np.int64(1), n_steps=np.int32(3))
    assert (s.max_step_bytes, s.n_procs, s.n_steps) == (1 << 20, 1, 3)
    assert FIFO(np.int64(8), seed=np.uint32(3)).seed == 3


def test_the_helpers():
    assert check_int(np.int8(3), "n", 1) == 3
    assert check_int(5, "n", 1, maximum=5) == 5
    with pytest.raises(ValueError, match=r"^Owner: n must be an integer between 1 and 4, got 5$"):
        check_int(5, "n", 1, "Owner", maximum=4)
    with pytest.raises(ValueError, match=r"^n must be an integer, got 'a'$"):
        check_int("a", "n")
    with pytest.raises(ValueError, match="or None, got -1"):
        check_optional_int(-1, "n", 0)
    assert check_optional_int(None, "n", 0) is None
    assert check_real(np.float16(0.5), "x", positive=True) == 0.5
    assert check_real(0, "x", minimum=0) == 0.0
    with pytest.raises(ValueError, match=r"^B: x must be a finite number > 0, got 0$"):
        check_real(0, "x", "B", positive=True)
    with pytest.raises(ValueError, match="finite number, got inf"):
        check_real(float("inf"), "x")
    with pytest.raises(ValueError, match="finite number, got"):
        check_real(10**400, "x")  # beyond float range
    assert check_choice(False, "flag", (True, False)) is False
    with pytest.raises(ValueError, match="one of True, False, got 0"):
        check_choice(0, "flag", (True, False))
    assert check_environment({"A": "1"}) == {"A": "1"}
    assert check_directory(".") == "."
    assert check_template("--nu={0:.3g} {theta} {1}", "c", ("theta",)) == 2
    assert check_template("plain", "c") == 0
