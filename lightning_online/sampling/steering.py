"""Loss-driven samplers: steer new solver runs toward the parameters the surrogate learns worst.

(Over 400 lines: the steering contract, the statistics every rule reads, and the two rules that
draw from past runs in proportion to their loss; :class:`ErrorModel` has its own module.)

Three rules, each fed by :class:`SimulationStats` through ``Sampler.update``:

* :class:`Breed` -- Breed (Dymchenko, Purandare & Raffin; Melissa's ``DefaultBreeder``): a
  growing fraction of each generation of runs is *bred* as Gaussian children of past runs chosen
  in proportion to their loss statistic; the rest stays space-filling so that no region is
  forgotten.
* :class:`~lightning_online.sampling.error_model.ErrorModel` (its own module, ``error_model``):
  a Gaussian-process model of the error, sampled where it is large, spread apart.
* :class:`LossProportional` -- RAD (Wu et al. 2023, "A comprehensive study of non-adaptive and
  residual-based adaptive sampling for PINNs"): resample a dense candidate set with density
  ``loss^k / mean(loss^k) + c``.

Like the samplers of :mod:`lightning_online.sampling.samplers` they depend only on numpy and scipy, work in
the unit cube of the :class:`~lightning_online.sampling.samplers.ParameterSpace` (so log dimensions are
handled for free), are deterministic given a seed, picklable, and checkpointable through
``state_dict`` as plain Python objects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from lightning_online._util.checks import check_int, check_real
from lightning_online._util.seeds import seed_of
from lightning_online.sampling.samplers import (
    ParameterSpace,
    Sampler,
    Uniform,
    _GeneratorSampler,
)

__all__ = ["Breed", "LossProportional", "SimulationStats", "SteeredSampler"]

# Floor on the normalised parent weights (relative to the largest), so that an all-zero
# statistic gives uniform parents and no qualifying run is ever impossible to pick.
_WEIGHT_FLOOR = 1e-8
# Breed's out-of-box rule: shrink sigma by this factor before each retry (Melissa's value).
_SHRINK = 0.3


def _read_only(values: Any, dtype: type, what: str) -> np.ndarray:
    try:
        arr: np.ndarray = np.array(values, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise ValueError(f"SimulationStats: {what} is not convertible to {dtype.__name__}") from err
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class SimulationStats:
    """Per-run training statistics that the training side hands to ``sampler.update``.

    Each row describes one observed solver run over the recent (sliding) window. The arrays are
    copied and made read-only. Non-finite entries are allowed (a diverged run); samplers skip them.

    Attributes:
        parameters: ``(m, d)`` inputs ``theta`` of the observed runs (``m`` may be 0; an empty
            1-D array is read as ``(0, 0)``).
        loss: ``(m,)`` mean per-sample loss of each run over the window.
        loss_decrease: ``(m,)`` first-half mean minus second-half mean of that loss over the
            window; negative when the loss grew.
        n_observed: ``(m,)`` non-negative ints, samples of each run seen in the window.

    Raises:
        ValueError: On a wrong shape, a non-integral or negative ``n_observed``.
    """

    parameters: np.ndarray
    loss: np.ndarray
    loss_decrease: np.ndarray
    n_observed: np.ndarray

    def __post_init__(self) -> None:
        params = _read_only(self.parameters, np.float64, "parameters")
        if params.ndim == 1 and params.size == 0:
            params = _read_only(np.empty((0, 0)), np.float64, "parameters")
        if params.ndim != 2:
            raise ValueError(
                f"SimulationStats: parameters must be 2-D (m, d), got shape {params.shape}"
            )
        m = params.shape[0]
        object.__setattr__(self, "parameters", params)
        for name in ("loss", "loss_decrease"):
            arr = _read_only(getattr(self, name), np.float64, name)
            if arr.shape != (m,):
                raise ValueError(
                    f"SimulationStats: {name} must have shape ({m},) to match parameters "
                    f"{params.shape}, got {arr.shape}"
                )
            object.__setattr__(self, name, arr)
        raw = np.asarray(self.n_observed)
        if raw.shape != (m,):
            raise ValueError(
                f"SimulationStats: n_observed must have shape ({m},) to match parameters "
                f"{params.shape}, got {raw.shape}"
            )
        if raw.dtype == np.bool_ or not (
            np.issubdtype(raw.dtype, np.integer) or np.issubdtype(raw.dtype, np.floating)
        ):
            raise ValueError(f"SimulationStats: n_observed must be integers, got {raw.dtype}")
        if np.issubdtype(raw.dtype, np.floating) and not np.all(
            np.isfinite(raw) & (raw == np.round(raw))
        ):
            raise ValueError("SimulationStats: n_observed must be integral")
        if np.any(raw < 0):
            raise ValueError("SimulationStats: n_observed must be >= 0")
        object.__setattr__(self, "n_observed", _read_only(raw, np.int64, "n_observed"))

    @property
    def m(self) -> int:
        """Number of runs."""
        return int(self.parameters.shape[0])


def _saved_array(value: Any) -> np.ndarray | None:
    """A float64 array restored from a ``state_dict`` list, or None when none was saved."""
    return None if value is None else np.array(value, dtype=np.float64)


class SteeredSampler(Sampler):
    """Base class of samplers steered by the training loss: the contract that
    ``ActiveSampling`` and the study rely on (``Breed`` and ``LossProportional`` follow it; a
    custom loss-driven sampler subclasses it, see docs/howto.md).

    * ``update(stats)``: ``ActiveSampling`` calls it on every rank with identical
      :class:`SimulationStats` every ``update_every_n_steps`` optimizer steps; a sampler whose
      distribution changed increments ``generation``.
    * ``draw(space, n)`` sets ``last_bred_mask`` (bool ``(n,)``: which rows followed the
      statistics) and ``last_bred_fraction`` (their share). Drawn rows wait in a short queue
      before they are launched; at the next update the study drops the *steered* ones (they
      followed the old statistics) and keeps the others (an exploration sequence then skips no
      point). A subclass that draws everything from the statistics sets the whole mask.
    * Keep ``generation``, ``last_bred_*`` and whatever fixes future draws in ``state_dict``
      (this base class saves its three attributes), so that a resumed run and every DDP rank
      draw the same.

    Attributes:
        generation: updates that changed the distribution so far.
        last_bred_mask: bool ``(n,)`` of the last draw.
        last_bred_fraction: share of steered rows in the last draw.
    """

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(seed)
        self.generation: int = 0
        self.last_bred_fraction: float = 0.0
        self.last_bred_mask: np.ndarray = np.zeros(0, dtype=bool)

    def steered_rows(self, n: int) -> np.ndarray:
        """The ``last_bred_mask`` of a draw of ``n`` rows, checked: a sampler that breaks the
        contract is named, instead of its stale draws silently being kept."""
        mask = np.asarray(self.last_bred_mask, dtype=bool).reshape(-1)
        if len(mask) != n:
            raise ValueError(
                f"{type(self).__name__}.draw returned {n} rows but set last_bred_mask for "
                f"{len(mask)}: a SteeredSampler sets last_bred_mask (bool, one per row) in draw"
            )
        return mask

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "generation": self.generation,
            "last_bred_fraction": self.last_bred_fraction,
            "last_bred_mask": np.asarray(self.last_bred_mask, dtype=bool).tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.generation = int(state.get("generation", 0))
        self.last_bred_fraction = float(state.get("last_bred_fraction", 0.0))
        self.last_bred_mask = np.array(state.get("last_bred_mask", []), dtype=bool)


def steered_rows(sampler: Sampler, n: int) -> np.ndarray:
    """Which of the ``n`` rows the sampler just drew followed the statistics (none for a
    sampler that is not a :class:`SteeredSampler`)."""
    if isinstance(sampler, SteeredSampler):
        return sampler.steered_rows(n)
    return np.zeros(n, dtype=bool)


class _SteeredSampler(_GeneratorSampler, SteeredSampler):
    """Shared plumbing: a space-filling ``non_breed`` sampler, a generation counter, logging."""

    _SEED_TAG = 0

    def __init__(self, seed: int | None, non_breed: Sampler | None) -> None:
        super().__init__(seed)
        if non_breed is None:
            non_breed = Uniform(seed=seed_of([self._effective_seed, self._SEED_TAG]))
        elif not isinstance(non_breed, Sampler):
            raise ValueError(
                f"{type(self).__name__}: non_breed must be a Sampler, got {type(non_breed).__name__}"
            )
        self.non_breed: Sampler = non_breed

    def _check_draw(self, space: ParameterSpace, n: Any) -> int:
        # Same refusals as Sampler.draw, which these samplers override.
        name = type(self).__name__
        if not isinstance(space, ParameterSpace):
            raise TypeError(
                f"{name}.draw: space must be a ParameterSpace, got {type(space).__name__}"
            )
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise TypeError(f"{name}.draw: n must be an int, got {n!r}")
        if n < 0:
            raise ValueError(f"{name}.draw: n must be >= 0, got {n}")
        return int(n)

    def _draw_before_update(self, space: ParameterSpace, n: int) -> np.ndarray:
        theta = self.non_breed.draw(space, n)
        self.last_bred_fraction = 0.0
        self.last_bred_mask = np.zeros(n, dtype=bool)
        return theta

    @staticmethod
    def _unit_points(space: ParameterSpace, theta: np.ndarray, owner: str) -> np.ndarray:
        if theta.shape[1] != space.dim:
            raise ValueError(
                f"{owner}.draw: the last update had {theta.shape[1]}-dimensional parameters, "
                f"but the space is {space.dim}-dimensional"
            )
        return np.clip(space.to_unit(theta), 0.0, 1.0)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "non_breed": self.non_breed.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.non_breed.load_state_dict(state["non_breed"])


class Breed(_SteeredSampler):
    """Breed: grow a fraction of each generation of runs around the runs with the largest loss.

    After Dymchenko, Purandare & Raffin (Melissa's ``DefaultBreeder``). Each ``update`` with at
    least one qualifying run starts a new *generation* ``g`` (``g = 0`` before any). A draw at
    generation ``g >= 1`` breeds the fraction

        ``R(g) = start + (end - start) * min(g - 1, breakpoint) / breakpoint``

    of its ``n`` rows, i.e. ``n_bred = floor(R * n + 0.5)`` (half rounds up): the first bred
    generation uses ``start``, generation ``breakpoint + 1`` and later use ``end``. The other
    ``n - n_bred`` rows come from ``non_breed``, which draws everything at ``g = 0``, so the
    fixed fraction ``1 - R`` keeps exploring the whole box. The rows are returned shuffled.

    A bred row picks a parent among the last update's qualifying runs with probability
    proportional to its normalised statistic, then draws a Gaussian child with standard deviation
    ``sigma`` times the parameter range -- in unit coordinates, so log dimensions are bred per
    decade. A child outside the box shrinks its sigma by 0.3 and retries, at most
    ``max_retries`` times; then the parent itself is reused.

    Args:
        sigma: Child spread as a fraction of each dimension's range; a float, or one per
            dimension (> 0).
        start: Bred fraction of the first bred generation, in ``[0, end]``.
        end: Bred fraction from generation ``breakpoint + 1`` on, in ``[start, 1]``.
        breakpoint: Generations over which the fraction grows linearly (int >= 1).
        non_breed: Space-filling sampler for the rest; default ``Uniform`` seeded from a seed
            derived from (and distinct from) ``seed``.
        statistic: ``"loss"`` (the default since this release, was ``"loss_decrease"``: favour runs the surrogate gets most
            wrong) or ``"loss_decrease"`` (Breed's original rule: favour runs it is still
            learning from). Measured on the localised-difficulty benchmark (docs/benchmarks.md
            section 4), ``"loss"`` was better on the mean and on every tail statistic.
        min_observed: A run qualifies as a parent once this many of its samples were seen.
        max_retries: Out-of-box retries per child (int >= 0).
        seed: As for :class:`~lightning_online.sampling.samplers.Sampler`.

    Attributes:
        generation: Qualifying updates so far.
        last_bred_fraction: ``n_bred / n`` of the last draw (the scheduled ``R`` when ``n = 0``;
            0 before the first update).
        last_bred_mask: Bool ``(n,)``, which rows of the last draw were bred.
    """

    _SEED_TAG = 1

    def __init__(
        self,
        sigma: float | Sequence[float] = 0.05,
        start: float = 0.15,
        end: float = 0.75,
        breakpoint: int = 10,
        non_breed: Sampler | None = None,
        statistic: str = "loss",
        min_observed: int = 1,
        max_retries: int = 10,
        seed: int | None = None,
    ) -> None:
        self._configure(sigma, start, end, breakpoint, statistic, min_observed, max_retries)
        super().__init__(seed, non_breed)
        self._parents: np.ndarray | None = None
        self._weights: np.ndarray | None = None

    def _configure(
        self,
        sigma: Any,
        start: Any,
        end: Any,
        breakpoint: Any,
        statistic: Any,
        min_observed: Any,
        max_retries: Any,
    ) -> None:
        if isinstance(sigma, (Sequence, np.ndarray)) and not isinstance(sigma, str):
            if len(sigma) == 0:
                raise ValueError("Breed: sigma must not be an empty sequence")
            sig: float | tuple[float, ...] = tuple(
                check_real(s, f"sigma[{i}]", "Breed", positive=True) for i, s in enumerate(sigma)
            )
        else:
            sig = check_real(sigma, "sigma", "Breed", positive=True)
        st = check_real(start, "start", "Breed", minimum=0)
        en = check_real(end, "end", "Breed", minimum=0)
        if not 0.0 <= st <= en <= 1.0:
            raise ValueError(f"Breed: need 0 <= start <= end <= 1, got start={st}, end={en}")
        if statistic not in ("loss_decrease", "loss"):
            raise ValueError(
                f"Breed: statistic must be 'loss_decrease' or 'loss', got {statistic!r}"
            )
        self.sigma = sig
        self.start = st
        self.end = en
        self.breakpoint = check_int(breakpoint, "breakpoint", 1, "Breed")
        self.statistic: str = statistic
        self.min_observed = check_int(min_observed, "min_observed", 1, "Breed")
        self.max_retries = check_int(max_retries, "max_retries", 0, "Breed")

    @property
    def scheduled_fraction(self) -> float:
        """``R`` for the current generation (0 before the first update)."""
        if self.generation < 1:
            return 0.0
        step = min(self.generation - 1, self.breakpoint)
        return self.start + (self.end - self.start) * step / self.breakpoint

    def update(self, stats: Any = None) -> None:
        """Replace the parents by the qualifying runs of ``stats`` and start a new generation.

        A run qualifies with ``n_observed >= min_observed`` and finite parameters and statistic.
        Anything but a :class:`SimulationStats` with a qualifying run is ignored, so a training
        loop can call every sampler alike. Weights: the statistic, shifted so its minimum is 0
        when negative (a loss that grew), scaled by its maximum, floored at a small epsilon (so
        an all-zero statistic gives uniform parents), and normalised to sum to 1.
        """
        if not isinstance(stats, SimulationStats) or stats.m == 0:
            return None
        value = stats.loss_decrease if self.statistic == "loss_decrease" else stats.loss
        ok = (
            (stats.n_observed >= self.min_observed)
            & np.isfinite(value)
            & np.all(np.isfinite(stats.parameters), axis=1)
        )
        if not ok.any():
            return None
        w = value[ok].astype(np.float64)
        if w.min() < 0:
            w = w - w.min()
        top = w.max()
        w = w / top if top > 0 else np.zeros_like(w)
        w = np.maximum(w, _WEIGHT_FLOOR)
        self._parents = np.array(stats.parameters[ok], dtype=np.float64)
        self._weights = w / w.sum()
        self.generation += 1
        return None

    def _sigma_for(self, d: int) -> np.ndarray:
        if isinstance(self.sigma, tuple):
            if len(self.sigma) != d:
                raise ValueError(
                    f"Breed.draw: sigma has {len(self.sigma)} entries but the space has {d} "
                    "dimensions"
                )
            return np.array(self.sigma, dtype=np.float64)
        return np.full(d, self.sigma, dtype=np.float64)

    def _breed_unit(self, parents_u: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """Gaussian children of ``parents_u`` (unit cube), shrinking sigma on out-of-box draws."""
        children = parents_u.copy()
        pending = np.arange(parents_u.shape[0])
        scale = np.ones(parents_u.shape[0])
        for _ in range(self.max_retries + 1):
            if pending.size == 0:
                break
            trial = self._rng.normal(
                parents_u[pending], sigma * scale[pending, None], size=(pending.size, sigma.size)
            )
            inside = np.all((trial >= 0.0) & (trial <= 1.0), axis=1)
            children[pending[inside]] = trial[inside]
            pending = pending[~inside]
            scale[pending] *= _SHRINK
        # Children still out of the box keep their parent's parameters (already in `children`).
        return children

    def draw(self, space: ParameterSpace, n: int) -> np.ndarray:
        """Draw ``n`` rows: ``non_breed`` only before the first update, then ``R(g)`` bred."""
        n = self._check_draw(space, n)
        if self.generation < 1 or self._parents is None or self._weights is None:
            return self._draw_before_update(space, n)
        sigma = self._sigma_for(space.dim)
        parents_u = self._unit_points(space, self._parents, "Breed")
        r = self.scheduled_fraction
        n_bred = min(max(math.floor(r * n + 0.5), 0), n)
        picks = self._rng.choice(parents_u.shape[0], size=n_bred, p=self._weights)
        bred = space.from_unit(self._breed_unit(parents_u[picks], sigma))
        rest = self.non_breed.draw(space, n - n_bred)
        order = self._rng.permutation(n)
        theta = np.vstack([bred.reshape(n_bred, space.dim), rest])[order]
        self.last_bred_mask = (np.arange(n) < n_bred)[order]
        self.last_bred_fraction = n_bred / n if n else r
        return theta

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "sigma": list(self.sigma) if isinstance(self.sigma, tuple) else self.sigma,
            "start": self.start,
            "end": self.end,
            "breakpoint": self.breakpoint,
            "statistic": self.statistic,
            "min_observed": self.min_observed,
            "max_retries": self.max_retries,
            "parents": None if self._parents is None else self._parents.tolist(),
            "weights": None if self._weights is None else self._weights.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the saved state, including the saved hyperparameters (as ``Halton`` does)."""
        super().load_state_dict(state)
        self._configure(
            state["sigma"],
            state["start"],
            state["end"],
            state["breakpoint"],
            state["statistic"],
            state["min_observed"],
            state["max_retries"],
        )
        parents, weights = state["parents"], state["weights"]
        self._parents = _saved_array(parents)
        self._weights = _saved_array(weights)

    def __repr__(self) -> str:
        return (
            f"Breed(sigma={self.sigma!r}, start={self.start}, end={self.end}, "
            f"breakpoint={self.breakpoint}, non_breed={self.non_breed!r}, "
            f"statistic={self.statistic!r}, min_observed={self.min_observed}, "
            f"max_retries={self.max_retries}, seed={self.seed!r})"
        )


class LossProportional(_SteeredSampler):
    """RAD (Wu et al. 2023): resample dense candidates with density ``loss^k/mean(loss^k) + c``.

    Before the first update every draw is exactly ``non_breed.draw``. After an update with at
    least one usable run (``n_observed >= 1``, finite parameters and loss), a draw of ``n``
    rows: draws ``n_candidates`` (default ``10 * n``) uniform candidates of the unit cube with
    this sampler's own generator; gives each the loss of its nearest observed run (Euclidean in
    unit coordinates, via ``cKDTree``); and picks ``n`` of them with probability proportional
    to ``loss^k / mean(loss^k) + c`` (mean over the candidates), without replacement when
    ``n <= n_candidates`` and enough candidates have a nonzero weight, else with replacement.
    ``k`` sharpens the focus on high loss; ``c`` keeps a uniform floor (RAD's defaults
    ``k = c = 1``). Negative losses count as 0; all-zero weights give uniform picks.

    Args:
        k: Loss exponent (>= 0).
        c: Uniform share (>= 0).
        n_candidates: Candidates per draw (int >= 1), or None for ``10 * n``.
        seed: As for :class:`~lightning_online.sampling.samplers.Sampler`.
        non_breed: Sampler before the first update; default ``Uniform`` seeded from a seed
            derived from (and distinct from) ``seed``.

    Attributes:
        generation: Usable updates so far.
        last_bred_fraction: 1.0 for draws by the rule (after an update), 0.0 before.
        last_bred_mask: Bool ``(n,)``, all True after an update, all False before.
    """

    _SEED_TAG = 2

    def __init__(
        self,
        k: float = 1.0,
        c: float = 1.0,
        n_candidates: int | None = None,
        seed: int | None = None,
        non_breed: Sampler | None = None,
    ) -> None:
        self._configure(k, c, n_candidates)
        super().__init__(seed, non_breed)
        self._points: np.ndarray | None = None
        self._losses: np.ndarray | None = None

    def _configure(self, k: Any, c: Any, n_candidates: Any) -> None:
        self.k = check_real(k, "k", "LossProportional", minimum=0)
        self.c = check_real(c, "c", "LossProportional", minimum=0)
        self.n_candidates = (
            None
            if n_candidates is None
            else check_int(n_candidates, "n_candidates", 1, "LossProportional")
        )

    def update(self, stats: Any = None) -> None:
        """Replace the observed runs by the usable runs of ``stats``; anything else is ignored."""
        if not isinstance(stats, SimulationStats) or stats.m == 0:
            return None
        ok = (
            (stats.n_observed >= 1)
            & np.isfinite(stats.loss)
            & np.all(np.isfinite(stats.parameters), axis=1)
        )
        if not ok.any():
            return None
        self._points = np.array(stats.parameters[ok], dtype=np.float64)
        self._losses = np.maximum(np.array(stats.loss[ok], dtype=np.float64), 0.0)
        self.generation += 1
        return None

    def draw(self, space: ParameterSpace, n: int) -> np.ndarray:
        """Draw ``n`` rows: ``non_breed`` before the first update, then by the RAD density."""
        n = self._check_draw(space, n)
        if self.generation < 1 or self._points is None or self._losses is None:
            return self._draw_before_update(space, n)
        points_u = self._unit_points(space, self._points, "LossProportional")
        n_cand = self.n_candidates if self.n_candidates is not None else 10 * n
        cand = self._rng.random((n_cand, space.dim))
        if n_cand:
            _, nearest = cKDTree(points_u).query(cand)
            lk = self._losses[nearest] ** self.k
            mean = lk.mean()
            w = (lk / mean if mean > 0 else np.zeros_like(lk)) + self.c
            total = w.sum()
            p = w / total if total > 0 and np.isfinite(total) else np.full(n_cand, 1.0 / n_cand)
            replace = bool(n > n_cand or np.count_nonzero(p) < n)
            picks = self._rng.choice(n_cand, size=n, replace=replace, p=p)
        else:
            picks = np.zeros(0, dtype=np.int64)
        self.last_bred_fraction = 1.0
        self.last_bred_mask = np.ones(n, dtype=bool)
        return space.from_unit(cand[picks].reshape(n, space.dim))

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "k": self.k,
            "c": self.c,
            "n_candidates": self.n_candidates,
            "points": None if self._points is None else self._points.tolist(),
            "losses": None if self._losses is None else self._losses.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the saved state, including the saved hyperparameters (as ``Halton`` does)."""
        super().load_state_dict(state)
        self._configure(state["k"], state["c"], state["n_candidates"])
        points, losses = state["points"], state["losses"]
        self._points = _saved_array(points)
        self._losses = _saved_array(losses)

    def __repr__(self) -> str:
        return (
            f"LossProportional(k={self.k}, c={self.c}, n_candidates={self.n_candidates}, "
            f"seed={self.seed!r}, non_breed={self.non_breed!r})"
        )
