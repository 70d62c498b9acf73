"""``seed_everything`` reproduces a study: samplers and buffers left at ``seed=None`` derive their
seed from Lightning's global seed (and, for buffers, the rank); a rebuilt buffer keeps its seed."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
from _models import Regressor, quiet_trainer
from _solvers import Smooth

from lightning_online import (
    FIFO,
    FIRO,
    Breed,
    Halton,
    LatinHypercube,
    LossProportional,
    OnlineDataModule,
    ParameterSpace,
    Reservoir,
    Uniform,
)

SPACE = ParameterSpace([0.0, 0.0], [1.0, 1.0])


@pytest.fixture(autouse=True)
def _no_global_seed(monkeypatch):
    # recorded as absent, so that what seed_everything sets is undone after each test
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")
    monkeypatch.delenv("PL_GLOBAL_SEED")


def _study(seed: int | None) -> np.ndarray:
    if seed is not None:
        pl.seed_everything(seed)
    dm = OnlineDataModule(Smooth(n_steps=4), SPACE, n_simulations=6, batch_size=4, n_workers=2)
    trainer = quiet_trainer()
    trainer.fit(Regressor(3, 1), dm)
    assert dm.stats["completed"] == 6
    return dm.launched_parameters


@pytest.mark.timeout(180)
@pytest.mark.usefixtures("no_orphans")
def test_seed_everything_launches_the_same_parameters():
    a, b = _study(0), _study(0)
    assert a.shape == (6, 2) and np.array_equal(a, b)
    assert not np.array_equal(a, _study(1))


@pytest.mark.parametrize("cls", [Uniform, LatinHypercube, Halton, Breed, LossProportional])
def test_samplers_at_seed_none_follow_the_global_seed(cls, monkeypatch):
    def draws() -> np.ndarray:
        return cls().draw(SPACE, 5)

    assert not np.array_equal(draws(), draws())  # no global seed: OS entropy
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    first = draws()
    assert np.array_equal(first, draws())
    assert cls().seed is None  # the argument stays as given; the state holds the seed used
    monkeypatch.setenv("PL_GLOBAL_SEED", "8")
    assert not np.array_equal(first, draws())
    assert not np.array_equal(cls(seed=7).draw(SPACE, 5), first)  # an explicit seed is kept


@pytest.mark.parametrize("cls", [FIFO, FIRO, Reservoir])
def test_a_rebuilt_buffer_keeps_its_seed(cls):
    used = cls(8, seed=5)
    used.put_many(list(range(8)))
    used.get(4)
    fresh = used.fresh(rank=3)
    assert type(fresh) is cls and fresh.seed == 5 and len(fresh) == 0
    assert (fresh.capacity, fresh.watermark) == (used.capacity, used.watermark)
    same = cls(8, seed=5)
    assert (
        fresh._rng.integers(1 << 30, size=4).tolist()
        == same._rng.integers(1 << 30, size=4).tolist()
    )


def test_buffers_at_seed_none_follow_the_global_seed_and_the_rank(monkeypatch):
    def stream(rank: int) -> list[int]:
        return Reservoir(8).fresh(rank)._rng.integers(1 << 30, size=4).tolist()

    assert stream(0) != stream(0)  # no global seed: OS entropy
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")
    assert stream(0) == stream(0) and stream(1) == stream(1)
    assert stream(0) != stream(1)  # every rank its own stream
