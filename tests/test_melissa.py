"""Melissa's client calls (``csrc/melissa``: ``melissa_init``, ``melissa_init_f``,
``melissa_send``, ``melissa_finalize``) over the C client: a Melissa-instrumented MPI solver
(``csrc/examples/melissa_heat.c``, two fields of per-rank local sizes) compiled with the flags of
``python -m lightning_online.client --cflags/--libs`` streams into ``ExternalSolver`` and an
``OnlineDataModule``, on 2 and 3 MPI ranks; misuse ends the run with a message that reaches the
training side.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from test_client_c import Receiver, environment, free_port, run

import lightning_online
from lightning_online import FIFO, ExternalSolver, Halton, OnlineDataModule, ParameterSpace
from lightning_online._wire import tcp as proto
from lightning_online.solvers.heat2d import Heat2D

CSRC = Path(lightning_online.__file__).parent / "csrc"
BIN = Path(sys.executable).parent
MPICC = BIN / "mpicc"
MPIEXEC = BIN / "mpiexec"
THETA = np.array([300.0, 123.5, 480.25, 200.0, 410.0])
NX, NY, N_STEPS = 6, 5, 4

pytestmark = pytest.mark.timeout(240)

# Misuse of the API, one mode per case (argument 1), every rank doing the same.
PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <mpi.h>
#include "melissa_api.h"

int main(int argc, char **argv)
{
    const char *mode = argv[1];
    double a[3] = {1, 2, 3}, b[2] = {4, 5};
    int rank, three = 3;
    MPI_Fint fcomm;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    a[0] += 10 * rank;
    if (!strcmp(mode, "init_f")) {           /* the Fortran entry point, a Fortran handle */
        fcomm = MPI_Comm_c2f(MPI_COMM_WORLD);
        melissa_init_f("a", &three, &fcomm);
    } else {
        melissa_init("a", 3, MPI_COMM_WORLD);
    }
    melissa_init("b", rank == 0 ? 2 : 0, MPI_COMM_WORLD);
    if (!strcmp(mode, "twice")) {
        melissa_send("a", a);
        melissa_send("a", a);
    } else if (!strcmp(mode, "unknown")) {
        melissa_send("c", a);
    } else if (!strcmp(mode, "late_init")) {
        melissa_send("a", a);
        melissa_init("c", 1, MPI_COMM_WORLD);
    } else if (!strcmp(mode, "incomplete")) {
        melissa_send("a", a);
        melissa_send("b", b);
        melissa_send("b", b);
        melissa_finalize();
        MPI_Finalize();
        return 0;
    } else {                                 /* "ok", "init_f": two complete steps */
        int s;
        for (s = 0; s < 2; s++) {
            melissa_send("b", b);
            a[1] = s;
            melissa_send("a", a);
        }
    }
    melissa_finalize();
    MPI_Finalize();
    return 0;
}
"""


def flags(option: str, env: dict[str, str]) -> list[str]:
    cmd = [sys.executable, "-m", "lightning_online.client", option]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if not MPICC.exists():
        pytest.skip(f"no mpicc next to {sys.executable} (install the mpich extra)")
    d = tmp_path_factory.mktemp("melissa")
    env = {**os.environ, "LIGHTNING_ONLINE_CACHE": str(d / "cache")}
    cflags, libs = flags("--cflags", env), flags("--libs", env)
    assert libs[1:] == ["-lmelissa_api", "-lm"] and Path(libs[0][2:], "libmelissa_api.a").exists()
    assert flags("--libs", env) == libs  # built once, then found in the cache
    (d / "prog.c").write_text(PROGRAM)
    out = {}
    for name, src in [("prog", d / "prog.c"), ("heat", CSRC / "examples" / "melissa_heat.c")]:
        # As a Melissa user's Makefile would: compile, then link against the library.
        cmd = [MPICC, "-O2", "-Wall", "-Wextra", "-Werror", "-std=c99", *cflags]
        cmd += ["-c", src, "-o", d / f"{name}.o"]
        done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        cmd = [MPICC, d / f"{name}.o", *libs, "-o", d / name]
        done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        out[name] = d / name
    return out


def melissa_heat(built, n_procs: int) -> ExternalSolver:
    """melissa_heat as Melissa launches it: the parameters on the command line."""
    args = [str(built["heat"]), "{0}", "{1}", "{2}", "{3}", "{4}", str(NX), str(NY), str(N_STEPS)]
    return ExternalSolver(
        args, fields=["x", "temperature", "west"], n_procs=n_procs, n_steps=N_STEPS
    )


def check_heat_step(theta, k, x, temperature, west) -> None:
    """Step k of melissa_heat for theta is Heat2D's, exactly (Heat2D gives field / 500 in
    float32; the program sends the float64 field)."""
    python = list(Heat2D(nx=NX, ny=NY, n_steps=N_STEPS)(np.asarray(theta)))
    assert x.dtype == np.float64 and np.array_equal(x, [*theta, k]), x
    assert temperature.dtype == west.dtype == np.float64
    assert temperature.shape == (NY * NX,) and west.shape == (NY,)
    np.testing.assert_array_equal((temperature / 500.0).astype(np.float32), python[k][1])
    np.testing.assert_array_equal(west, temperature.reshape(NY, NX)[:, 0])


@pytest.mark.parametrize("n_procs", [1, 2, 3])
def test_melissa_heat_streams_through_external_solver(built, n_procs):
    steps = list(melissa_heat(built, n_procs)(THETA))
    assert len(steps) == N_STEPS
    for k, (x, temperature, west) in enumerate(steps):
        check_heat_step(THETA, k, x, temperature, west)


class Recorder(pl.LightningModule):
    """Fits (theta, t) -> field and keeps every sample it was served."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(6, NX * NY)
        self.seen: list[tuple[np.ndarray, ...]] = []

    def training_step(self, batch, batch_idx):
        x, temperature, west = batch
        for i in range(len(x)):
            self.seen.append(tuple(t[i].detach().cpu().numpy() for t in (x, temperature, west)))
        return torch.nn.functional.mse_loss(self.net(x.float()), temperature.float() / 500)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def test_a_study_of_a_melissa_solver_on_two_ranks(built):
    dm = OnlineDataModule(
        melissa_heat(built, 2),
        ParameterSpace([100.0] * 5, [500.0] * 5),
        n_simulations=4,
        batch_size=4,
        n_workers=2,
        buffer=FIFO(64, watermark=4),
        sampler=Halton(seed=0),
        dtype="float64",  # the doubles melissa_send sends, compared exactly below
    )
    model = Recorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1000,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, dm)
    assert dm.stats["completed"] == 4 and dm.stats["failed"] == 0
    assert dm.stats["samples_received"] == 4 * N_STEPS
    assert len(model.seen) == dm.stats["samples_served"] > 0
    for x, temperature, west in model.seen:
        check_heat_step(x[:5], int(x[5]), x, temperature, west)


def run_prog(built, mode: str, n_procs: int = 2, **env_extra: str):
    rx = Receiver(n_parts=n_procs)
    env = {**environment(f"127.0.0.1:{rx.port}", params="1.5,2.5"), **env_extra}
    res = run([MPIEXEC, "-n", str(n_procs), built["prog"], mode], env, timeout=120)
    return res, rx.finish()


@pytest.mark.parametrize("mode", ["ok", "init_f"])
def test_fields_of_per_rank_sizes_make_one_step(built, mode):
    res, parts = run_prog(built, mode)
    assert res.returncode == 0, res.stdout + res.stderr
    for p, msgs in enumerate(parts):
        assert [m[0] for m in msgs] == [proto.HELLO, proto.STEP, proto.STEP, proto.CLOSE], p
        assert msgs[0][2][:2] == (p, 2)  # type: ignore[index]
        for s, (_, _, fields) in enumerate(msgs[1:3]):
            assert isinstance(fields, dict)
            assert list(fields) == ["x", "a", "b"]  # the input, then init order
            want_x = [1.5, 2.5, float(s)] if p == 0 else []
            np.testing.assert_array_equal(fields["x"], want_x)
            np.testing.assert_array_equal(fields["a"], [1 + 10 * p, s, 3])
            np.testing.assert_array_equal(fields["b"], [4, 5] if p == 0 else [])


def test_the_input_field_can_be_renamed_or_left_out(built):
    res, parts = run_prog(built, "ok", LIGHTNING_ONLINE_MELISSA_INPUT="")
    assert res.returncode == 0, res.stderr
    assert all(list(m[2]) == ["a", "b"] for msgs in parts for m in msgs[1:3])  # type: ignore[call-overload]
    res, parts = run_prog(built, "ok", n_procs=1, LIGHTNING_ONLINE_MELISSA_INPUT="theta_t")
    assert res.returncode == 0, res.stderr
    assert list(parts[0][1][2]) == ["theta_t", "a", "b"]  # type: ignore[call-overload]
    res, parts = run_prog(built, "ok", n_procs=1, LIGHTNING_ONLINE_MELISSA_INPUT="a")
    assert res.returncode == 1 and "set LIGHTNING_ONLINE_MELISSA_INPUT" in res.stderr


@pytest.mark.parametrize(
    ("mode", "words"),
    [
        ("twice", 'melissa_send("a"): sent twice in time step 0; not sent yet: b'),
        ("unknown", 'melissa_send("c"): no such field was initialised'),
        ("late_init", 'melissa_init("c") after the first melissa_send'),
        ("incomplete", "melissa_finalize: time step 1 is incomplete: not sent: a"),
    ],
)
def test_misuse_fails_the_run_with_a_message(built, mode, words):
    res, parts = run_prog(built, mode)
    assert words in res.stderr, res.stderr
    if mode != "incomplete":
        assert res.returncode != 0  # MPI_Abort
    # Each rank tells the training side why (an ERROR), unless another rank's MPI_Abort ended
    # it first: at least one ERROR arrives, and no rank ends its stream normally.
    errors = [msgs[-1] for msgs in parts if msgs[-1][0] == proto.ERROR]
    assert errors and all(words in str(m[2]) for m in errors), parts
    assert all(msgs[-1][0] in (proto.ERROR, proto.HELLO, proto.STEP) for msgs in parts)


def test_no_listener_every_rank_exits_2(built):
    env = environment(f"127.0.0.1:{free_port()}", params="1,2")
    res = run([MPIEXEC, "-n", "2", built["prog"], "ok"], env, timeout=120)
    assert res.returncode == 2 and "cannot connect" in res.stderr, res.stderr


def test_fortran_interfaces_compile(tmp_path):
    """melissa_api.f90, included as Melissa's is, declares calls gfortran accepts and binds to
    the C names (compiled only: the mpich wheel has no Fortran MPI to run one with)."""
    if shutil.which("gfortran") is None:
        pytest.skip("no gfortran on this machine (.ci/run installs it)")
    src = tmp_path / "solver.f90"
    src.write_text(
        "program solver\n"
        "    use iso_c_binding, only: c_null_char, c_double\n"
        "    implicit none\n"
        '    include "melissa_api.f90"\n'
        "    integer :: comm = 0, n = 3\n"
        "    real(c_double) :: u(3) = 1\n"
        '    call melissa_init_f("temperature"//c_null_char, n, comm)\n'
        '    call melissa_send("temperature"//c_null_char, u)\n'
        "    call melissa_finalize()\n"
        "end program solver\n"
    )
    cmd = ["gfortran", "-Wall", "-Werror", f"-I{CSRC / 'melissa'}", "-c", str(src)]
    cmd += ["-o", str(tmp_path / "solver.o")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    symbols = subprocess.run(
        ["nm", str(tmp_path / "solver.o")], capture_output=True, text=True, timeout=60
    ).stdout
    for name in ("melissa_init_f", "melissa_send", "melissa_finalize"):
        assert f" U {name}\n" in symbols, symbols
