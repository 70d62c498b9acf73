"""ExternalSolver: solver programs launched per run that stream back over the client protocol.

The programs here are real processes (a Python client program, started directly or under the
``mpich`` wheel's ``mpiexec``); the C library and the C heat solver are in ``test_client_c.py``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import psutil
import pytest
from _models import Regressor, quiet_trainer
from conftest import has_ipv6_loopback, solver_processes

from lightning_online import (
    FIFO,
    Direct,
    ExternalRunError,
    ExternalSolver,
    Halton,
    Mpiexec,
    OnlineDataModule,
    ParameterSpace,
    Srun,
)

HERE = Path(__file__).parent
PROGRAM = str(HERE / "programs" / "lo_ext_client.py")
pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("no_orphans")]


def program(*args: str, launcher="direct", **kw) -> ExternalSolver:
    kw.setdefault("fields", ["x", "y"])
    return ExternalSolver([sys.executable, PROGRAM, *args], launcher=launcher, **kw)


def run(solver: ExternalSolver, theta=(1.0, 2.0)) -> list[tuple[np.ndarray, ...]]:
    return [tuple(a.copy() for a in step) for step in solver(np.array(theta))]


def expected(theta, steps=5, size=4):
    theta = np.asarray(theta)
    return [
        (
            np.append(theta, k / steps).astype(np.float32),
            (np.arange(size) * theta.sum() * (k + 1)).astype(np.float32),
        )
        for k in range(steps)
    ]


def assert_steps(got, want):
    assert len(got) == len(want)
    for (gx, gy), (wx, wy) in zip(got, want, strict=True):
        np.testing.assert_array_equal(gx, wx)
        np.testing.assert_array_equal(gy, wy)


@pytest.mark.parametrize("launcher", ["direct", "mpiexec"])
def test_a_run_streams_its_steps_in_order(launcher):
    steps = run(program("--steps", "5", launcher=launcher, n_steps=5), (1.5, -2.25))
    assert_steps(steps, expected((1.5, -2.25)))
    assert steps[0][0].dtype == np.float32


def test_mpiexec_with_two_ranks_and_fields_in_declared_order():
    solver = program("--steps", "3", launcher="mpiexec", n_procs=2, fields=["y", "x"])
    steps = run(solver, (1.0, 1.0))
    want = expected((1.0, 1.0), steps=3)
    assert [s[0].tolist() for s in steps] == [w[1].tolist() for w in want]  # y first


def test_fields_default_to_the_first_steps_names():
    steps = run(program("--steps", "2", fields=None))
    assert len(steps) == 2 and steps[0][0].shape == (3,)


def test_command_placeholders_carry_the_parameters():
    solver = program("--steps", "{0:.0f}", "--size", "{1:.0f}")
    assert solver.argv(np.array([3.0, 7.0]))[-4:] == ["--steps", "3", "--size", "7"]
    assert_steps(run(solver, (3.0, 7.0)), expected((3.0, 7.0), steps=3, size=7))
    theta = ExternalSolver(["prog-{theta}"], launcher="direct")
    assert theta.argv(np.array([0.5, 2.0])) == ["prog-0.5,2.0"]


def test_launcher_command_lines():
    assert Direct().command(["a", "b"], 1) == ["a", "b"]
    cmd = Mpiexec(args=["-bind-to", "core"]).command(["a"], 4)
    assert cmd[1:] == ["-n", "4", "-bind-to", "core", "a"] and cmd[0].endswith("mpiexec")
    cmd = Srun(nodes=2, cpus_per_task=3, args=["--mpi=pmi2"]).command(["a", "b"], 8)
    assert cmd[1:] == [
        "--ntasks=8",
        "--nodes=2",
        "--cpus-per-task=3",
        "--kill-on-bad-exit=1",
        "--job-name=lightning-online-run",
        "--exact",
        "--mpi=pmi2",
        "a",
        "b",
    ]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(command=[]), "non-empty list"),
        (dict(command="prog"), "non-empty list"),
        (dict(command=[sys.executable], n_procs=0), "n_procs"),
        (dict(command=[sys.executable], n_procs=2, launcher="direct"), "Direct launcher"),
        (dict(command=[sys.executable], launcher="qsub"), "unknown launcher"),
        (dict(command=[sys.executable], fields=["x", "x"]), "distinct"),
        (dict(command=[sys.executable], fields=["x" * 60]), "1 to 47 bytes"),
        (dict(command=[sys.executable], n_steps=0), "n_steps"),
        (dict(command=[sys.executable], connect_timeout=0), "connect_timeout"),
        (dict(command=["./no/such/solver"]), "neither on PATH"),
        (dict(command=[sys.executable], launcher=Srun(executable="no-such-srun")), "SLURM"),
        (dict(command=[sys.executable], launcher=Mpiexec("no-such-mpiexec")), "cannot find"),
    ],
)
def test_bad_configuration_is_refused_at_construction(kwargs, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        ExternalSolver(**kwargs)


@pytest.mark.parametrize(
    ("args", "kw", "match"),
    [
        (["--mode", "exit-before"], {}, r"ended before it connected \(exit code 3\)"),
        (["--mode", "crash"], {}, r"after 2 steps without lo_close.*exit code 9"),
        (["--mode", "raise"], {}, "reported an error: RuntimeError: solver diverged at step 2"),
        (["--mode", "truncate"], {}, "died while sending step 2"),
        (["--mode", "bad-names"], {}, r"fields \['x', 'z'\], expected \['x', 'y'\]"),
        (["--mode", "garbage"], {}, "protocol error: bad magic number"),
        (["--mode", "nonzero-after-close"], {}, "sent 5 steps, then failed"),
        (["--mode", "sleep"], {"connect_timeout": 1.0}, "did not connect within 1 s"),
    ],
)
def test_faulty_runs_raise_with_the_cause_and_the_programs_output(args, kw, match):
    t0 = time.monotonic()
    with pytest.raises(ExternalRunError, match=match) as info:
        run(program(*args, **kw))
    elapsed = time.monotonic() - t0
    assert "lo_ext_client starting with theta=[1.0, 2.0]" in str(info.value)  # output tail
    # A fault is reported as soon as it happens: in about the time of a healthy run of the
    # same program (measured here, on this machine's load), plus any timeout the case sets;
    # never after the default connect_timeout (120 s).
    reference = healthy_run_seconds()
    # promptly: within a few healthy runs' time (10x: shared cores), never a timeout's length
    assert elapsed < 10 * reference + 2 * kw.get("connect_timeout", 0), (elapsed, reference)


def healthy_run_seconds() -> float:
    """The longer of two healthy runs of the test program (start, connect, 5 steps, close)."""
    times = []
    for _ in range(2):
        t0 = time.monotonic()
        assert_steps(run(program("--steps", "5", n_steps=5)), expected((1.0, 2.0)))
        times.append(time.monotonic() - t0)
    return max(times)


@pytest.mark.parametrize("n_procs", [2, 3])
def test_every_rank_sends_its_share_as_a_part(n_procs):
    """Each of the n MPI ranks connects as part rank of n and sends its slice of y (x from rank
    0 only): the steps arrive whole, concatenated in rank order."""
    solver = program("--parts", "--size", "7", launcher="mpiexec", n_procs=n_procs, n_steps=5)
    assert_steps(run(solver, (0.5, 1.5)), expected((0.5, 1.5), size=7))


@pytest.mark.parametrize(
    ("mode", "match"),
    [
        ("part-raise", r"reported an error \(part 1 of 2\): RuntimeError: rank 1 diverged"),
        ("part-dtype", r"field 'y': part 1 sent float64\(2,\), part 0 float32\(2,\)"),
        ("part-short", r"part\(s\) \[1\] closed after 2 steps, the others did not"),
        ("part-count", r"says it is part 1 of 3, but part\(s\) \[0\] of 2|part 0 of 2, but"),
    ],
)
def test_parts_that_disagree_fail_the_run(mode, match):
    solver = program("--parts", "--mode", mode, launcher="mpiexec", n_procs=2)
    with pytest.raises(ExternalRunError, match=match):
        run(solver)


def test_a_stray_connection_is_ignored():
    assert_steps(run(program("--mode", "stray")), expected((1.0, 2.0)))


def test_closing_the_generator_kills_the_program_and_its_mpiexec():
    gen = program("--steps", "1000", "--delay", "0.01", launcher="mpiexec", n_procs=2)(
        np.array([1.0, 2.0])
    )
    try:
        next(gen)
        running = [p for p in solver_processes() if "lo_ext" in " ".join(p.cmdline())]
        assert running
    finally:
        gen.close()
    _, alive = psutil.wait_procs(running, timeout=10)
    assert not alive


# -- in a study -------------------------------------------------------------------------------


def fit(solver, n_simulations=8, max_steps=10_000, callbacks=(), **kw):
    dm = OnlineDataModule(
        solver,
        ParameterSpace([0.0, 0.0], [1.0, 1.0], ["a", "b"]),
        n_simulations=n_simulations,
        batch_size=8,
        n_workers=2,
        buffer=FIFO(64, watermark=8),
        sampler=Halton(seed=0),
        **kw,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )
    trainer.fit(Regressor(3, 4), dm)
    return dm, trainer


def test_a_study_of_external_runs_under_mpiexec():
    # Every run: 2 MPI ranks, each sending its share of each step (parts).
    dm, trainer = fit(program("--steps", "5", "--parts", launcher="mpiexec", n_procs=2, n_steps=5))
    assert dm.stats["completed"] == 8 and dm.stats["failed"] == 0
    assert dm.stats["samples_received"] == 40 == dm.stats["samples_served"]
    assert trainer.global_step == 5


def test_failed_external_runs_are_counted_reported_and_redrawn(caplog):
    # Runs with a > 0.6 exit before connecting: each is retried once, then redrawn.
    dm, _ = fit(program("--steps", "4", "--fail-above", "0.6", n_steps=4), max_failed_fraction=0.9)
    stats = dm.stats
    assert stats["completed"] == 8
    assert stats["failed"] >= 2
    runs = [r for r in dm.runs.values() if not r.validation]
    assert all(r.theta[0] <= 0.6 for r in runs if r.status == "completed")
    failed = [r for r in runs if r.status == "failed"]
    assert failed and all(r.theta[0] > 0.6 for r in failed)
    assert all("exit code 3" in r.reason for r in failed)
    assert "ended before it connected (exit code 3)" in caplog.text
    assert "giving up before connecting" in caplog.text


def test_stopping_training_mid_run_ends_the_programs():
    """max_steps ends fit while the programs compute (silent, not sending): the pool ends their
    process groups, and the programs (under mpiexec, 2 ranks) die with them. Orphans are
    re-parented away from this process, so they are found by the no_orphans fixture's marker."""
    stalls = program("--steps", "500", "--stall-after", "20", launcher="mpiexec", n_procs=2)
    running = _ProgramsAtTheLastStep(2)
    dm, trainer = fit(stalls, n_simulations=64, max_steps=2, callbacks=[running])
    assert trainer.global_step == 2
    assert dm.stats["completed"] == 0 and dm.stats["failed"] == 0
    # the programs were running when training stopped (2 runs of 2 MPI ranks each) ...
    assert dm.stats["launched"] >= 2 and len(running.programs) >= 4, running.programs
    # ... and are gone now
    assert psutil.wait_procs(running.programs, timeout=15)[1] == []


class _ProgramsAtTheLastStep(pl.Callback):
    """The test's external programs alive when the last training batch ends."""

    def __init__(self, last_step: int) -> None:
        self.last_step, self.programs = last_step, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.last_step:
            self.programs = [
                p
                for p in solver_processes(os.environ["LIGHTNING_ONLINE_TEST_MARKER"])
                if "lo_ext_client" in " ".join(p.cmdline())
            ]


def test_stopping_training_mid_run_ends_programs_behind_a_wrapper():
    """The Direct launcher starting ``bash -c "python prog ...; true"``: the program is the
    shell's child, not the launched process; ending fit early still ends it (its group)."""
    marker = os.environ["LIGHTNING_ONLINE_TEST_MARKER"]

    def programs() -> list[psutil.Process]:
        return [p for p in solver_processes(marker) if "lo_ext_client" in " ".join(p.cmdline())]

    prog = f"{sys.executable} {PROGRAM} --steps 500 --stall-after 20"
    wrapper = ExternalSolver(["bash", "-c", f"{prog}; true"], fields=["x", "y"], launcher="direct")
    running: list[int] = []
    dm, trainer = fit(
        wrapper,
        n_simulations=64,
        max_steps=2,
        callbacks=[Count(lambda: running.append(len(programs())))],
    )
    assert trainer.global_step == 2 and dm.stats["completed"] == 0
    assert running and running[-1] >= 2  # each run: the shell and its python program
    left = programs()
    assert not left or psutil.wait_procs(left, timeout=5)[1] == []


class Count(pl.Callback):
    def __init__(self, fn) -> None:
        self.fn = fn

    def on_train_batch_end(self, *args) -> None:
        self.fn()


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_a_study_over_ipv6():
    """host="::1": the rank listens on the IPv6 loopback only, the programs are told
    ``[::1]:port`` and every step of every run arrives over IPv6."""
    seen: list[str] = []

    class Address(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            pool = trainer.datamodule._pool
            seen.append(pool.address)

    solver = program("--steps", "5", n_steps=5, host="::1")
    dm = OnlineDataModule(
        solver,
        ParameterSpace([0.0, 0.0], [1.0, 1.0]),
        n_simulations=6,
        batch_size=5,
        n_workers=3,
        buffer=FIFO(30, watermark=5),
    )
    trainer = quiet_trainer([Address()], accelerator="cpu", max_steps=1000)
    trainer.fit(Regressor(3, 4), dm)
    assert dm.stats["completed"] == 6 and dm.stats["failed"] == 0
    assert dm.stats["samples_received"] == 30
    assert seen and all(a.startswith("[::1]:") for a in seen)
