"""``ErrorModel``: steer by a Gaussian-process model of the surrogate's error (numpy and scipy
only, like every sampler).

Where code runs: on the training thread of every rank, identically: ``update`` fits the model
to the callback's statistics, ``draw`` picks the next parameters (about 0.05 s for 64 observed
runs, 0.2-0.3 s for 256; see docs/steering.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from lightning_online._util.checks import check_int, check_real
from lightning_online._util.seeds import seed_of
from lightning_online.sampling.samplers import (
    Halton,
    ParameterSpace,
    Sampler,
)
from lightning_online.sampling.steering import SimulationStats, _saved_array, _SteeredSampler

__all__ = ["ErrorModel"]


class ErrorModel(_SteeredSampler):
    """Steer by an error model: where the surrogate is predicted to be wrong, spread apart.

    A Gaussian process (squared-exponential kernel, one length scale per dimension; its
    hyperparameters the maximum a posteriori under a log-normal prior on the length scales
    that grows with the dimension, from the last fit and from a default start) is fitted at
    each update to the log of each observed run's loss over the window, in unit coordinates.
    A draw of ``n`` rows then takes a random ``Binomial(n, explore)`` of them from
    ``non_breed`` (space filling, default ``Halton``) and the rest by the acquisition:

    * predicted error ``e(x) = exp(mu(x) + beta * s(x))``, the model's mean plus ``beta`` of
      its standard deviation (uncertainty), on candidates drawn uniformly and around the runs
      with the largest loss;
    * greedily, the candidate that maximises ``power * log e(x) + d_eff * log dist(x)``, where
      ``dist`` is the distance to the nearest run drawn so far (any kind, up to ``memory`` of
      them) or picked in this batch, measured with the model's length scales, and ``d_eff`` the
      number of dimensions the model finds relevant (length scale < 1). Runs thus fill the box
      with a local density that grows like ``e(x) ** power``: more runs where the error is
      large, never two on top of each other, none where runs already are.

    ``power = 1`` spreads the budget in proportion to the predicted error (a compromise between
    the mean error, best served by a flatter density, and the largest error, by a steeper one).

    Args:
        explore: Expected share of each draw from ``non_breed``, in ``[0, 1]``. 0.5 by
            default: on the localised benchmark 0.1, 0.25 and 0.5 did equally well, and 0.5
            stayed closest to Halton on the problems without a localised difficulty
            (docs/benchmarks.md section 4).
        beta: Weight of the model's uncertainty (>= 0).
        power: Exponent of the target density (> 0).
        n_candidates: Candidates per update (int >= 16).
        min_observed: A run is fitted once this many of its samples were seen in the window.
        min_runs: Updates with fewer usable runs are ignored (the model would be a guess).
        max_points: At most this many runs are fitted (a random subset beyond; int >= 2).
        memory: Most recent draws remembered for the distance term (int >= 1).
        non_breed: Space-filling sampler for the exploration share and everything before the
            first update; default ``Halton`` seeded from a seed derived from ``seed``.
        seed: As for :class:`~lightning_online.sampling.samplers.Sampler`.
        min_snr: Hold back where the model sees nothing: while the last fit's headroom
            ``snr`` (:meth:`headroom_estimate`) is below this, every row comes from
            ``non_breed``, as before the first update (a flat model's acquisition is a
            farthest-point design, no better than Halton's; docs/steering.md). 0 disables it.
        self_check: Hold back by itself: at each update, compare the loss of the runs the
            model chose with that of the exploration runs (the control); where the model's
            runs are not harder, halve the share that follows the model (towards pure
            ``non_breed``), and let it grow back when they are (docs/steering.md).

    Attributes:
        generation: Usable updates so far.
        last_bred_mask: Bool ``(n,)``, which rows of the last draw followed the model.
        last_bred_fraction: Their share.
        headroom: ``(ratio, snr)`` of the last fit (see :meth:`headroom_estimate`), or None.
        model: The last fitted :class:`~lightning_online.sampling._gp.GaussianProcess`, or None.
    """

    _SEED_TAG = 3

    def __init__(
        self,
        explore: float = 0.5,
        beta: float = 1.0,
        power: float = 1.0,
        n_candidates: int = 4096,
        min_observed: int = 1,
        min_runs: int = 16,
        max_points: int = 256,
        memory: int = 20000,
        non_breed: Sampler | None = None,
        seed: int | None = None,
        self_check: bool = False,
        min_snr: float = 1.0,
    ) -> None:
        self._configure(
            explore, beta, power, n_candidates, min_observed, min_runs, max_points, memory
        )
        if not isinstance(self_check, bool):
            raise ValueError(f"ErrorModel: self_check must be True or False, got {self_check!r}")
        self.self_check = self_check
        self.min_snr = check_real(min_snr, "min_snr", "ErrorModel", minimum=0)
        #: Share of the non-exploration draws that follow the model (1 unless the self-check
        #: found the model's runs no harder than the exploration runs).
        self.steer_share = 1.0
        #: The self-check's last z score (steered minus exploration mean log loss over its
        #: standard error), or None.
        self.last_check: float | None = None
        super().__init__(seed, non_breed)
        if non_breed is None:
            self.non_breed = Halton(seed=seed_of([self._effective_seed, self._SEED_TAG]))
        self.model: Any = None
        self._theta: np.ndarray | None = None  # the model's log hyperparameters (warm start)
        self._points: np.ndarray | None = None  # parameters of the fitted runs
        self._values: np.ndarray | None = None  # log loss of the fitted runs
        self._drawn = np.zeros((0, 0))  # unit coordinates of recent draws
        self._drawn_steered = np.zeros(0, dtype=bool)  # which of them followed the model
        self._fitted_generation = 0
        self._cand = np.zeros((0, 0))  # unit coordinates of this generation's candidates
        self._log_e = np.zeros(0)
        self._metric = np.zeros(0)  # per-dimension scale of the distance
        self._d_eff = 1
        self._dist = np.zeros(0)
        self.headroom: tuple[float, float] | None = None
        self._space: ParameterSpace | None = None  # of the last draw (the self-check's units)

    def _configure(
        self,
        explore: Any,
        beta: Any,
        power: Any,
        n_candidates: Any,
        min_observed: Any,
        min_runs: Any,
        max_points: Any,
        memory: Any,
    ) -> None:
        name = "ErrorModel"
        self.explore = check_real(explore, "explore", name, minimum=0, maximum=1)
        self.beta = check_real(beta, "beta", name, minimum=0)
        self.power = check_real(power, "power", name, positive=True)
        self.n_candidates = check_int(n_candidates, "n_candidates", 16, name)
        self.min_observed = check_int(min_observed, "min_observed", 1, name)
        self.min_runs = check_int(min_runs, "min_runs", 2, name)
        self.max_points = check_int(max_points, "max_points", 2, name)
        if self.max_points < self.min_runs:
            raise ValueError(
                f"ErrorModel: max_points ({self.max_points}) must be >= min_runs ({self.min_runs})"
            )
        self.memory = check_int(memory, "memory", 1, name)

    def update(self, stats: Any = None) -> None:
        """Keep the usable runs of ``stats`` (enough samples seen, finite parameters, finite
        positive loss) for the model, if there are at least ``min_runs`` of them; anything else
        is ignored. The model is fitted at the next draw, which knows the parameter space."""
        if not isinstance(stats, SimulationStats) or stats.m == 0:
            return None
        ok = (
            (stats.n_observed >= self.min_observed)
            & np.isfinite(stats.loss)
            & (stats.loss > 0)
            & np.all(np.isfinite(stats.parameters), axis=1)
        )
        if np.count_nonzero(ok) < self.min_runs:
            return None
        idx = np.flatnonzero(ok)
        if self.self_check:
            self._check(stats.parameters[idx], np.log(stats.loss[idx]))
        if len(idx) > self.max_points:
            idx = np.sort(self._rng.choice(idx, size=self.max_points, replace=False))
        self._points = np.array(stats.parameters[idx], dtype=np.float64)
        self._values = np.log(np.array(stats.loss[idx], dtype=np.float64))
        self.generation += 1
        return None

    def _check(self, theta: np.ndarray, log_loss: np.ndarray) -> None:
        """The self-check: are the runs the model chose harder than the exploration runs?

        Each observed run is matched to the nearest remembered draw (within 0.02 in unit
        coordinates); with at least 3 of each kind, ``z`` = (mean log loss of the steered runs
        minus that of the exploration runs) / its standard error. ``z < 1``: the model's runs
        are no harder than space-filling ones, so steering has nothing to find (or finds it
        wrongly): the steered share halves (towards pure ``non_breed``); ``z > 2``: it grows
        back by a quarter. The exploration runs are the held-out control."""
        if not len(self._drawn) or self._drawn.shape[1] != theta.shape[1] or self._space is None:
            return
        unit = np.clip(self._space.to_unit(theta), 0.0, 1.0)
        dist, j = cKDTree(self._drawn).query(unit)
        known = dist < 0.02
        kind = self._drawn_steered[j[known]]
        ls, le = log_loss[known][kind], log_loss[known][~kind]
        if len(ls) < 3 or len(le) < 3:
            return
        se = np.sqrt(ls.var(ddof=1) / len(ls) + le.var(ddof=1) / len(le)) + 1e-12
        z = float((ls.mean() - le.mean()) / se)
        self.last_check = z
        if z < 1.0:
            self.steer_share *= 0.5
        elif z > 2.0:
            self.steer_share = min(1.0, self.steer_share + 0.25)

    def _remember(self, unit: np.ndarray, steered: bool = False) -> None:
        if not len(unit):
            return
        if self._drawn.shape[1] != unit.shape[1]:
            self._drawn = np.zeros((0, unit.shape[1]))
            self._drawn_steered = np.zeros(0, dtype=bool)
        self._drawn = np.vstack([self._drawn, unit])[-self.memory :]
        flags = np.concatenate([self._drawn_steered, np.full(len(unit), steered)])
        self._drawn_steered = flags[-self.memory :]
        if len(self._dist):
            self._dist = np.minimum(self._dist, self._distance(self._cand, unit))

    def _distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Distance of each row of ``a`` to its nearest row of ``b``, in the model's metric."""
        if not len(b):
            return np.full(len(a), np.inf)
        dist, _ = cKDTree(b * self._metric).query(a * self._metric)
        return np.asarray(dist, dtype=np.float64)

    def _fit(self, space: ParameterSpace) -> None:
        """Fit the model to the last update and score this generation's candidates."""
        from lightning_online.sampling._gp import GaussianProcess

        assert self._points is not None and self._values is not None
        x = self._unit_points(space, self._points, "ErrorModel")
        gp = GaussianProcess(x, self._values, start=self._theta, prior=True)
        self.model = gp
        self._theta = gp.theta
        n_local = self.n_candidates // 4
        top = np.argsort(self._values)[::-1][: max(1, len(x) // 10)]
        centres = x[self._rng.choice(top, size=n_local)]
        local = np.clip(centres + self._rng.normal(0.0, 0.05, size=centres.shape), 0.0, 1.0)
        self._cand = np.vstack([self._rng.random((self.n_candidates - n_local, space.dim)), local])
        mean, std = gp.predict(self._cand)
        self._log_e = mean + self.beta * std
        ell = np.minimum(gp.length_scale, 1.0)
        self._metric = 1.0 / ell
        self._d_eff = max(1, int(np.count_nonzero(gp.length_scale < 1.0)))
        self._dist = self._distance(self._cand, self._drawn)
        self._fitted_generation = self.generation
        uniform = slice(0, self.n_candidates - n_local)  # the box, not the hard runs' vicinity
        q50, q90 = np.percentile(mean[uniform], [50, 90])
        self.headroom = (float(np.exp(q90 - q50)), float((q90 - q50) / np.mean(std[uniform])))

    def headroom_estimate(self, space: ParameterSpace) -> tuple[float, float] | None:
        """What steering could gain, from the last fitted model (None before the first update).

        Returns ``(ratio, snr)``: ``ratio = exp(q90 - q50)`` of the model's mean log error
        over the box, i.e. how much larger the predicted error of the hardest tenth of the box
        is than the median (1: the error is even over the box, nothing to steer towards), and
        ``snr`` = that log spread over the model's mean standard deviation (below ~1 the spread
        is within the model's uncertainty). Fits the model now if the last update has not been
        fitted yet (the same fit the next draw would make).
        """
        if self.generation < 1 or self._points is None:
            return None
        if self._fitted_generation != self.generation:
            self._fit(space)
        return self.headroom

    def _draw_before_update(self, space: ParameterSpace, n: int) -> np.ndarray:
        theta = super()._draw_before_update(space, n)
        self._remember(np.clip(space.to_unit(theta), 0.0, 1.0))
        return theta

    def draw(self, space: ParameterSpace, n: int) -> np.ndarray:
        """Draw ``n`` rows: ``non_breed`` before the first update, then explore + acquisition."""
        n = self._check_draw(space, n)
        self._space = space
        if self.generation < 1 or self._points is None:
            return self._draw_before_update(space, n)
        if self._fitted_generation != self.generation:
            self._fit(space)
        if self.headroom is not None and self.headroom[1] < self.min_snr:
            # the model sees nothing: the exploration sequence, in its order
            return self._draw_before_update(space, n)
        follow = (1.0 - self.explore) * self.steer_share
        n_explore = int(self._rng.binomial(n, 1.0 - follow)) if n else 0
        rest = self.non_breed.draw(space, n_explore)
        self._remember(np.clip(space.to_unit(rest), 0.0, 1.0))
        picked = np.empty((n - n_explore, space.dim))
        weighted_error = self.power * self._log_e  # fixed for the generation; dist changes
        with np.errstate(divide="ignore"):
            for i in range(n - n_explore):
                score = weighted_error + self._d_eff * np.log(self._dist)
                j = int(np.argmax(score))
                picked[i] = self._cand[j]
                self._remember(self._cand[j : j + 1], steered=True)
        steered = space.from_unit(picked)
        order = self._rng.permutation(n)
        theta = np.vstack([steered.reshape(n - n_explore, space.dim), rest])[order]
        self.last_bred_mask = (np.arange(n) < n - n_explore)[order]
        self.last_bred_fraction = (n - n_explore) / n if n else follow
        return theta

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "explore": self.explore,
            "beta": self.beta,
            "power": self.power,
            "n_candidates": self.n_candidates,
            "min_observed": self.min_observed,
            "min_runs": self.min_runs,
            "max_points": self.max_points,
            "memory": self.memory,
            "self_check": self.self_check,
            "min_snr": self.min_snr,
            "headroom": None if self.headroom is None else list(self.headroom),
            "steer_share": self.steer_share,
            "drawn_steered": self._drawn_steered.tolist(),
            "points": None if self._points is None else self._points.tolist(),
            "values": None if self._values is None else self._values.tolist(),
            "drawn": self._drawn.tolist(),
            "fitted_generation": self._fitted_generation,
            "theta": None if self._theta is None else self._theta.tolist(),
            "candidates": self._cand.tolist(),
            "log_e": self._log_e.tolist(),
            "metric": self._metric.tolist(),
            "d_eff": self._d_eff,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the saved state, including the saved hyperparameters (as ``Breed`` does)."""
        super().load_state_dict(state)
        self._configure(
            state["explore"],
            state["beta"],
            state["power"],
            state["n_candidates"],
            state["min_observed"],
            state["min_runs"],
            state["max_points"],
            state["memory"],
        )
        points, values = state["points"], state["values"]
        self._points = _saved_array(points)
        self._values = _saved_array(values)
        drawn = np.array(state["drawn"], dtype=np.float64)
        self._drawn = drawn if drawn.ndim == 2 else np.zeros((0, 0))
        self.self_check = bool(state.get("self_check", False))
        self.min_snr = float(state.get("min_snr", 1.0))
        headroom = state.get("headroom")
        self.headroom = None if headroom is None else (float(headroom[0]), float(headroom[1]))
        self.steer_share = float(state.get("steer_share", 1.0))
        flags = np.array(state.get("drawn_steered", []), dtype=bool)
        self._drawn_steered = (
            flags if len(flags) == len(self._drawn) else np.zeros(len(self._drawn), dtype=bool)
        )
        self._fitted_generation = int(state["fitted_generation"])
        theta = state["theta"]
        self._theta = _saved_array(theta)
        cand = np.array(state["candidates"], dtype=np.float64)
        self._cand = cand if cand.ndim == 2 else np.zeros((0, 0))
        self._log_e = np.array(state["log_e"], dtype=np.float64)
        self._metric = np.array(state["metric"], dtype=np.float64)
        self._d_eff = int(state["d_eff"])
        self._dist = self._distance(self._cand, self._drawn) if len(self._cand) else np.zeros(0)
        self.model = None

    def __repr__(self) -> str:
        return (
            f"ErrorModel(explore={self.explore}, beta={self.beta}, power={self.power}, "
            f"n_candidates={self.n_candidates}, min_observed={self.min_observed}, "
            f"min_runs={self.min_runs}, max_points={self.max_points}, memory={self.memory}, "
            f"non_breed={self.non_breed!r}, seed={self.seed!r}, self_check={self.self_check}, "
            f"min_snr={self.min_snr})"
        )
