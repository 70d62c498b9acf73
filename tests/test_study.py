"""The per-step agreement between training ranks, as pure functions driven with arrays, and the
one definition of the study's counters."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_online._study.agreement import (
    AGREEMENT,
    COUNTERS,
    MAX_EVERY,
    SAVED,
    STATS_KEYS,
    SYNC_SHARE,
    Counters,
    batches_per_agreement,
    grant_permits,
    is_starved,
    serve_or_finish,
)
from lightning_online.data import OnlineDataModule


def test_counters_are_the_stats_keys_the_vector_and_the_checkpoint():
    assert COUNTERS == tuple(Counters().__dict__)
    assert STATS_KEYS[: len(COUNTERS)] == COUNTERS
    assert set(STATS_KEYS) - set(COUNTERS) == {"mean_reuse", "buffer_fill"}
    assert "running" not in SAVED and set(SAVED) | {"running"} == set(COUNTERS)
    assert not set(AGREEMENT) & set(COUNTERS)
    c = Counters(launched=3, samples_served=7)
    assert c.vector() == [3, 0, 0, 0, 0, 0, 7, 0, 0, 0]  # ..., samples_from_failed, stopped


@pytest.mark.parametrize(
    ("remaining", "held", "room", "expected"),
    [
        # a small budget is spread over every rank, fewest held first
        (2, [0, 0], [4, 4], [1, 1]),
        (3, [5, 0], [4, 4], [0, 3]),
        # no room, no grant; the budget is never exceeded
        (5, [0, 0], [0, 2], [0, 2]),
        (0, [0, 0], [4, 4], [0, 0]),
        # ties go to the lowest rank, one permit at a time
        (3, [1, 1, 1], [1, 1, 1], [1, 1, 1]),
        (1, [2, 1, 1], [3, 3, 3], [0, 1, 0]),
    ],
)
def test_grant_permits(remaining, held, room, expected):
    grants = grant_permits(remaining, np.array(held), np.array(room))
    assert grants.tolist() == expected
    assert grants.sum() <= remaining and (grants <= np.array(room)).all()


@pytest.mark.parametrize(
    ("batches", "exhausted", "has_last", "complete", "every", "expected"),
    [
        ([1, 1], [0, 0], [0, 0], False, 1, (1, False)),  # everyone ready: serve
        ([1, 0], [0, 0], [1, 1], False, 1, (0, False)),  # one waits: nobody serves
        ([1, 0], [0, 1], [1, 1], False, 1, (1, False)),  # a drained rank repeats its last batch
        ([0, 0], [1, 1], [1, 1], True, 1, (0, True)),  # complete and drained: stop together
        # drained with nothing ever served (it received nothing): it borrows, the others go on
        ([1, 0], [0, 1], [1, 0], False, 1, (1, False)),
        ([0, 0], [1, 1], [0, 0], False, 1, (0, True)),  # nobody has anything: stop
        ([0, 0], [1, 1], [1, 1], False, 1, (1, False)),  # drained early, study goes on: repeat
        # agreeing once per k batches: as many as the poorest rank can promise, at most k
        ([5, 3], [0, 0], [0, 0], False, 4, (3, False)),
        ([16, 16], [0, 0], [0, 0], False, 4, (4, False)),
        ([6, 0], [0, 1], [1, 1], False, 4, (4, False)),
        ([2, 0, 7], [0, 0, 0], [1, 1, 1], False, 8, (0, False)),
    ],
)
def test_serve_or_finish(batches, exhausted, has_last, complete, every, expected):
    got = serve_or_finish(
        np.array(batches), np.array(exhausted), np.array(has_last), complete, every
    )
    assert got == expected


@pytest.mark.parametrize(
    ("sync_us", "batch_ms", "k"),
    [(50, 10, 1), (200, 10, 1), (400, 10, 2), (1600, 10, 8), (4200, 10, 16), (100, 0, 1)],
)
def test_batches_per_agreement_keeps_the_agreement_under_two_percent(sync_us, batch_ms, k):
    got = batches_per_agreement(sync_us * 1e-6, batch_ms * 1e-3)
    assert got == k
    if batch_ms and got < MAX_EVERY:
        assert sync_us * 1e-6 / (got * batch_ms * 1e-3) <= SYNC_SHARE + 1e-12


def test_is_starved():
    assert is_starved(False, 0, False, 0, 0, 0)
    assert not is_starved(True, 0, False, 0, 0, 0)  # complete: the buffer closes anyway
    assert not is_starved(False, 1, False, 0, 0, 0)  # permits still to hand out
    assert not is_starved(False, 0, True, 0, 0, 0)  # it can serve
    assert not is_starved(False, 0, False, 1, 0, 0)  # a run still streams to it
    assert not is_starved(False, 0, False, 0, 0, 1)  # it was just granted one


def test_stats_keys_before_setup():
    from lightning_online import ParameterSpace

    dm = OnlineDataModule(lambda t: iter([(t,)]), ParameterSpace([0], [1]), n_simulations=1)
    assert tuple(dm.stats) == STATS_KEYS
