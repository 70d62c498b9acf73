"""The seams of the data path (issue 20): validation draws, runs without samples, a rank that
receives nothing, batch memory ownership, shutdown, the failure threshold, evictions, and the
receiver's query/action split."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cloudpickle
import numpy as np
import psutil
import pytest
import torch
from _models import Regressor, quiet_trainer

from lightning_online import (
    FIFO,
    ExternalSolver,
    Halton,
    LatinHypercube,
    OnlineDataModule,
    ParameterSpace,
    Reservoir,
    Uniform,
)
from lightning_online._study.ledger import MIN_FAILED_TO_STOP, Study, StudyError
from lightning_online._transport.store import SlotStore
from lightning_online._util.dist import Group
from lightning_online._wire.samples import encode_sample
from lightning_online.sampling import validation_points

HERE = Path(__file__).parent
ROOT = HERE.parent
RECIPES = ROOT / "recipes"
PROGRAM = str(HERE / "programs" / "lo_ext_client.py")
NO_SAMPLE = "the solver yielded no sample"


# -- 1. validation points are no sampler's draws ----------------------------------------------


def _rows(a: np.ndarray) -> set[tuple[float, ...]]:
    return {tuple(r) for r in np.asarray(a).tolist()}


@pytest.mark.parametrize("d", [1, 2, 5])
def test_validation_points_are_no_samplers_draws_whatever_its_seed(d):
    space = ParameterSpace([0.0] * d, [1.0] * d)
    val = validation_points(space, 32)
    assert val.shape == (32, d) and space.contains(val).all()
    assert len(_rows(val)) == 32
    np.testing.assert_array_equal(val, validation_points(space, 32))  # deterministic
    for seed in range(6):
        for sampler in (
            Halton(seed=seed),
            Halton(seed=seed, scramble=False),
            Uniform(seed=seed),
            LatinHypercube(seed=seed),
        ):
            drawn = sampler.draw(space, 512)
            assert not _rows(val) & _rows(drawn), (sampler, seed)
    # and space-filling: in 1-D, every eighth of the box holds some of 32 points
    if d == 1:
        assert len(np.unique(np.floor(val[:, 0] * 8))) == 8


def _recipe_training_and_validation(recipe: Path) -> tuple[np.ndarray, np.ndarray]:
    """Build the recipe's DataModule as the CLI does (no fit), then draw the training parameters
    of its whole budget from its sampler and the validation points its DataModule simulates."""
    from lightning_online.cli import OnlineCLI

    argv = sys.argv
    n = torch.get_num_threads()
    try:
        sys.argv = ["lightning-online"]
        cli = OnlineCLI(args=["--config", str(recipe)], run=False)
    finally:
        sys.argv = argv
        torch.set_num_threads(n)
    dm = cli.datamodule
    assert isinstance(dm.val_parameters, int) and dm.val_parameters > 0, recipe.name
    train = dm.sampler.draw(dm.space, dm.n_simulations)
    return train, validation_points(dm.space, dm.val_parameters)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_no_recipe_validates_on_a_run_it_trains_on(recipe, tmp_path, monkeypatch):
    # heat2d_c's program is built by make; only its name must exist to build the DataModule
    program = tmp_path / "build" / "heat2d"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    train, val = _recipe_training_and_validation(recipe)
    assert not _rows(val) & _rows(train), recipe.name


@pytest.mark.timeout(180)
def test_a_study_validates_on_runs_it_never_trained_on():
    """sampler=Halton(seed=0), val_parameters=8: no launched training run is a validation run."""
    dm = OnlineDataModule(
        _Smooth(),
        ParameterSpace([0.0, 0.0], [1.0, 1.0]),
        n_simulations=8,
        batch_size=4,
        n_workers=2,
        buffer=FIFO(32, 4),
        sampler=Halton(seed=0),
        val_parameters=8,
    )
    quiet_trainer(accelerator="cpu").fit(Regressor(3, 1), dm)
    assert dm.stats["completed"] == 8
    assert len(dm.launched_parameters) == 8 and len(dm._val_thetas) == 8
    assert not _rows(dm._val_thetas) & _rows(dm.launched_parameters)


class _Smooth:
    def __call__(self, theta):
        for k in range(4):
            x = np.array([*theta, k / 4], dtype=np.float32)
            yield x, np.sin(3 * x[:1]).astype(np.float32)


# -- 2. a run that yields no sample fails the same way on every path --------------------------


class ZeroBelow:
    """Yields nothing for theta[0] < 0.5, four steps otherwise."""

    def __call__(self, theta):
        if theta[0] < 0.5:
            return
        for k in range(4):
            x = np.array([*theta, k / 4], dtype=np.float32)
            yield x, np.tile(np.float32(theta[0]), 4)


def _zero_study(solver) -> OnlineDataModule:
    dm = OnlineDataModule(
        solver,
        ParameterSpace([0.0, 0.0], [1.4, 1.0]),
        n_simulations=6,
        batch_size=4,
        n_workers=2,
        buffer=FIFO(32, 4),
        sampler=Halton(seed=0),
        max_failed_fraction=0.9,
    )
    quiet_trainer(accelerator="cpu").fit(Regressor(3, 4), dm)
    return dm


def _assert_no_sample_runs_failed(dm: OnlineDataModule) -> None:
    stats = dm.stats
    assert stats["completed"] == 6
    runs = [r for r in dm.runs.values() if not r.validation]
    failed = [r for r in runs if r.status == "failed"]
    assert failed, "the draws include parameters that yield nothing"
    assert all(r.theta[0] < 0.5 and r.reason == NO_SAMPLE and r.n_steps == 0 for r in failed)
    assert all(r.theta[0] >= 0.5 and r.n_steps > 0 for r in runs if r.status == "completed")
    assert stats["failed"] == len(failed) and stats["launched"] == len(runs)
    # retried once with the same parameters, then redrawn
    by_theta: dict[tuple[float, ...], int] = {}
    for r in failed:
        by_theta[tuple(r.theta)] = by_theta.get(tuple(r.theta), 0) + 1
    assert set(by_theta.values()) == {2}


@pytest.mark.timeout(180)
@pytest.mark.usefixtures("no_orphans")
def test_a_python_run_that_yields_no_sample_fails_and_is_redrawn():
    _assert_no_sample_runs_failed(_zero_study(ZeroBelow()))


@pytest.mark.timeout(180)
@pytest.mark.usefixtures("no_orphans")
def test_an_external_run_that_closes_without_a_step_fails_and_is_redrawn():
    # --steps {0:.0f}: theta[0] < 0.5 connects and closes without a step; else 1 or 2 steps.
    solver = ExternalSolver(
        [sys.executable, PROGRAM, "--steps", "{0:.0f}"], launcher="direct", fields=["x", "y"]
    )
    _assert_no_sample_runs_failed(_zero_study(solver))


def test_a_run_reported_complete_without_a_step_fails_in_the_ledger():
    study, _ = _study(FIFO(8, 2))
    sim_id, _theta = _launch(study)
    study.on_end(sim_id, True, 0, 0.1, "")
    run = study.runs[sim_id]
    assert run.status == "failed" and run.reason == NO_SAMPLE
    assert study.count.failed == 1 and study.count.completed == 0
    assert study.permits == 1 and len(study._retry) == 1  # retried as any failure


# -- 3. a rank that receives nothing does not end the others' study ---------------------------


@pytest.mark.timeout(300)
def test_ddp_a_rank_that_receives_no_run_does_not_end_the_study(tmp_path):
    """2 CPU ranks (gloo). A study of 3 runs is continued from its checkpoint with a budget of
    4: the one run left goes to rank 0, rank 1 receives nothing (and the solver yields nothing
    for some parameters, which fail and are redrawn). Rank 0's run completes and training goes
    on over its samples on both ranks."""
    result = tmp_path / "result"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)]))
    out = subprocess.run(
        [sys.executable, str(HERE / "scripts" / "ddp_lonely.py"), str(result)],
        capture_output=True,
        text=True,
        timeout=280,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"result.{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["stats"] == ranks[1]["stats"]
    stats = ranks[0]["stats"]
    assert stats["completed"] == 4  # the budget, across both sessions
    assert [r["local_completed"] for r in ranks] == [1, 0]  # second session: rank 0 alone
    assert stats["samples_received"] == 4 * 16 == stats["samples_served"]  # all trained on
    steps = [r["global_step"] - r["first_step"] for r in ranks]
    assert steps[0] == steps[1] >= 16 // 4  # the last run's samples, in batches of 4
    assert ranks[1]["borrowed"] >= 1 and ranks[0]["borrowed"] == 0


# -- 4 is explained in the commit; 5. batch memory ----------------------------------------------


def _filled_store(n: int, value_of=lambda i: i) -> SlotStore:
    store = SlotStore(n)
    for i in range(n):
        blob = encode_sample(i, 0, (np.full(64, value_of(i), dtype=np.float32),), bare=True)
        if not store.configured:
            store.configure(blob)
        store.write(blob.reshape(1, -1))
    return store


@pytest.mark.parametrize("borrowed_refcounts", [False, True])
def test_a_batch_the_caller_still_holds_is_never_overwritten(monkeypatch, borrowed_refcounts):
    """Hold a batch (or only a view of it) while many more are gathered: it keeps its values.
    ``borrowed_refcounts`` makes ``sys.getrefcount`` answer as CPython 3.14 may (a loop
    variable's reference borrowed, one less): batch memory must not depend on it."""
    if borrowed_refcounts:
        real = sys.getrefcount
        # minus 2: the lambda's own argument, and one borrowed reference
        monkeypatch.setattr(sys, "getrefcount", lambda o: real(o) - 2)
    store = _filled_store(64)
    held = store.gather(np.arange(8))[0]
    view = store.gather(np.arange(8, 16))[0][2:5]  # the batch itself is dropped at once
    for k in range(2, 8):
        batch = store.gather(np.arange(8 * k, 8 * k + 8))[0]
        assert batch.data_ptr() not in (held.data_ptr(),)
        del batch
    np.testing.assert_array_equal(held[:, 0].numpy(), np.arange(8, dtype=np.float32))
    np.testing.assert_array_equal(view[:, 0].numpy(), np.arange(10, 13, dtype=np.float32))
    # and memory of released batches is reused (no page faults per batch)
    ptrs = set()
    for k in range(20):
        ptrs.add(store.gather(np.arange(8 * (k % 8), 8 * (k % 8) + 8))[0].data_ptr())
    assert len(ptrs) <= 2


# -- 6. a Ctrl-C during shutdown propagates -----------------------------------------------------


class _Idle:
    def next_task(self):
        return None

    def has_room(self):
        return True


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("no_orphans")
def test_ctrl_c_while_stopping_the_workers_propagates():
    from conftest import solver_processes

    from lightning_online._transport.pool import WorkerPool

    pool = WorkerPool(cloudpickle.dumps(_Smooth()), 1, _Idle())  # type: ignore[arg-type]
    MPI, comm = pool._spawn()
    workers = [
        p
        for p in solver_processes()
        if "lightning_online._transport.worker" in " ".join(p.cmdline())
    ]
    assert workers
    for p in workers:  # they cannot answer STOP: shutdown waits
        p.suspend()
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            pool._shutdown(MPI, comm, timeout=30.0)
    finally:
        timer.cancel()
        for p in workers:
            p.resume()
    # STOP was sent once: collect each worker's BYE, then part as shutdown does
    from lightning_online._wire.samples import TAG_BYE

    status, pending = MPI.Status(), set(range(pool.n_workers))
    deadline = time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        if comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status):
            buf = np.empty(status.Get_count(MPI.BYTE), dtype=np.uint8)
            comm.Recv([buf, MPI.BYTE], source=status.Get_source(), tag=status.Get_tag())
            if status.Get_tag() == TAG_BYE:
                pending.discard(status.Get_source())
        else:
            time.sleep(0.01)
    assert not pending
    comm.Disconnect()
    psutil.wait_procs(workers, timeout=15)


# -- 7. the failure threshold is named ----------------------------------------------------------


def test_the_study_stops_on_failures_only_from_min_failed_to_stop():
    study, _ = _study(FIFO(8, 2), max_failed_fraction=0.1)
    below = MIN_FAILED_TO_STOP - 1
    study._check_failures({"failed": below, "launched": below})  # every run failed: not yet
    with pytest.raises(StudyError, match=r"max_failed_fraction=0\.1"):
        study._check_failures({"failed": MIN_FAILED_TO_STOP, "launched": MIN_FAILED_TO_STOP})
    import lightning_online._study.ledger as mod

    assert (
        f"MIN_FAILED_TO_STOP` ({MIN_FAILED_TO_STOP})"
        in (ROOT / "docs" / "fault-tolerance.md").read_text()
    )
    assert "MIN_FAILED_TO_STOP" in OnlineDataModule.__doc__ and mod.MIN_FAILED_TO_STOP == 3


# -- 8. evictions are counted -------------------------------------------------------------------


def test_a_reservoir_counts_the_served_samples_it_evicts():
    buf = Reservoir(4, watermark=4, seed=0)
    for i in range(4):
        assert buf.put(i, timeout=0)
    served = buf.get(3)
    for i in range(10, 13):
        assert buf.put(i, timeout=0)  # each replaces a served one
    assert buf.stats()["evicted"] == 3
    assert set(served) & {x for x in range(4)} and buf.unserved == 4
    fifo = FIFO(4, 1)
    for i in range(4):
        fifo.put(i, timeout=0)
    fifo.get(4)
    assert fifo.stats()["evicted"] == 0  # served items leave; nothing is evicted


# -- 9. asking whether there is room changes nothing --------------------------------------------


def _study(buffer, **kw) -> tuple[Study, ParameterSpace]:
    space = ParameterSpace([0.0, 0.0], [1.0, 1.0])
    args = dict(
        space=space,
        sampler=Halton(seed=3),
        buffer=buffer,
        n_simulations=4,
        n_workers=1,
        batch_size=2,
        max_retries=1,
        max_failed_fraction=0.5,
        group=Group(),
    )
    args.update(kw)
    return Study(**args), space


def _launch(study: Study) -> tuple[int, np.ndarray]:
    study.permits += 1
    study._pending.append((np.array([0.25, 0.5]), False))
    task = study.next_task()
    assert task is not None
    return task


def test_has_room_is_a_query_and_drain_the_action():
    study, _ = _study(FIFO(4, 2))
    sim_id, _ = _launch(study)
    blobs = np.stack(
        [encode_sample(sim_id, k, (np.full(3, k, dtype=np.float32),), bare=True) for k in range(6)]
    )
    study.on_samples(blobs)  # 4 fit, 2 wait in the stash
    assert len(study.buffer) == 4 and len(study._stash) == 2
    study.buffer.get(2)  # room for the stash now
    study._close_buffer()  # the end of the stream, pending behind the stash
    for _ in range(3):
        assert not study.has_room()  # the stash goes first: no room for a new message
    assert len(study.buffer) == 2 and len(study._stash) == 2 and not study.buffer.closed
    study.drain()
    assert len(study.buffer) == 4 and not study._stash and study.buffer.closed
    assert not study.has_room()  # closed


def test_the_lender_is_the_first_rank_that_has_something_and_only_when_needed():
    from lightning_online._study.agreement import lender

    assert lender(np.array([0, 1]), np.array([0, 0])) == 0  # rank 1 never served: rank 0 lends
    assert lender(np.array([1, 1, 0]), np.array([0, 1, 0])) == 1
    assert lender(np.array([0, 1]), np.array([0, 1])) is None  # drained ranks repeat their own
    assert lender(np.array([1, 1]), np.array([0, 0])) is None  # nobody can lend: the study ends
