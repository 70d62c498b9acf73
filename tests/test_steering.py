"""Tests for lightning_online.sampling.steering: loss-driven samplers (Breed, RAD) and SimulationStats."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from lightning_online.sampling import Halton, LatinHypercube, ParameterSpace, Sampler, Uniform
from lightning_online.sampling.steering import Breed, LossProportional, SimulationStats

UNIT2 = ParameterSpace([0.0, 0.0], [1.0, 1.0])


@pytest.fixture
def space() -> ParameterSpace:
    return ParameterSpace(
        [0.0, 1e-3, -2.0], [1.0, 1.0, 5.0], names=["a", "nu", "c"], log=[False, True, False]
    )


def make_stats(
    parameters: np.ndarray,
    loss: np.ndarray | None = None,
    loss_decrease: np.ndarray | None = None,
    n_observed: np.ndarray | None = None,
) -> SimulationStats:
    parameters = np.asarray(parameters, dtype=float)
    m = parameters.shape[0]
    return SimulationStats(
        parameters=parameters,
        loss=np.ones(m) if loss is None else loss,
        loss_decrease=np.ones(m) if loss_decrease is None else loss_decrease,
        n_observed=np.full(m, 5) if n_observed is None else n_observed,
    )


def random_stats(space: ParameterSpace, m: int, seed: int) -> SimulationStats:
    rng = np.random.default_rng(seed)
    return make_stats(
        space.from_unit(rng.random((m, space.dim))),
        loss=rng.random(m) * 3,
        loss_decrease=rng.normal(size=m),
        n_observed=rng.integers(0, 6, size=m),
    )


def _is_plain(obj: object) -> bool:
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return all(_is_plain(v) for v in obj)
    return obj is None or type(obj) in (bool, int, float, str)


# ----------------------------------------------------------------------------- SimulationStats


def test_stats_conversion_and_empty() -> None:
    s = make_stats([[0.1, 0.2], [0.3, 0.4]], loss=[1, 2], n_observed=[1.0, 3.0])
    assert s.m == 2 and s.parameters.dtype == np.float64 and s.n_observed.dtype == np.int64
    assert s.n_observed.tolist() == [1, 3]
    with pytest.raises(ValueError):
        s.loss[0] = 5.0  # read-only
    with pytest.raises(AttributeError):
        s.loss = np.zeros(2)  # type: ignore[misc]  # frozen
    assert SimulationStats(np.empty((0, 3)), [], [], []).m == 0
    assert SimulationStats([], [], [], []).parameters.shape == (0, 0)
    # Non-finite statistics are allowed (samplers skip them).
    make_stats([[0.0]], loss=[np.nan], loss_decrease=[np.inf])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"parameters": np.zeros(3)}, r"parameters must be 2-D"),
        ({"parameters": np.zeros((2, 2, 2))}, r"parameters must be 2-D"),
        ({"loss": np.zeros(2)}, r"loss must have shape \(3,\)"),
        ({"loss_decrease": np.zeros((3, 1))}, r"loss_decrease must have shape \(3,\)"),
        ({"n_observed": np.zeros(4, dtype=int)}, r"n_observed must have shape \(3,\)"),
        ({"n_observed": [1, 2, -1]}, r"n_observed must be >= 0"),
        ({"n_observed": [1.5, 2, 1]}, r"n_observed must be integral"),
        ({"n_observed": ["a", "b", "c"]}, r"n_observed must be integers"),
        ({"loss": ["x", "y", "z"]}, r"loss is not convertible"),
    ],
)
def test_stats_refusals(kwargs: dict, match: str) -> None:
    base = {
        "parameters": np.zeros((3, 2)),
        "loss": np.zeros(3),
        "loss_decrease": np.zeros(3),
        "n_observed": np.ones(3, dtype=int),
    }
    with pytest.raises(ValueError, match=match):
        SimulationStats(**{**base, **kwargs})


# ----------------------------------------------------------------------------- Breed


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sigma": 0.0}, r"Breed: sigma must be a finite number > 0, got 0.0"),
        ({"sigma": [0.1, -1]}, r"sigma\[1\] must be a finite number > 0, got -1"),
        ({"sigma": []}, r"sigma must not be an empty"),
        ({"sigma": "big"}, r"sigma must be a finite number > 0, got 'big'"),
        ({"start": 0.8, "end": 0.5}, r"0 <= start <= end <= 1"),
        ({"end": 1.5}, r"0 <= start <= end <= 1"),
        ({"start": -0.1}, r"start must be a finite number >= 0, got -0.1"),
        ({"breakpoint": 0}, r"breakpoint must be a positive integer, got 0"),
        ({"breakpoint": 2.5}, r"breakpoint must be a positive integer, got 2.5"),
        ({"statistic": "grad"}, r"statistic must be 'loss_decrease' or 'loss'"),
        ({"min_observed": 0}, r"min_observed must be a positive integer, got 0"),
        ({"max_retries": -1}, r"max_retries must be a non-negative integer, got -1"),
        ({"non_breed": "uniform"}, r"non_breed must be a Sampler"),
        ({"seed": -3}, r"seed must be a non-negative int"),
    ],
)
def test_breed_refusals(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Breed(**kwargs)


@pytest.mark.parametrize("cls", [Breed, LossProportional])
def test_before_update_equals_non_breed(cls: type[Sampler], space: ParameterSpace) -> None:
    sampler = cls(seed=3)
    assert isinstance(sampler.non_breed, Uniform)  # type: ignore[attr-defined]
    assert sampler.non_breed.seed != 3  # type: ignore[attr-defined]  # a distinct derived seed
    ref = Uniform(seed=sampler.non_breed.seed)  # type: ignore[attr-defined]
    for n in (5, 0, 11):
        np.testing.assert_array_equal(sampler.draw(space, n), ref.draw(space, n))
        assert sampler.last_bred_fraction == 0.0  # type: ignore[attr-defined]
        assert sampler.last_bred_mask.shape == (n,) and not sampler.last_bred_mask.any()  # type: ignore[attr-defined]
    for nb_cls in (Halton, LatinHypercube):
        steered = cls(seed=1, non_breed=nb_cls(seed=7))
        ref2 = nb_cls(seed=7)
        for n in (4, 9):
            np.testing.assert_array_equal(steered.draw(space, n), ref2.draw(space, n))
    # Ignored updates keep it that way.
    for junk in (None, 1.0, {"loss": [1.0]}, make_stats(np.empty((0, 3)))):
        sampler.update(junk)
    np.testing.assert_array_equal(sampler.draw(space, 6), ref.draw(space, 6))
    assert sampler.generation == 0  # type: ignore[attr-defined]


def test_draw_argument_checks(space: ParameterSpace) -> None:
    for sampler in (Breed(seed=0), LossProportional(seed=0)):
        with pytest.raises(ValueError, match="n must be >= 0"):
            sampler.draw(space, -1)
        with pytest.raises(TypeError, match="n must be an int"):
            sampler.draw(space, 2.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="space must be a ParameterSpace"):
            sampler.draw([0, 1], 2)  # type: ignore[arg-type]
        sampler.update(random_stats(space, 10, 0))
        with pytest.raises(ValueError, match="3-dimensional parameters, but the space is 2"):
            sampler.draw(UNIT2, 4)
    with pytest.raises(ValueError, match="sigma has 2 entries but the space has 3"):
        b = Breed(sigma=[0.1, 0.1], start=1.0, end=1.0, seed=0)
        b.update(random_stats(space, 10, 0))
        b.draw(space, 4)


def test_breed_schedule() -> None:
    start, end, bp, n = 0.2, 0.8, 4, 100
    breed = Breed(start=start, end=end, breakpoint=bp, seed=0)
    stats = random_stats(UNIT2, 20, 1)
    for g in range(1, 9):
        breed.update(stats)
        assert breed.generation == g
        expected = start + (end - start) * min(g - 1, bp) / bp
        assert breed.scheduled_fraction == pytest.approx(expected)
        theta = breed.draw(UNIT2, n)
        assert theta.shape == (n, 2)
        n_bred = int(np.floor(expected * n + 0.5))
        assert breed.last_bred_fraction == pytest.approx(n_bred / n)
        assert breed.last_bred_mask.sum() == n_bred
    # Concretely: generation 1 -> start, breakpoint + 1 and beyond -> end, halfway in between.
    fractions = {}
    b2 = Breed(start=start, end=end, breakpoint=bp, seed=0)
    for g in range(1, 9):
        b2.update(stats)
        b2.draw(UNIT2, n)
        fractions[g] = b2.last_bred_fraction
    assert fractions[1] == pytest.approx(0.2)
    assert fractions[3] == pytest.approx(0.5)
    assert fractions[bp + 1] == fractions[bp + 3] == pytest.approx(0.8)
    # Rounding is deterministic (half up) and an empty draw reports the scheduled fraction.
    b3 = Breed(start=0.25, end=0.25, seed=0)
    b3.update(stats)
    b3.draw(UNIT2, 2)
    assert b3.last_bred_mask.sum() == 1  # 0.5 rounds up
    assert b3.draw(UNIT2, 0).shape == (0, 2) and b3.last_bred_fraction == 0.25


def test_breed_rows_are_shuffled_and_mask_matches() -> None:
    # Parent at a point no uniform draw hits exactly, sigma tiny, one retry then parent reuse.
    parent = np.array([[0.123456789, 0.987654321]])
    breed = Breed(sigma=1e-9, start=0.5, end=0.5, seed=4)
    breed.update(make_stats(parent))
    theta = breed.draw(UNIT2, 200)
    near = np.all(np.abs(theta - parent) < 1e-6, axis=1)
    np.testing.assert_array_equal(near, breed.last_bred_mask)
    assert near.sum() == 100
    assert not near[:100].all()  # bred rows are not simply first


def test_children_concentrate_near_high_loss_parent() -> None:
    rng = np.random.default_rng(0)
    others = rng.random((9, 2))
    params = np.vstack([[0.8, 0.2], others])
    loss = np.r_[1000.0, np.ones(9)]
    sigma = 0.05
    breed = Breed(sigma=sigma, start=1.0, end=1.0, statistic="loss", seed=1)
    breed.update(make_stats(params, loss=loss))
    theta = breed.draw(UNIT2, 400)
    assert breed.last_bred_mask.all()
    near = np.all(np.abs(theta - [0.8, 0.2]) <= 3 * sigma, axis=1)
    assert near.mean() >= 0.7
    # Spread is about sigma, not zero: children are new points.
    close = theta[near]
    assert 0.5 * sigma < close[:, 0].std() < 2 * sigma


def test_statistic_choice_picks_different_parents() -> None:
    a, b = [0.2, 0.2], [0.8, 0.8]
    stats = make_stats(
        np.array([a, b]),
        loss=np.array([10.0, 0.1]),  # a: high loss ...
        loss_decrease=np.array([-1.0, 2.0]),  # ... but getting worse; b is being learnt
    )
    share_a = {}
    for statistic in ("loss", "loss_decrease"):
        breed = Breed(sigma=0.02, start=1.0, end=1.0, statistic=statistic, seed=2)
        breed.update(stats)
        theta = breed.draw(UNIT2, 300)
        share_a[statistic] = np.mean(np.linalg.norm(theta - a, axis=1) < 0.15)
    assert share_a["loss"] > 0.9
    assert share_a["loss_decrease"] < 0.05


def test_all_zero_statistic_gives_uniform_parents() -> None:
    params = np.array([[0.1, 0.1], [0.9, 0.9]])
    breed = Breed(sigma=0.01, start=1.0, end=1.0, statistic="loss", seed=3)
    breed.update(make_stats(params, loss=np.zeros(2)))
    theta = breed.draw(UNIT2, 1000)
    share = np.mean(theta[:, 0] < 0.5)
    assert 0.4 < share < 0.6


def test_min_observed_and_non_finite_runs_do_not_qualify() -> None:
    params = np.array([[0.1, 0.1], [0.5, 0.5], [0.9, 0.9], [np.nan, 0.5]])
    stats = make_stats(
        params,
        loss=np.array([100.0, np.nan, 1.0, 100.0]),
        n_observed=np.array([1, 5, 5, 5]),
    )
    breed = Breed(sigma=0.01, start=1.0, end=1.0, statistic="loss", min_observed=2, seed=5)
    breed.update(stats)
    assert breed.generation == 1
    theta = breed.draw(UNIT2, 50)
    # Only the run at 0.9 qualifies: 0.1 is under-observed, 0.5 has NaN loss, the last NaN theta.
    assert np.all(np.abs(theta - 0.9) < 0.1)


def test_update_without_qualifying_parents_changes_nothing(space: ParameterSpace) -> None:
    a, b = Breed(seed=8, start=0.5, end=0.5), Breed(seed=8, start=0.5, end=0.5)
    stats = random_stats(space, 12, 3)
    for s in (a, b):
        s.update(stats)
        s.draw(space, 5)
    before = copy.deepcopy(a.state_dict())
    unqualified = [
        make_stats(space.from_unit(np.full((3, 3), 0.5)), n_observed=np.zeros(3, dtype=int)),
        make_stats(space.from_unit(np.full((2, 3), 0.5)), loss=np.full(2, np.nan)),
        make_stats(np.empty((0, 3))),
        None,
        "stats",
        {"loss": np.ones(2)},
    ]
    for junk in unqualified:
        assert a.update(junk) is None
    assert a.state_dict() == before and a.generation == 1
    np.testing.assert_array_equal(a.draw(space, 9), b.draw(space, 9))


def test_draws_stay_in_box_with_log_dims_and_edge_parents(space: ParameterSpace) -> None:
    corners = space.from_unit(np.array([[0, 0, 0], [1, 1, 1], [0, 1, 0], [1, 0, 0.5]], float))
    stats = make_stats(corners, loss_decrease=np.array([1.0, 2.0, 3.0, 4.0]))
    for sigma in (0.05, 0.5, 3.0, [3.0, 0.01, 1.0]):
        breed = Breed(sigma=sigma, start=1.0, end=1.0, seed=6)
        breed.update(stats)
        theta = breed.draw(space, 500)
        assert space.contains(theta).all()
    # With large sigma, shrinking and retrying gives new children (a corner child lands inside
    # with chance 2^-3 per try once sigma has shrunk), falling back to the parent ever rarer.
    shares = []
    for retries in (10, 40):
        breed = Breed(sigma=3.0, start=1.0, end=1.0, max_retries=retries, seed=7)
        breed.update(stats)
        theta = breed.draw(space, 500)
        is_parent = (theta[:, None, :] == corners[None, :, :]).all(axis=2).any(axis=1)
        assert space.contains(theta).all()
        shares.append(is_parent.mean())
    assert shares[0] < 0.35 and shares[1] < 0.05
    # ... while with no retries a corner parent mostly falls back to itself (2^-3 inside).
    breed = Breed(sigma=3.0, start=1.0, end=1.0, max_retries=0, seed=7)
    breed.update(stats)
    theta = breed.draw(space, 500)
    is_parent = (theta[:, None, :] == corners[None, :, :]).all(axis=2).any(axis=1)
    assert space.contains(theta).all()
    assert is_parent.mean() > 0.7
    # Parents reported slightly outside the box (rounding) are clipped, children stay inside.
    outside = make_stats(np.array([[1.0 + 1e-9, 1.0 + 1e-12, 5.0 + 1e-9]]))
    breed = Breed(sigma=0.1, start=1.0, end=1.0, seed=0)
    breed.update(outside)
    assert space.contains(breed.draw(space, 100)).all()


def test_log_dimension_children_spread_per_decade() -> None:
    space = ParameterSpace([1e-4], [1.0], log=True)
    breed = Breed(sigma=0.05, start=1.0, end=1.0, statistic="loss", seed=9)
    breed.update(make_stats(np.array([[1e-2]])))  # the geometric middle
    u = space.to_unit(breed.draw(space, 2000))[:, 0]
    assert abs(u.mean() - 0.5) < 0.01
    assert 0.045 < u.std() < 0.055  # 0.05 of the 4 decades, symmetric in log


@pytest.mark.parametrize("seed", [11, None])
def test_breed_state_dict_round_trip(seed: int | None, space: ParameterSpace) -> None:
    breed = Breed(sigma=[0.1, 0.2, 0.05], breakpoint=3, non_breed=Halton(seed=2), seed=seed)
    breed.draw(space, 4)
    breed.update(random_stats(space, 15, 0))
    breed.draw(space, 7)
    breed.update(random_stats(space, 15, 1))
    state = breed.state_dict()
    assert _is_plain(state)
    pickled = pickle.loads(pickle.dumps(state))
    clone = pickle.loads(pickle.dumps(breed))
    deep = copy.deepcopy(breed)
    later_stats = random_stats(space, 15, 2)
    expected = [breed.draw(space, 6)]
    breed.update(later_stats)
    expected.append(breed.draw(space, 9))
    expected_mask = breed.last_bred_mask.copy()
    for st in (state, pickled):
        fresh = Breed(non_breed=Halton(seed=99), seed=12345)  # other config: restored from state
        fresh.load_state_dict(st)
        assert fresh.seed == seed and fresh.sigma == (0.1, 0.2, 0.05) and fresh.breakpoint == 3
        assert fresh.generation == 2
        for other in (fresh, copy.deepcopy(clone), copy.deepcopy(deep)):
            got = [other.draw(space, 6)]
            other.update(later_stats)
            got.append(other.draw(space, 9))
            for g, e in zip(got, expected, strict=True):
                np.testing.assert_array_equal(g, e)
            np.testing.assert_array_equal(other.last_bred_mask, expected_mask)
    assert state == pickled  # a snapshot, not mutated by later draws
    with pytest.raises(ValueError, match="state is for 'Breed'"):
        LossProportional().load_state_dict(state)
    with pytest.raises(ValueError, match="state is for 'Halton'"):
        Breed(seed=0).load_state_dict(state)  # the default Uniform non_breed refuses Halton state


def test_breed_determinism_per_seed(space: ParameterSpace) -> None:
    def run(seed: int | None) -> np.ndarray:
        breed = Breed(seed=seed, start=0.5, end=0.9, breakpoint=2)
        out = [breed.draw(space, 5)]
        for i in range(3):
            breed.update(random_stats(space, 10, i))
            out.append(breed.draw(space, 8))
        return np.vstack(out)

    np.testing.assert_array_equal(run(21), run(21))
    assert not np.array_equal(run(21), run(22))
    assert not np.array_equal(run(None), run(None))


def test_breed_repr() -> None:
    assert repr(Breed(seed=1)).startswith("Breed(sigma=0.05, start=0.15, end=0.75, breakpoint=10")


# ----------------------------------------------------------------------------- LossProportional


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": -1.0}, r"LossProportional: k must be a finite number >= 0, got -1.0"),
        ({"c": np.inf}, r"LossProportional: c must be a finite number >= 0, got inf"),
        ({"n_candidates": 0}, r"n_candidates must be a positive integer, got 0"),
        ({"non_breed": 3}, r"non_breed must be a Sampler"),
    ],
)
def test_loss_proportional_refusals(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LossProportional(**kwargs)


def _banded_stats() -> SimulationStats:
    # Observed runs on a grid: high loss where x < 0.2, low elsewhere.
    g = (np.arange(10) + 0.5) / 10
    params = np.array([[x, y] for x in g for y in g])
    loss = np.where(params[:, 0] < 0.2, 20.0, 0.1)
    return make_stats(params, loss=loss)


def test_loss_proportional_favours_high_loss() -> None:
    rad = LossProportional(seed=0)
    rad.update(_banded_stats())
    assert rad.generation == 1
    theta = rad.draw(UNIT2, 400)
    assert rad.last_bred_fraction == 1.0 and rad.last_bred_mask.all()
    assert UNIT2.contains(theta).all()
    share = np.mean(theta[:, 0] < 0.2)
    # mean(loss) ~ 4.08: density ~5.9 in the band vs ~1.02 elsewhere -> ~0.59 of the mass.
    assert share > 0.45
    # Without replacement: no candidate drawn twice.
    assert len(np.unique(theta, axis=0)) == 400
    # c keeps a floor everywhere; larger k focuses harder.
    sharp = LossProportional(k=2.0, c=0.0, seed=0)
    sharp.update(_banded_stats())
    assert np.mean(sharp.draw(UNIT2, 400)[:, 0] < 0.2) > 0.95


def test_loss_proportional_edge_cases(space: ParameterSpace) -> None:
    rad = LossProportional(n_candidates=5, c=0.0, seed=1)
    rad.update(make_stats(space.from_unit(np.full((1, 3), 0.5)), loss=np.zeros(1)))
    theta = rad.draw(space, 20)  # more rows than candidates, all-zero weights: with replacement
    assert theta.shape == (20, 3) and space.contains(theta).all()
    assert len(np.unique(theta, axis=0)) <= 5
    assert rad.draw(space, 0).shape == (0, 3)
    # Negative losses count as zero, NaN-loss runs are skipped.
    rad2 = LossProportional(seed=2)
    rad2.update(make_stats(np.array([[0.1, 0.1], [0.9, 0.9]]), loss=np.array([-5.0, np.nan])))
    assert rad2.generation == 1
    assert UNIT2.contains(rad2.draw(UNIT2, 30)).all()


@pytest.mark.parametrize("seed", [5, None])
def test_loss_proportional_state_round_trip(seed: int | None) -> None:
    rad = LossProportional(k=1.5, c=0.5, seed=seed, non_breed=LatinHypercube(seed=3))
    rad.draw(UNIT2, 4)
    rad.update(_banded_stats())
    rad.draw(UNIT2, 10)
    state = rad.state_dict()
    assert _is_plain(state)
    pickled = pickle.loads(pickle.dumps(state))
    clone = pickle.loads(pickle.dumps(rad))
    expected = [rad.draw(UNIT2, 7), rad.draw(UNIT2, 3)]
    for st in (state, pickled):
        fresh = LossProportional(non_breed=LatinHypercube(seed=0), seed=77)
        fresh.load_state_dict(st)
        assert (fresh.k, fresh.c, fresh.seed, fresh.generation) == (1.5, 0.5, seed, 1)
        for other in (fresh, copy.deepcopy(clone)):
            got = [other.draw(UNIT2, 7), other.draw(UNIT2, 3)]
            for g, e in zip(got, expected, strict=True):
                np.testing.assert_array_equal(g, e)
    # Before any update the state round trip also continues the non_breed sequence.
    early = LossProportional(seed=seed)
    early.draw(UNIT2, 3)
    st = pickle.loads(pickle.dumps(early.state_dict()))
    fresh = LossProportional()
    fresh.load_state_dict(st)
    np.testing.assert_array_equal(fresh.draw(UNIT2, 5), early.draw(UNIT2, 5))


def test_loss_proportional_determinism() -> None:
    def run(seed: int) -> np.ndarray:
        rad = LossProportional(seed=seed)
        first = rad.draw(UNIT2, 4)
        rad.update(_banded_stats())
        return np.vstack([first, rad.draw(UNIT2, 12)])

    np.testing.assert_array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))


def _howto_code(section: str) -> str:
    """The Python blocks of one section of docs/howto.md, as a user would copy them."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "howto.md").read_text()
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return "\n".join(re.findall(r"```python\n(.*?)```", body, flags=re.S))


@pytest.mark.timeout(240)
def test_the_howto_samplers_run_in_a_study(no_orphans):
    from _solvers import steer_hard_corner

    from lightning_online import SteeredSampler

    scope: dict = {}
    exec(_howto_code("Write your own sampler"), scope)
    space = ParameterSpace([0, 0], [1, 1])
    corners = scope["Corners"](seed=0).draw(space, 6)
    assert {tuple(c) for c in corners[:4]} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    sampler = scope["AroundWorst"](sigma=0.05, seed=0)
    assert isinstance(sampler, SteeredSampler)
    dm, active = steer_hard_corner(sampler, 40, update_every=4, window=8)
    assert active.updates >= 2 and sampler.generation == active.updates
    # after the first updates, the runs launched cluster around one point (steered draws
    # queued before an update were dropped, the rest follow the new worst run)
    late = dm.launched_parameters[-10:]
    assert late.std(axis=0).max() < 0.2


def test_a_sampler_that_breaks_the_contract_is_named():
    from lightning_online import SteeredSampler

    class Broken(SteeredSampler):
        def _draw_unit(self, d, n):
            return np.zeros((n, d))

    s = Broken(seed=0)
    s.draw(ParameterSpace([0], [1]), 3)
    with pytest.raises(ValueError, match=r"Broken\.draw returned 3 rows but set last_bred_mask"):
        s.steered_rows(3)
