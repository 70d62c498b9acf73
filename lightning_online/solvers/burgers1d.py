"""1-D viscous Burgers equation on the periodic unit interval (AL4PDE-like setting).

PDE
    ``u_t + (u^2 / 2)_x = nu u_xx`` on ``x in [0, 1)`` (periodic), ``0 < t <= t_end = 2``.

Initial condition
    ``u0(x) = a1 sin(2 pi x + phi) + a2 sin(4 pi x)`` (exact cell averages).

Discretisation
    Finite volumes on ``nx`` cells with centres ``x_i = (i + 1/2) / nx``; Strang splitting
    ``D(dt/2) C(dt) D(dt/2)`` per sub-step:

    * ``C``: convection with a conservative flux: MUSCL reconstruction (MC limiter), exact
      Godunov flux of ``u^2 / 2``, SSP-RK2 (Heun); adaptive sub-step
      ``dt = cfl * h / max|u|`` (at most one output interval), clipped to land on the
      output times.
    * ``D``: the central 3-point diffusion ``nu (u_{i+1} - 2 u_i + u_{i-1}) / h^2``
      integrated exactly in time (it is circulant, diagonal in Fourier space), so large
      ``nu`` costs no extra sub-steps. It keeps the cell mean exactly and obeys the
      maximum principle.

    The cell sum is conserved to round-off and ``int u^2`` does not increase.

Parameters ``theta`` (4 values; box from :func:`burgers1d_space`)
    ``(nu, a1, a2, phi)``: ``nu`` in ``[1e-3, 1]`` (log-uniform), ``a1`` in ``[0.2, 1]``,
    ``a2`` in ``[-0.5, 0.5]``, ``phi`` in ``[0, 2 pi]``.

Samples (autoregressive; ``n_steps`` per run, step ``dt_out = t_end / n_steps``)
    ``x``: float32 ``(2, nx)`` = ``[u(t_k), log10(nu) * ones(nx)]``;
    ``y``: float32 ``(1, nx)`` = ``u(t_{k+1})``, for ``k = 0 .. n_steps - 1``.

Where code runs: ``__call__`` in a solver sandbox process (``_transport.runner``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from lightning_online.solvers._common import Periodic1D, check_theta

__all__ = ["Burgers1D", "burgers1d_space"]

_NAMES = ("nu", "a1", "a2", "phi")


def burgers1d_space() -> tuple[list[float], list[float], tuple[str, ...], tuple[bool, ...]]:
    """Parameter box of :class:`Burgers1D` as ``(low, high, names, log)``."""
    return (
        [1e-3, 0.2, -0.5, 0.0],
        [1.0, 1.0, 0.5, 2.0 * np.pi],
        _NAMES,
        (True, False, False, False),
    )


@dataclass(frozen=True)
class Burgers1D(Periodic1D):
    """Finite-volume solver of the viscous Burgers equation (see the module docstring).

    Args:
        nx: number of cells.
        n_steps: output steps (= samples) per run.
        t_end: final time.
        cfl: convective Courant number of the sub-steps (``<= 0.5`` for the TVD bound).
    """

    nx: int = 128
    n_steps: int = 50
    t_end: float = 2.0
    cfl: float = 0.4

    def __post_init__(self) -> None:
        if self.nx < 4 or self.n_steps < 1:
            raise ValueError("need nx >= 4 and n_steps >= 1")
        if not self.t_end > 0:
            raise ValueError(f"t_end must be > 0, got {self.t_end}")
        if not 0 < self.cfl <= 0.5:
            raise ValueError(f"cfl must be in (0, 0.5], got {self.cfl}")

    n_params = 4
    names = _NAMES
    _COEFFICIENT = "viscosity nu"

    def grid(self) -> np.ndarray:
        """Cell centres ``(i + 1/2) / nx``."""
        return (np.arange(self.nx) + 0.5) / self.nx

    def initial_condition(self, theta: np.ndarray) -> np.ndarray:
        """Exact cell averages of ``a1 sin(2 pi x + phi) + a2 sin(4 pi x)``."""
        _, a1, a2, phi = check_theta(theta, self.n_params, self.names)
        x, h = self.grid(), 1.0 / self.nx

        def sinc(k: float) -> float:  # average of sin(k x + c) over a cell / value at centre
            return np.sin(0.5 * k * h) / (0.5 * k * h)

        k1, k2 = 2.0 * np.pi, 4.0 * np.pi
        return a1 * sinc(k1) * np.sin(k1 * x + phi) + a2 * sinc(k2) * np.sin(k2 * x)

    def simulate(self, u0: np.ndarray, nu: float) -> np.ndarray:
        """Trajectory from cell averages ``u0`` (shape ``(nx,)``): ``(n_steps + 1, nx)`` float64."""
        return self._simulate(u0, nu)

    def _check_coefficient(self, nu: float) -> None:
        if not nu > 0:
            raise ValueError(f"nu must be > 0, got {nu}")

    def _trajectory(self, u0: np.ndarray, nu: float) -> Iterator[np.ndarray]:
        """Yield ``u(t_k)`` for ``k = 1 .. n_steps`` (fresh float64 arrays)."""
        nx, h = self.nx, 1.0 / self.nx
        u = u0.copy()
        # Eigenvalues of the periodic 3-point Laplacian (negated), for rfft modes m.
        lam = (2.0 * nx * np.sin(np.pi * np.arange(nx // 2 + 1) / nx)) ** 2
        dt_out = self.t_end / self.n_steps
        for _ in range(self.n_steps):
            remaining = dt_out
            while remaining > 0.0:
                umax = float(np.max(np.abs(u)))
                dt = remaining if umax == 0.0 else min(remaining, self.cfl * h / umax)
                if remaining - dt < 1e-9 * dt_out:  # avoid a sliver of a last sub-step
                    dt = remaining
                remaining -= dt
                half = np.exp(-0.5 * nu * dt * lam)
                u = np.fft.irfft(np.fft.rfft(u) * half, n=nx)
                u1 = u + dt * _convection(u, h)
                u = 0.5 * (u + u1 + dt * _convection(u1, h))
                u = np.fft.irfft(np.fft.rfft(u) * half, n=nx)
            yield u.copy()


def _convection(u: np.ndarray, h: float) -> np.ndarray:
    """``-(F_{i+1/2} - F_{i-1/2}) / h``: MUSCL (MC limiter) + Godunov flux of ``u^2 / 2``."""
    d_left = u - np.roll(u, 1)
    d_right = np.roll(u, -1) - u
    slope = np.minimum(
        np.minimum(2.0 * np.abs(d_left), 2.0 * np.abs(d_right)), 0.5 * np.abs(d_left + d_right)
    )
    slope *= np.sign(d_left) * (d_left * d_right > 0)
    u_minus = u + 0.5 * slope  # left state at i+1/2
    u_plus = np.roll(u - 0.5 * slope, -1)  # right state at i+1/2
    a = np.maximum(u_minus, 0.0)
    b = np.minimum(u_plus, 0.0)
    flux = 0.5 * np.maximum(a * a, b * b)  # exact Godunov flux for a convex flux with f'(0) = 0
    return (np.roll(flux, 1) - flux) / h
