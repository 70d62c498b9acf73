"""Tests for lightning_online.sampling: parameter spaces and space-filling samplers."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from scipy.stats import qmc

from lightning_online.sampling import Halton, LatinHypercube, ParameterSpace, Sampler, Uniform

SAMPLERS = [Uniform, Halton, LatinHypercube]


@pytest.fixture
def space() -> ParameterSpace:
    return ParameterSpace(
        [0.0, 1e-3, -2.0], [1.0, 1.0, 5.0], names=["a", "nu", "c"], log=[False, True, False]
    )


# ----------------------------------------------------------------------------- ParameterSpace


def test_space_attributes(space: ParameterSpace) -> None:
    assert space.dim == len(space) == 3
    assert space.names == ("a", "nu", "c")
    assert space.low.dtype == space.high.dtype == np.float64
    assert space.log.tolist() == [False, True, False]
    assert ParameterSpace([0], [1]).names == ("theta0",)
    assert ParameterSpace([1, 1], [2, 2], log=True).log.tolist() == [True, True]
    with pytest.raises(ValueError):
        space.low[0] = 5.0  # read-only
    low = np.array([0.0, 1.0])
    s = ParameterSpace(low, [1.0, 2.0])
    low[0] = -10.0  # the space keeps its own copy
    assert s.low[0] == 0.0
    assert "nu=[0.001, 1] log" in repr(space)


def test_space_unit_round_trip(space: ParameterSpace) -> None:
    u = np.random.default_rng(0).random((50, 3))
    theta = space.from_unit(u)
    assert space.contains(theta).all()
    np.testing.assert_allclose(space.to_unit(theta), u, atol=1e-12)
    np.testing.assert_allclose(space.from_unit([[0, 0.5, 1]]), [[0.0, np.sqrt(1e-3), 5.0]])
    # Out-of-range unit points and rounding are clipped into the box.
    assert space.contains(space.from_unit([[-0.1, 1.0 + 1e-15, 2.0]])).all()
    assert space.contains([[0.5, 0.5, 0.0], [2.0, 0.5, 0.0]]).tolist() == [True, False]
    assert space.contains([0.5, 0.5, 0.0]).shape == (1,)
    with pytest.raises(ValueError, match="last axis 3"):
        space.to_unit(np.zeros((4, 2)))


def test_space_eq_hash_pickle(space: ParameterSpace) -> None:
    same = ParameterSpace(
        [0.0, 1e-3, -2.0], [1.0, 1.0, 5.0], names=("a", "nu", "c"), log=[False, True, False]
    )
    assert space == same and hash(space) == hash(same)
    assert space != ParameterSpace([0.0, 1e-3, -2.0], [1.0, 1.0, 5.0], names=("a", "nu", "c"))
    for clone in (pickle.loads(pickle.dumps(space)), copy.deepcopy(space)):
        assert clone == space
        assert not clone.low.flags.writeable


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"low": [0, 0, 1.0], "high": [1, 1, 0.5], "names": ["a", "b", "nu"]},
            r"dimension 2 \('nu'\): low \(1.0\) must be < high \(0.5\)",
        ),
        ({"low": [0, 2.0], "high": [1, 2.0]}, r"dimension 1 \('theta1'\): low .* must be < high"),
        ({"low": [0, np.nan], "high": [1, 1]}, r"dimension 1 \('theta1'\): bounds must be finite"),
        ({"low": [0, 0], "high": [np.inf, 1]}, r"dimension 0 \('theta0'\): bounds must be finite"),
        (
            {"low": [-np.inf], "high": [1], "names": ["x"]},
            r"dimension 0 \('x'\): bounds must be finite",
        ),
        (
            {"low": [1, 0], "high": [2, 1], "log": [False, True]},
            r"dimension 1 \('theta1'\): log dimension needs low > 0",
        ),
        (
            {"low": [1, -1], "high": [2, 1], "log": True},
            r"dimension 1 \('theta1'\): log dimension needs low > 0",
        ),
        (
            {"low": [0, 0, 0], "high": [1, 1, 1], "names": ["a", "b", "a"]},
            r"dimension 2 \('a'\): duplicate name \(also dimension 0\)",
        ),
        (
            {"low": [1, 1], "high": [2, 2], "log": [True, "yes"]},
            r"dimension 1 \('theta1'\): log flag",
        ),
        ({"low": [0, 0], "high": [1]}, r"low has 2 entries but high has 1"),
        ({"low": [0, 0], "high": [1, 1], "names": ["a"]}, r"2 dimensions but 1 names"),
        ({"low": [0, 0], "high": [1, 1], "log": [True]}, r"2 dimensions but 1 log flags"),
        ({"low": [], "high": []}, r"at least one dimension"),
        ({"low": [[0, 0]], "high": [[1, 1]]}, r"1-D"),
    ],
)
def test_space_refusals(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ParameterSpace(**kwargs)


# ----------------------------------------------------------------------------- Samplers


@pytest.mark.parametrize("cls", SAMPLERS)
def test_bounds_and_shape(cls: type[Sampler], space: ParameterSpace) -> None:
    sampler = cls(seed=1)
    for n in (1, 7, 300):
        theta = sampler.draw(space, n)
        assert theta.shape == (n, 3) and theta.dtype == np.float64
        assert space.contains(theta).all()
    assert sampler.draw(space, 0).shape == (0, 3)
    with pytest.raises(ValueError, match="n must be >= 0"):
        sampler.draw(space, -1)
    with pytest.raises(TypeError):
        sampler.draw(space, 2.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", SAMPLERS)
def test_log_dimension_is_log_uniform(cls: type[Sampler]) -> None:
    space = ParameterSpace([1e-3], [1.0], log=True)
    theta = cls(seed=3).draw(space, 4000)[:, 0]
    # Geometric midpoint of [1e-3, 1] is 10**-1.5; a linear map would put ~97% above it.
    assert abs(np.mean(theta < 10**-1.5) - 0.5) < 0.04
    assert abs(np.mean(theta < 1e-2) - 1 / 3) < 0.04


@pytest.mark.parametrize("cls", SAMPLERS)
def test_determinism_per_seed(cls: type[Sampler], space: ParameterSpace) -> None:
    a, b, c = cls(seed=42), cls(seed=42), cls(seed=43)
    first = a.draw(space, 16)
    np.testing.assert_array_equal(first, b.draw(space, 16))
    assert not np.array_equal(first, c.draw(space, 16))
    second = a.draw(space, 16)
    np.testing.assert_array_equal(second, b.draw(space, 16))
    assert not np.array_equal(first, second)  # draws continue rather than repeat
    assert not np.array_equal(cls().draw(space, 16), cls().draw(space, 16))


@pytest.mark.parametrize("cls", SAMPLERS)
@pytest.mark.parametrize("seed", [7, None])
def test_state_dict_round_trip(cls: type[Sampler], seed: int | None, space: ParameterSpace) -> None:
    sampler = cls(seed=seed)
    sampler.draw(space, 5)
    sampler.draw(space, 3)
    state = sampler.state_dict()
    pickled = pickle.loads(pickle.dumps(state))
    expected = [sampler.draw(space, 4), sampler.draw(space, 9)]
    for st in (state, pickled):
        fresh = cls(seed=12345)
        fresh.load_state_dict(st)
        assert fresh.seed == seed
        got = [fresh.draw(space, 4), fresh.draw(space, 9)]
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_array_equal(g, e)
    # The saved state is a snapshot: drawing afterwards does not mutate it.
    assert state == pickled


def _is_plain(obj: object) -> bool:
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return all(_is_plain(v) for v in obj)
    return obj is None or type(obj) in (bool, int, float, str)


@pytest.mark.parametrize("cls", SAMPLERS)
def test_state_dict_is_plain(cls: type[Sampler], space: ParameterSpace) -> None:
    # Plain builtins only, so torch.load(weights_only=True) and any pickle accept it.
    sampler = cls(seed=None)
    sampler.draw(space, 6)
    assert _is_plain(sampler.state_dict())
    assert _is_plain(cls(seed=1).state_dict())


def test_load_state_dict_refuses_other_kind() -> None:
    with pytest.raises(ValueError, match="state is for 'Halton'"):
        Uniform(seed=0).load_state_dict(Halton(seed=0).state_dict())


@pytest.mark.parametrize("cls", SAMPLERS)
def test_pickle_and_deepcopy_continue_identically(
    cls: type[Sampler], space: ParameterSpace
) -> None:
    sampler = cls(seed=None)
    sampler.draw(space, 10)
    clones = [pickle.loads(pickle.dumps(sampler)), copy.deepcopy(sampler)]
    expected = sampler.draw(space, 8)
    for clone in clones:
        np.testing.assert_array_equal(clone.draw(space, 8), expected)


@pytest.mark.parametrize("cls", SAMPLERS)
def test_update_is_a_no_op(cls: type[Sampler], space: ParameterSpace) -> None:
    a, b = cls(seed=5), cls(seed=5)
    np.testing.assert_array_equal(a.draw(space, 4), b.draw(space, 4))
    for stats in (None, 1.0, {"loss": np.ones(3)}, [1, "x"], object()):
        assert a.update(stats) is None
    a.update()
    np.testing.assert_array_equal(a.draw(space, 6), b.draw(space, 6))


def test_bad_seed() -> None:
    for bad in (-1, 1.5, "1", True):
        with pytest.raises(ValueError, match="seed must be a non-negative int"):
            Uniform(seed=bad)  # type: ignore[arg-type]
    assert Halton(seed=np.int64(3)).seed == 3


def test_halton_low_discrepancy() -> None:
    space = ParameterSpace([0, 0, 0], [1, 1, 1])
    halton = qmc.discrepancy(Halton(seed=0).draw(space, 256))
    uniform = qmc.discrepancy(Uniform(seed=0).draw(space, 256))
    assert halton < 0.5 * uniform


def test_halton_continues_sequence_and_fixes_dimension() -> None:
    space = ParameterSpace([0, 0], [1, 1])
    split = Halton(seed=9)
    parts = np.vstack([split.draw(space, 3), split.draw(space, 0), split.draw(space, 10)])
    np.testing.assert_array_equal(parts, Halton(seed=9).draw(space, 13))
    np.testing.assert_array_equal(Halton(scramble=False).draw(space, 2), [[0.0, 0.0], [0.5, 1 / 3]])
    with pytest.raises(ValueError, match=r"2-dimensional .* 3-dimensional"):
        split.draw(ParameterSpace([0, 0, 0], [1, 1, 1]), 1)


@pytest.mark.parametrize("n", [1, 10, 64])
def test_latin_hypercube_stratification(n: int) -> None:
    space = ParameterSpace([0, 0, 0, 0], [1, 1, 1, 1])
    lhs = LatinHypercube(seed=11)
    for _ in range(3):  # every call is its own hypercube
        strata = np.floor(lhs.draw(space, n) * n).astype(int)
        for j in range(space.dim):
            assert sorted(strata[:, j]) == list(range(n))


def test_latin_hypercube_stratification_in_log_space() -> None:
    space = ParameterSpace([1e-4, -1.0], [1.0, 1.0], log=[True, False])
    n = 20
    strata = np.floor(space.to_unit(LatinHypercube(seed=2).draw(space, n)) * n).astype(int)
    strata = np.clip(strata, 0, n - 1)
    for j in range(2):
        assert sorted(strata[:, j]) == list(range(n))


def test_reprs() -> None:
    assert repr(Halton(seed=1, scramble=False)) == "Halton(seed=1, scramble=False)"
    assert repr(Uniform()) == "Uniform(seed=None)"
