"""What the shipped solvers share: the check of a run's parameters and the autoregressive
sample layout of the 1-D solvers (numpy only; runs wherever the solver is called: a solver
sandbox, or the user's process)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def check_theta(theta: object, n: int, names: tuple[str, ...]) -> np.ndarray:
    """``theta`` as a float64 vector of ``n`` finite values, or a ValueError saying what is wrong."""
    arr = np.asarray(theta, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"theta must be a 1-D array of {n} values {names}, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"theta must be finite, got {arr}")
    return arr


class Periodic1D:
    """Base of the periodic 1-D solvers (:class:`Burgers1D`, :class:`AllenCahn1D`): samples
    ``x = [u(t_k), log10(c) * ones(nx)]`` (float32 ``(2, nx)``), ``y = u(t_{k+1})`` (float32
    ``(1, nx)``), where ``c = theta[0] > 0`` is the equation's coefficient.

    Subclasses give ``nx``, ``n_params``, ``names``, ``_COEFFICIENT`` (its name in messages),
    :meth:`initial_condition`, ``simulate`` (calling :meth:`_simulate`),
    :meth:`_check_coefficient` and :meth:`_trajectory`.
    """

    nx: int
    n_params: int
    names: tuple[str, ...]
    _COEFFICIENT: str

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (2, self.nx)

    @property
    def y_shape(self) -> tuple[int, ...]:
        return (1, self.nx)

    def initial_condition(self, theta: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, theta: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Validate ``theta`` (shape ``(n_params,)``, ``theta[0] > 0``) and return the sample
        generator."""
        th = check_theta(theta, self.n_params, self.names)
        if not th[0] > 0:
            raise ValueError(f"{self._COEFFICIENT} = theta[0] must be > 0, got {th[0]}")
        return self._samples(self.initial_condition(th), float(th[0]))

    def _simulate(self, u0: np.ndarray, coefficient: float) -> np.ndarray:
        """Trajectory from ``u0`` (shape ``(nx,)``): ``(n_steps + 1, nx)`` float64 (the
        subclasses' ``simulate``, which names the coefficient)."""
        u0 = np.asarray(u0, dtype=np.float64)
        if u0.shape != (self.nx,):
            raise ValueError(f"u0 must have shape ({self.nx},), got {u0.shape}")
        self._check_coefficient(coefficient)
        return np.stack([u0, *self._trajectory(u0, float(coefficient))])

    def _check_coefficient(self, coefficient: float) -> None:
        raise NotImplementedError

    def _samples(
        self, u0: np.ndarray, coefficient: float
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        feature = np.full(self.nx, np.log10(coefficient), dtype=np.float32)
        prev = u0.astype(np.float32)
        for u in self._trajectory(u0, coefficient):
            cur = u.astype(np.float32)
            yield np.stack([prev, feature]), cur[None, :]
            prev = cur

    def _trajectory(self, u0: np.ndarray, coefficient: float) -> Iterator[np.ndarray]:
        raise NotImplementedError
