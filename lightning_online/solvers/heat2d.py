"""2-D heat equation on the unit square (the Melissa ``heat-pde`` use case).

PDE
    ``u_t = alpha * (u_xx + u_yy)`` on ``(0, 1)^2``, ``0 < t <= t_end``, with
    constant Dirichlet temperatures on the four walls and a constant initial
    temperature in the interior.

Discretisation
    Vertex-centred grid of ``nx * ny`` interior nodes ``x_i = (i + 1) hx``,
    ``y_j = (j + 1) hy`` with ``hx = 1 / (nx + 1)``, ``hy = 1 / (ny + 1)``; the wall
    nodes carry the Dirichlet data (corner nodes are never used). 5-point Laplacian,
    forward Euler with a fixed sub-step ``dt = safety * dt_max`` (rounded down so that an
    integer number of sub-steps makes one output step), where
    ``dt_max = 1 / (2 alpha (1/hx^2 + 1/hy^2))`` (``= h^2 / (4 alpha)`` for a square grid)
    is the stability limit. The scheme then satisfies the discrete maximum principle.

Parameters ``theta`` (5 values, Melissa uses the box ``[100, 500]^5``)
    ``(T0, T_left, T_right, T_bottom, T_top)``: initial interior temperature, then the
    temperatures of the walls ``x = 0``, ``x = 1``, ``y = 0``, ``y = 1``.

Samples (one per output step, ``n_steps`` per run, yielded after the step is taken)
    ``x``: float32 ``(6,)`` = ``[theta / scale..., t / t_final]``;
    ``y``: float32 ``(ny * nx,)`` = field at time ``t`` divided by ``scale``, flattened in
    C order from the ``(ny, nx)`` array ``u[j, i] = u(x_i, y_j)`` (``y`` is the slow index).
    ``scale`` is ``normalize`` (default 500, the top of the Melissa box, so inputs and
    targets lie in ``[0.2, 1]``), or 1 when ``normalize`` is ``None``.

Where code runs: ``__call__`` in a solver sandbox process (``_transport.runner``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from lightning_online.solvers._common import check_theta

__all__ = ["Heat2D", "heat2d_space", "laplace_square_steady_state"]

_NAMES = ("T0", "T_left", "T_right", "T_bottom", "T_top")

#: Default horizon for ``alpha = 1``: the slowest mode decays like ``exp(-2 pi^2 alpha t)``,
#: i.e. to about 2 % of its initial amplitude at ``t = 0.2 / alpha``.
DEFAULT_T_END_TIMES_ALPHA = 0.2


def heat2d_space() -> tuple[list[float], list[float], tuple[str, ...]]:
    """Parameter box of :class:`Heat2D` as ``(low, high, names)`` (Melissa's ``[100, 500]^5``)."""
    return [100.0] * 5, [500.0] * 5, _NAMES


def laplace_square_steady_state(
    x: np.ndarray,
    y: np.ndarray,
    left: float,
    right: float,
    bottom: float,
    top: float,
    n_terms: int = 2000,
) -> np.ndarray:
    """Analytic solution of Laplace's equation on ``(0, 1)^2`` with constant wall values.

    Superposition of the four one-wall problems, e.g. for the bottom wall ``y = 0`` at
    temperature ``T``: ``sum_{n odd} 4 T / (n pi) sin(n pi x) sinh(n pi (1 - y)) / sinh(n pi)``.
    ``x`` and ``y`` broadcast together; the first ``n_terms`` odd modes are summed. The series
    converges like ``exp(-n pi d) / n`` at distance ``d`` from the walls (slowly near them).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x, y = np.broadcast_arrays(x, y)
    n = (2 * np.arange(n_terms) + 1).astype(np.float64)
    coef = 4.0 / (n * np.pi)
    out = np.zeros(x.shape, dtype=np.float64)
    xf, yf = x.reshape(-1, 1), y.reshape(-1, 1)

    def sinh_ratio(s: np.ndarray) -> np.ndarray:
        # sinh(n pi s) / sinh(n pi) for s in [0, 1], without overflow.
        a, b = n * np.pi * s, n * np.pi
        return np.exp(a - b) * (-np.expm1(-2.0 * a)) / (-np.expm1(-2.0 * b))

    for value, along, across in (
        (left, yf, 1.0 - xf),
        (right, yf, xf),
        (bottom, xf, 1.0 - yf),
        (top, xf, yf),
    ):
        if value != 0.0:
            terms = coef * np.sin(n * np.pi * along) * sinh_ratio(across)
            out += value * terms.sum(axis=1).reshape(x.shape)
    return out


@dataclass(frozen=True)
class Heat2D:
    """Explicit finite-difference solver of the 2-D heat equation (see the module docstring).

    Args:
        nx: interior grid nodes in ``x``.
        ny: interior grid nodes in ``y``.
        n_steps: output steps (= samples) per run.
        alpha: diffusivity.
        t_end: final time; ``None`` means ``0.2 / alpha`` (see :attr:`t_final`).
        normalize: scale dividing temperatures in the samples; ``None`` for no scaling.
        safety: fraction of the forward-Euler stability limit used as sub-step (``<= 1``).
    """

    nx: int = 32
    ny: int = 32
    n_steps: int = 100
    alpha: float = 1.0
    t_end: float | None = None
    normalize: float | None = 500.0
    safety: float = 0.9

    def __post_init__(self) -> None:
        if self.nx < 1 or self.ny < 1 or self.n_steps < 1:
            raise ValueError("nx, ny and n_steps must be positive")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if self.t_end is not None and not self.t_end > 0:
            raise ValueError(f"t_end must be > 0, got {self.t_end}")
        if self.normalize is not None and not self.normalize > 0:
            raise ValueError(f"normalize must be > 0 or None, got {self.normalize}")
        if not 0 < self.safety <= 1:
            raise ValueError(f"safety must be in (0, 1], got {self.safety}")

    n_params = 5
    names = _NAMES

    @property
    def t_final(self) -> float:
        """Final time: ``t_end`` or, when it is ``None``, ``0.2 / alpha``."""
        if self.t_end is not None:
            return float(self.t_end)
        return DEFAULT_T_END_TIMES_ALPHA / self.alpha

    @property
    def scale(self) -> float:
        """Divisor applied to temperatures in the samples."""
        return 1.0 if self.normalize is None else float(self.normalize)

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (self.n_params + 1,)

    @property
    def y_shape(self) -> tuple[int, ...]:
        return (self.ny * self.nx,)

    @property
    def substeps(self) -> int:
        """Forward-Euler sub-steps per output step."""
        hx, hy = 1.0 / (self.nx + 1), 1.0 / (self.ny + 1)
        dt_max = 1.0 / (2.0 * self.alpha * (1.0 / hx**2 + 1.0 / hy**2))
        dt_out = self.t_final / self.n_steps
        return max(1, int(np.ceil(dt_out / (self.safety * dt_max))))

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates ``(X, Y)`` of the interior nodes, each of shape ``(ny, nx)``."""
        x = np.arange(1, self.nx + 1) / (self.nx + 1)
        y = np.arange(1, self.ny + 1) / (self.ny + 1)
        return np.meshgrid(x, y, indexing="xy")

    def steady_state(self, theta: np.ndarray, n_terms: int = 2000) -> np.ndarray:
        """Analytic (continuum) steady state at the interior nodes, shape ``(ny, nx)``.

        Not normalised. Uses :func:`laplace_square_steady_state`; ``theta[0]`` is irrelevant.
        """
        th = check_theta(theta, self.n_params, self.names)
        X, Y = self.grid()
        return laplace_square_steady_state(X, Y, th[1], th[2], th[3], th[4], n_terms=n_terms)

    def __call__(self, theta: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Validate ``theta`` (shape ``(5,)``) and return the sample generator."""
        th = check_theta(theta, self.n_params, self.names)
        return self._run(th)

    def _run(self, th: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        t0, left, right, bottom, top = th
        nx, ny = self.nx, self.ny
        m = self.substeps
        dt_out = self.t_final / self.n_steps
        dt = dt_out / m
        rx = self.alpha * dt * (nx + 1) ** 2
        ry = self.alpha * dt * (ny + 1) ** 2
        rc = 1.0 - 2.0 * rx - 2.0 * ry

        u = np.empty((ny + 2, nx + 2), dtype=np.float64)
        u[1:-1, 1:-1] = t0
        u[1:-1, 0], u[1:-1, -1] = left, right
        u[0, 1:-1], u[-1, 1:-1] = bottom, top
        u[0, 0], u[0, -1] = 0.5 * (left + bottom), 0.5 * (right + bottom)  # unused
        u[-1, 0], u[-1, -1] = 0.5 * (left + top), 0.5 * (right + top)  # unused

        inner = u[1:-1, 1:-1]
        tmp = np.empty((ny, nx), dtype=np.float64)
        scale = self.scale
        x_par = (th / scale).astype(np.float32)
        for k in range(1, self.n_steps + 1):
            for _ in range(m):
                # tmp = rx (E + W) + ry (N + S) + (1 - 2rx - 2ry) C, all from the old field.
                np.add(u[1:-1, 2:], u[1:-1, :-2], out=tmp)
                tmp *= rx
                tmp += ry * (u[2:, 1:-1] + u[:-2, 1:-1])
                tmp += rc * inner
                inner[...] = tmp
            x = np.empty(self.n_params + 1, dtype=np.float32)
            x[:-1] = x_par
            x[-1] = k / self.n_steps
            y = (inner / scale).astype(np.float32).ravel()
            yield x, y
