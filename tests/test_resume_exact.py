"""A resumed study starts exactly the runs that had not completed and trains on every sample of
every completed run (FIFO: exactly once): the checkpoint carries what the buffer still holds and
the batches Lightning had prefetched but not trained on."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest
import torch
from _models import Regressor, quiet_trainer
from _solvers import Smooth

from lightning_online import FIFO, FIRO, Halton, OnlineDataModule, ParameterSpace, Reservoir
from lightning_online._study.ledger import Study
from lightning_online._util.dist import Group
from lightning_online._wire.samples import encode_sample

pytestmark = [pytest.mark.timeout(240)]

N_RUNS, N_STEPS = 16, 20


class Recorder(Regressor):
    """Remembers every sample it trained on, as (theta0, theta1, t) (the solver's x)."""

    def __init__(self) -> None:
        super().__init__(3, 1)
        self.seen: list[tuple[float, ...]] = []

    def training_step(self, batch, batch_idx):
        time.sleep(0.01)  # slower than the solver: the buffer stays full
        self.seen.extend(_keys(batch[0].numpy()))
        return super().training_step(batch, batch_idx)


def _keys(x: np.ndarray) -> list[tuple[float, ...]]:
    return [tuple(r) for r in np.round(np.asarray(x, dtype=np.float32).astype(np.float64), 5)]


def _samples_of(theta) -> list[tuple[float, ...]]:
    x = np.array([[*theta, k / N_STEPS] for k in range(N_STEPS)], dtype=np.float32)
    return _keys(x)


def _dm(**kw) -> OnlineDataModule:
    return OnlineDataModule(
        Smooth(n_steps=N_STEPS),
        ParameterSpace([0, 0], [1, 1]),
        n_simulations=N_RUNS,
        batch_size=4,
        n_workers=2,
        sampler=Halton(seed=4),
        buffer=FIFO(64, watermark=4),
        **kw,
    )


def _completed(dm: OnlineDataModule) -> list[tuple[float, ...]]:
    return [tuple(r.theta) for r in dm.runs.values() if r.status == "completed"]


@pytest.mark.usefixtures("no_orphans")
def test_a_resumed_fifo_study_trains_every_completed_sample_once_and_reruns_no_completed_run(
    tmp_path,
):
    dm, first = _dm(), Recorder()
    t = quiet_trainer(max_steps=40)
    t.fit(first, dm)
    done_first = _completed(dm)
    assert 0 < len(done_first) < N_RUNS
    t.save_checkpoint(tmp_path / "mid.ckpt")

    dm2, second = _dm(), Recorder()
    quiet_trainer().fit(second, dm2, ckpt_path=tmp_path / "mid.ckpt")
    assert dm2.stats["completed"] == N_RUNS
    relaunched = [tuple(r.theta) for r in dm2.runs.values()]
    # exactly the runs that had not completed are started, none twice, no completed one again
    assert len(relaunched) == N_RUNS - len(done_first)
    assert not set(done_first) & set(relaunched)
    completed = done_first + _completed(dm2)
    assert len(set(completed)) == N_RUNS
    trained = Counter(first.seen + second.seen)
    # every sample of a run completed before the checkpoint: trained on exactly once
    once = Counter(s for theta in done_first for s in _samples_of(theta))
    missing = once - trained
    repeated = {s for s in once if trained[s] > 1}
    assert not missing, f"{sum(missing.values())} samples of completed runs never trained on"
    assert not repeated, f"{len(repeated)} samples of completed runs trained on twice"
    # runs completed after it: every sample at least once (a run in flight at the checkpoint
    # runs again whole, so what training had seen of it before is seen again)
    later = {s for theta in _completed(dm2) for s in _samples_of(theta)}
    assert later <= set(trained)
    assert set(trained) == set(once) | later  # nothing but samples of completed runs


@pytest.mark.usefixtures("no_orphans")
def test_without_checkpoint_buffer_runs_with_untrained_samples_run_again_and_nothing_is_lost(
    tmp_path,
):
    dm, first = _dm(checkpoint_buffer=False), Recorder()
    t = quiet_trainer(max_steps=40)
    t.fit(first, dm)
    t.save_checkpoint(tmp_path / "mid.ckpt")
    study = torch.load(tmp_path / "mid.ckpt", weights_only=False)["OnlineDataModule"]["study"]
    assert not any(len(b["rows"]) or b["batches"] for b in study["buffers"])
    assert study["rerun"] > 0  # runs whose samples training had not seen run again
    dm2, second = _dm(checkpoint_buffer=False), Recorder()
    quiet_trainer().fit(second, dm2, ckpt_path=tmp_path / "mid.ckpt")
    completed = {tuple(t) for _, t in dm2.state_dict()["study"]["completed"]}
    assert len(completed) == N_RUNS
    expected = {s for theta in completed for s in _samples_of(theta)}
    assert expected <= set(first.seen + second.seen)  # nothing completed was lost


# -- the ledger, driven directly -------------------------------------------------------------


def _study(buffer, group: Group | None = None) -> Study:
    return Study(
        space=ParameterSpace([0, 0], [1, 1]),
        sampler=Halton(seed=0),
        buffer=buffer,
        n_simulations=64,
        n_workers=2,
        batch_size=2,
        max_retries=1,
        max_failed_fraction=1.0,
        group=group or Group(),
    )


def _run(study: Study, steps: int) -> int:
    sim_id, theta = study.next_task()
    for k in range(steps):
        study.on_sample(
            encode_sample(sim_id, k, (theta.astype(np.float32), np.ones(1, np.float32)))
        )
    study.on_end(sim_id, True, steps, 0.1, "")
    return sim_id


def _held(study: Study) -> list[tuple[int, int, int]]:
    """(sim id, step, served count) of every sample the buffer holds, sorted."""
    items = [
        (
            *(int(v[0]) for v in study.store.ids(np.asarray([it]))),
            int(c),
        )
        for it, c in zip(*study.buffer.contents(), strict=True)
    ]
    return sorted(items)


@pytest.mark.parametrize(
    "buffer", [FIFO(16, watermark=2), FIRO(16, watermark=2), Reservoir(16, watermark=2)]
)
def test_the_buffer_and_prefetched_batches_survive_a_restore(buffer):
    study = _study(buffer)
    study.sync()
    for _ in range(3):
        _run(study, 3)
    study.take()  # trained on
    prefetched = study.take()  # taken, not trained on
    before = _held(study)
    state = study.export(consumed=1)
    assert state["counters"]["completed"] == 3 and not state["unfinished"]

    again = _study(type(buffer)(16, watermark=2))
    again.restore(state)
    held = _held(again)
    if isinstance(buffer, Reservoir):  # served counts kept, less the untrained batch
        ids = {(int(i), int(s)) for i, s in zip(*study.batch_info[-1], strict=True)}
        before = sorted((i, s, c - ((i, s) in ids)) for i, s, c in before)
    assert held == before
    replayed = again.take()  # the prefetched batch is served first
    assert all(torch.equal(a, b) for a, b in zip(replayed, prefetched, strict=True))
    assert [a.tolist() for a in again.batch_info[-1]] == [a.tolist() for a in study.batch_info[-1]]


def test_saved_buffers_are_spread_over_a_different_number_of_ranks():
    """Two ranks' buffers restored on one rank: nothing dropped, beyond capacity served first."""
    parts = []
    for _ in range(2):
        s = _study(FIFO(8, watermark=2))
        s.sync()
        for _ in range(2):
            _run(s, 4)
        parts.append(s.export(consumed=0))
    state = parts[0]
    state["buffers"] = [parts[0]["buffers"][0], parts[1]["buffers"][0]]
    one = _study(FIFO(8, watermark=2))
    one.restore(state)
    n = len(one.buffer)
    extra = sum(len(b[1][0]) for b in one._replay)
    assert n == 8 and n + extra == 16
