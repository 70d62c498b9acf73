"""1-D Allen-Cahn equation, periodic on ``[-1, 1]`` (the PINN benchmark form).

PDE
    ``u_t = D u_xx + 5 (u - u^3)`` on ``x in [-1, 1)`` (periodic), ``0 < t <= t_end = 1``;
    the classical case is ``D = 1e-4``, ``u0 = x^2 cos(pi x)``.

Initial condition
    ``u0(x) = a x^2 cos(pi x) + c`` (continuous and periodic; ``a = 1, c = 0`` is classical).

Discretisation
    Fourier pseudo-spectral on ``nx`` points ``x_j = -1 + 2 j / nx``; ETDRK4 (Cox-Matthews
    exponential time differencing, coefficients by the Kassam-Trefethen contour integral)
    with the linear part ``L = 5 - D k^2`` integrated exactly and ``N(u) = -5 u^3`` explicit;
    fixed sub-step ``dt <= dt_max`` dividing each output interval.

Parameters ``theta`` (3 values; box from :func:`allen_cahn1d_space`)
    ``(D, a, c)``: ``D`` in ``[1e-4, 1e-2]`` (log-uniform), ``a`` in ``[0.5, 1.5]``,
    ``c`` in ``[-0.25, 0.25]``. Outside the box only ``D > 0`` is required.

Samples (autoregressive; ``n_steps`` per run, step ``dt_out = t_end / n_steps``)
    ``x``: float32 ``(2, nx)`` = ``[u(t_k), log10(D) * ones(nx)]``;
    ``y``: float32 ``(1, nx)`` = ``u(t_{k+1})``, for ``k = 0 .. n_steps - 1``.

Where code runs: ``__call__`` in a solver sandbox process (``_transport.runner``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from lightning_online.solvers._common import Periodic1D, check_theta

__all__ = ["AllenCahn1D", "allen_cahn1d_space", "allen_cahn_ode_solution"]

_NAMES = ("D", "a", "c")
_REACTION = 5.0


def allen_cahn1d_space() -> tuple[list[float], list[float], tuple[str, ...], tuple[bool, ...]]:
    """Parameter box of :class:`AllenCahn1D` as ``(low, high, names, log)``."""
    return [1e-4, 0.5, -0.25], [1e-2, 1.5, 0.25], _NAMES, (True, False, False)


def allen_cahn_ode_solution(u0: float, t: np.ndarray | float) -> np.ndarray:
    """Exact solution of ``u' = 5 (u - u^3)`` (spatially constant states).

    ``u(t) = sign(u0) / sqrt(1 + (1 / u0^2 - 1) exp(-10 t))`` (and ``0`` for ``u0 = 0``).
    """
    t = np.asarray(t, dtype=np.float64)
    if u0 == 0.0:
        return np.zeros_like(t)
    return np.sign(u0) / np.sqrt(1.0 + (1.0 / u0**2 - 1.0) * np.exp(-2.0 * _REACTION * t))


@dataclass(frozen=True)
class AllenCahn1D(Periodic1D):
    """Pseudo-spectral ETDRK4 solver of the 1-D Allen-Cahn equation (see the module docstring).

    Args:
        nx: grid points (even).
        n_steps: output steps (= samples) per run.
        t_end: final time.
        dt_max: largest ETDRK4 sub-step.
    """

    nx: int = 256
    n_steps: int = 100
    t_end: float = 1.0
    dt_max: float = 2e-3

    def __post_init__(self) -> None:
        if self.nx < 4 or self.nx % 2 or self.n_steps < 1:
            raise ValueError("need an even nx >= 4 and n_steps >= 1")
        if not self.t_end > 0 or not self.dt_max > 0:
            raise ValueError("t_end and dt_max must be > 0")

    n_params = 3
    names = _NAMES
    _COEFFICIENT = "diffusion D"

    @property
    def substeps(self) -> int:
        """ETDRK4 sub-steps per output step."""
        return max(1, int(np.ceil(self.t_end / self.n_steps / self.dt_max - 1e-9)))

    def grid(self) -> np.ndarray:
        """Grid points ``-1 + 2 j / nx``."""
        return -1.0 + 2.0 * np.arange(self.nx) / self.nx

    def initial_condition(self, theta: np.ndarray) -> np.ndarray:
        """``a x^2 cos(pi x) + c`` on the grid."""
        _, a, c = check_theta(theta, self.n_params, self.names)
        x = self.grid()
        return a * x**2 * np.cos(np.pi * x) + c

    def simulate(self, u0: np.ndarray, D: float) -> np.ndarray:
        """Trajectory from grid values ``u0`` (shape ``(nx,)``): ``(n_steps + 1, nx)`` float64."""
        return self._simulate(u0, D)

    def _check_coefficient(self, D: float) -> None:
        if not D >= 0:
            raise ValueError(f"D must be >= 0, got {D}")

    def _trajectory(self, u0: np.ndarray, D: float) -> Iterator[np.ndarray]:
        """Yield ``u(t_k)`` for ``k = 1 .. n_steps`` (fresh float64 arrays)."""
        nx = self.nx
        m = self.substeps
        h = self.t_end / self.n_steps / m
        k = np.pi * np.arange(nx // 2 + 1)  # wavenumbers for period 2
        lin = _REACTION - D * k**2
        e, e2, q, f1, f2, f3 = _etdrk4_coefficients(lin, h)

        def nonlin(v: np.ndarray) -> np.ndarray:
            w = np.fft.irfft(v, n=nx)
            return np.fft.rfft(-_REACTION * w * w * w)

        v = np.fft.rfft(u0)
        for _ in range(self.n_steps):
            for _ in range(m):
                nv = nonlin(v)
                a = e2 * v + q * nv
                na = nonlin(a)
                b = e2 * v + q * na
                nb = nonlin(b)
                c = e2 * a + q * (2.0 * nb - nv)
                nc = nonlin(c)
                v = e * v + nv * f1 + 2.0 * (na + nb) * f2 + nc * f3
            yield np.fft.irfft(v, n=nx)


def _etdrk4_coefficients(lin: np.ndarray, h: float, n_contour: int = 32) -> tuple[np.ndarray, ...]:
    """ETDRK4 coefficients for a diagonal linear operator (Kassam & Trefethen 2005)."""
    hl = h * lin
    r = np.exp(1j * np.pi * (np.arange(1, n_contour + 1) - 0.5) / n_contour)
    lr = hl[:, None] + r[None, :]
    elr = np.exp(lr)
    q = h * np.real(np.mean((np.exp(lr / 2.0) - 1.0) / lr, axis=1))
    f1 = h * np.real(np.mean((-4.0 - lr + elr * (4.0 - 3.0 * lr + lr**2)) / lr**3, axis=1))
    f2 = h * np.real(np.mean((2.0 + lr + elr * (lr - 2.0)) / lr**3, axis=1))
    f3 = h * np.real(np.mean((-4.0 - 3.0 * lr - lr**2 + elr * (4.0 - lr)) / lr**3, axis=1))
    return np.exp(hl), np.exp(hl / 2.0), q, f1, f2, f3
