"""A small Gaussian-process regressor: the error model of :class:`~lightning_online.ErrorModel`.

Numpy and scipy only. Squared-exponential kernel with one length scale per dimension (ARD),
signal and noise variances, all fitted by maximising the log marginal likelihood (L-BFGS-B with
the analytic gradient, bounded in log space). Targets are standardised before the fit. Meant for
the few hundred points that a steering update sees; ``fit`` is deterministic given its inputs,
so every DDP rank that fits the same statistics gets the same model.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.linalg import cho_factor, cho_solve, lapack, solve_triangular
from scipy.optimize import minimize
from scipy.spatial.distance import cdist

# Bounds of the log hyperparameters: length scales in unit coordinates, variances of the
# standardised target.
_LOG_ELL = (math.log(0.02), math.log(5.0))
_LOG_SF2 = (math.log(1e-2), math.log(1e2))
_LOG_SN2 = (math.log(1e-4), math.log(2.0))
_JITTER = 1e-8


class GaussianProcess:
    """GP regression ``y ~ GP(c, k) + noise`` fitted to ``(x, y)``.

    Args:
        x: ``(m, d)`` inputs (unit coordinates), ``m >= 1``.
        y: ``(m,)`` finite targets.
        max_iter: L-BFGS-B iterations of the hyperparameter fit.
        start: log hyperparameters to start the fit from (``theta`` of an earlier fit, whose
            dimension matches), or None for a fixed default.
        prior: Fit the maximum a posteriori hyperparameters under a log-normal prior on each
            length scale whose median grows with the dimension (``LogNormal(sqrt(2) +
            log(d) / 2, sqrt(3))``, Hvarfner et al. 2024, BoTorch's default): a dimension is
            short-scaled only where the data insist. Without it (maximum likelihood), a few
            hundred noisy losses in 6 dimensions are often "explained" by length scales of
            0.05 and no noise: an interpolation of the noise that predicts nothing.

    Attributes:
        length_scale: ``(d,)`` fitted length scales.
        signal_var, noise_var: fitted variances, in units of ``y``.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        max_iter: int = 60,
        start: np.ndarray | None = None,
        prior: bool = False,
    ) -> None:
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] < 1:
            raise ValueError(f"GaussianProcess: need x (m, d) and y (m,), got {x.shape}, {y.shape}")
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            raise ValueError("GaussianProcess: x and y must be finite")
        self.x = x
        d = x.shape[1]
        # the length-scale prior's log-space mean and standard deviation (None: none)
        self._prior = (math.sqrt(2.0) + 0.5 * math.log(d), math.sqrt(3.0)) if prior else None
        self._mean = float(y.mean())
        self._scale = float(y.std()) or 1.0
        self._y = (y - self._mean) / self._scale
        # squared differences per dimension, (d, m, m): the gradient needs them one by one
        self._sq = (x.T[:, :, None] - x.T[:, None, :]) ** 2
        bounds = [_LOG_ELL] * d + [_LOG_SF2, _LOG_SN2]
        default = np.array([math.log(0.3)] * d + [0.0, math.log(0.1)])
        starts = [default]
        if start is not None and np.shape(start) == (d + 2,) and np.all(np.isfinite(start)):
            # the earlier fit first; the default too, so that a fit once stuck in a flat
            # optimum (every length scale at its bound) can leave it
            starts.insert(0, np.clip(np.asarray(start, dtype=np.float64), *np.array(bounds).T))
        theta, best = starts[0], math.inf
        if x.shape[0] >= 2:
            for s0 in starts:
                res = minimize(
                    self._nll,
                    s0,
                    jac=True,
                    method="L-BFGS-B",
                    bounds=bounds,
                    options={"maxiter": max_iter},
                )
                if np.all(np.isfinite(res.x)) and float(res.fun) < best:
                    theta, best = res.x, float(res.fun)
        self._set(theta)

    def _kernel(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = self.x.shape[1]
        ell2 = np.exp(2.0 * theta[:d])
        kf = math.exp(theta[d]) * np.exp(-0.5 * np.tensordot(1.0 / ell2, self._sq, axes=1))
        k = kf + (math.exp(theta[d + 1]) + _JITTER) * np.eye(self.x.shape[0])
        return kf, k

    def _nll(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """Negative log marginal likelihood and its gradient in the log hyperparameters."""
        d = self.x.shape[1]
        kf, k = self._kernel(theta)
        try:
            c = cho_factor(k, lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            return 1e25, np.zeros_like(theta)
        alpha = cho_solve(c, self._y, check_finite=False)
        kinv, info = lapack.dpotri(c[0], lower=1)
        if info:
            return 1e25, np.zeros_like(theta)
        kinv = np.tril(kinv) + np.tril(kinv, -1).T
        nll = 0.5 * self._y @ alpha + np.log(np.diag(c[0])).sum()
        w = np.outer(alpha, alpha) - kinv
        grad = np.empty_like(theta)
        wk = w * kf
        grad[:d] = (
            -0.5 * np.tensordot(self._sq, wk, axes=([1, 2], [0, 1])) / np.exp(2.0 * theta[:d])
        )
        grad[d] = -0.5 * wk.sum()
        grad[d + 1] = -0.5 * math.exp(theta[d + 1]) * np.trace(w)
        if self._prior is not None:  # minus the log prior density of the log length scales
            mu, sd = self._prior
            z = (theta[:d] - mu) / sd
            nll += 0.5 * float(z @ z)
            grad[:d] += z / sd
        return float(nll), grad

    def _set(self, theta: np.ndarray) -> None:
        d = self.x.shape[1]
        self.theta = theta
        self.length_scale = np.exp(theta[:d])
        self._sf2 = math.exp(theta[d])
        self.signal_var = self._sf2 * self._scale**2
        self.noise_var = math.exp(theta[d + 1]) * self._scale**2
        _, k = self._kernel(theta)
        self._chol = np.linalg.cholesky(k)
        self._alpha = cho_solve((self._chol, True), self._y, check_finite=False)

    def predict(self, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of the latent function at ``xs`` ``(n, d)``."""
        xs = np.asarray(xs, dtype=np.float64)
        ks = self._sf2 * np.exp(
            -0.5 * cdist(xs / self.length_scale, self.x / self.length_scale, "sqeuclidean")
        )
        mean = ks @ self._alpha
        v = solve_triangular(self._chol, ks.T, lower=True, check_finite=False)
        var = np.maximum(self._sf2 - np.einsum("mn,mn->n", v, v), 0.0)
        return self._mean + self._scale * mean, self._scale * np.sqrt(var)
