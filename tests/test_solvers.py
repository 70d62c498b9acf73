"""Numerical and interface tests of the plain-numpy solvers in ``lightning_online.solvers``."""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import expm_multiply

from lightning_online.solvers import (
    AllenCahn1D,
    Burgers1D,
    Heat2D,
    allen_cahn1d_space,
    burgers1d_space,
    heat2d_space,
)
from lightning_online.solvers.allen_cahn1d import allen_cahn_ode_solution
from lightning_online.solvers.heat2d import laplace_square_steady_state

HEAT_THETA = np.array([300.0, 100.0, 500.0, 200.0, 400.0])
BURGERS_THETA = np.array([1e-2, 0.8, 0.3, 1.0])
AC_THETA = np.array([1e-4, 1.0, 0.0])  # the classical case


def _fields(samples: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    return np.stack([y for _, y in samples])


# --------------------------------------------------------------------------- common interface

SOLVERS = [
    pytest.param(Heat2D(), HEAT_THETA, heat2d_space(), id="heat2d"),
    pytest.param(Burgers1D(), BURGERS_THETA, burgers1d_space(), id="burgers1d"),
    pytest.param(AllenCahn1D(), AC_THETA, allen_cahn1d_space(), id="allen_cahn1d"),
]


@pytest.mark.parametrize(("solver", "theta", "space"), SOLVERS)
def test_wrong_theta_raises_eagerly(solver, theta, space) -> None:
    n = len(theta)
    for bad in (theta[:-1], np.append(theta, 1.0), theta[None, :], np.float64(theta[0])):
        with pytest.raises(ValueError, match="theta"):
            solver(bad)  # raised by the call itself, before iterating
    bad = theta.copy()
    bad[-1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        solver(bad)
    assert solver.n_params == n == len(space[0])


@pytest.mark.parametrize(("solver", "theta", "space"), SOLVERS)
def test_pickle_round_trip_same_samples(solver, theta, space) -> None:
    clone = pickle.loads(pickle.dumps(solver))
    assert clone == solver
    a, b = list(solver(theta)), list(clone(theta))
    assert len(a) == len(b) == solver.n_steps
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


@pytest.mark.parametrize(("solver", "theta", "space"), SOLVERS)
def test_sample_layout(solver, theta, space) -> None:
    samples = list(solver(list(theta)))  # any sequence is accepted
    assert len(samples) == solver.n_steps
    for x, y in samples:
        assert x.dtype == np.float32 and y.dtype == np.float32
        assert x.shape == solver.x_shape and y.shape == solver.y_shape
        assert np.all(np.isfinite(x)) and np.all(np.isfinite(y))


@pytest.mark.parametrize(("solver", "theta", "space"), SOLVERS)
def test_space_contains_reference_theta(solver, theta, space) -> None:
    low, high, names = space[:3]
    assert len(low) == len(high) == len(names) == solver.n_params
    assert tuple(names) == tuple(solver.names)
    assert np.all(np.asarray(low) < np.asarray(high))
    assert np.all(np.asarray(low) <= theta) and np.all(theta <= np.asarray(high))
    if len(space) == 4:
        log = space[3]
        assert len(log) == solver.n_params and log[0] is True
        assert np.asarray(low)[list(log)].min() > 0


# --------------------------------------------------------------------------- heat 2-D


def test_heat2d_space() -> None:
    low, high, names = heat2d_space()
    assert low == [100.0] * 5 and high == [500.0] * 5
    assert names == ("T0", "T_left", "T_right", "T_bottom", "T_top")


def test_heat2d_samples_inputs_and_normalisation() -> None:
    solver = Heat2D(nx=16, ny=12, n_steps=20)
    samples = list(solver(HEAT_THETA))
    xs = np.stack([x for x, _ in samples])
    np.testing.assert_allclose(xs[:, :5], np.tile(HEAT_THETA / 500.0, (20, 1)), rtol=1e-6)
    t = xs[:, 5]
    assert np.all(np.diff(t) > 0) and t[0] > 0 and t[-1] == pytest.approx(1.0)
    np.testing.assert_allclose(t, np.arange(1, 21) / 20, rtol=1e-6)
    ys = _fields(samples)
    assert ys.shape == (20, 12 * 16)
    # Maximum principle: the field stays within the range of the data.
    assert ys.min() >= 100.0 / 500.0 - 1e-6 and ys.max() <= 500.0 / 500.0 + 1e-6

    raw = list(Heat2D(nx=16, ny=12, n_steps=20, normalize=None)(HEAT_THETA))
    np.testing.assert_allclose(raw[3][0][:5], HEAT_THETA, rtol=1e-6)
    np.testing.assert_allclose(raw[3][1], samples[3][1] * 500.0, rtol=1e-5)


def test_heat2d_time_step_and_horizon() -> None:
    assert Heat2D().t_final == pytest.approx(0.2)
    assert Heat2D(alpha=2.0).t_final == pytest.approx(0.1)
    assert Heat2D(t_end=0.5).t_final == 0.5
    solver = Heat2D()
    dt = solver.t_final / solver.n_steps / solver.substeps
    assert dt <= (1.0 / 33) ** 2 / 4.0
    with pytest.raises(ValueError):
        Heat2D(alpha=0.0)


def test_heat2d_equal_walls_converge_to_wall_temperature() -> None:
    theta = np.array([120.0, 430.0, 430.0, 430.0, 430.0])
    solver = Heat2D(nx=24, ny=24, n_steps=10, t_end=1.0, normalize=None)
    ys = _fields(list(solver(theta)))
    np.testing.assert_allclose(ys[-1], 430.0, atol=1e-3)
    # Monotone approach from below (uniformly heated from the walls).
    assert np.all(np.diff(ys.min(axis=1)) >= 0)


def test_heat2d_matches_analytic_laplace_steady_state() -> None:
    solver = Heat2D(n_steps=10, t_end=1.0, normalize=None)  # exp(-2 pi^2) ~ 3e-9 of transient
    field = _fields(list(solver(HEAT_THETA)))[-1].reshape(solver.ny, solver.nx)
    exact = solver.steady_state(HEAT_THETA)
    X, Y = solver.grid()
    corner_dist = np.hypot(np.minimum(X, 1.0 - X), np.minimum(Y, 1.0 - Y))
    err = np.abs(field - exact)
    span = 400.0  # range of the wall temperatures
    assert err[corner_dist > 0.15].max() < 0.005 * span
    assert err.max() < 0.01 * span
    # The series itself: wall values and symmetry.
    assert laplace_square_steady_state(0.5, 0.5, 1.0, 1.0, 1.0, 1.0) == pytest.approx(
        1.0, abs=1e-12
    )
    assert laplace_square_steady_state(0.5, 0.5, 0.0, 0.0, 1.0, 0.0) == pytest.approx(
        0.25, abs=1e-12
    )
    assert laplace_square_steady_state(0.5, 1e-3, 0.0, 0.0, 1.0, 0.0) == pytest.approx(
        1.0, abs=0.01
    )


def test_heat2d_transient_matches_semi_discrete_exponential() -> None:
    """Forward Euler against the exact time integration of the same 5-point system."""
    nx, ny, alpha = 12, 10, 1.0
    hx, hy = 1.0 / (nx + 1), 1.0 / (ny + 1)

    def lap1d(n: int, h: float) -> sp.csr_matrix:
        return sp.diags([1.0, -2.0, 1.0], [-1, 0, 1], shape=(n, n)) / h**2

    lap = sp.kron(sp.identity(ny), lap1d(nx, hx)) + sp.kron(lap1d(ny, hy), sp.identity(nx))
    t0, left, right, bottom, top = HEAT_THETA
    b = np.zeros((ny, nx))
    b[:, 0] += left / hx**2
    b[:, -1] += right / hx**2
    b[0, :] += bottom / hy**2
    b[-1, :] += top / hy**2
    # u' = alpha (L u + b): augment with a constant state to use expm_multiply.
    n = nx * ny
    a = sp.bmat(
        [[alpha * lap, alpha * sp.csr_matrix(b.reshape(n, 1))], [None, sp.csr_matrix((1, 1))]]
    )
    u0 = np.append(np.full(n, t0), 1.0)
    errors = []
    for safety in (0.9, 0.45):
        solver = Heat2D(nx=nx, ny=ny, n_steps=8, alpha=alpha, normalize=None, safety=safety)
        ys = _fields(list(solver(HEAT_THETA)))
        errors.append(
            [
                np.abs(ys[k - 1] - expm_multiply(a * (k * solver.t_final / 8), u0)[:n]).max()
                for k in (1, 4, 8)
            ]
        )
    errors = np.array(errors)
    span = 400.0
    assert errors[0, 0] < 0.01 * span  # steep initial layers: the largest time error
    assert errors[0, 1] < 0.001 * span and errors[0, 2] < 1e-5 * span
    np.testing.assert_allclose(errors[0] / errors[1], 2.0, rtol=0.1)  # first order in time


# --------------------------------------------------------------------------- Burgers 1-D


def test_burgers1d_space() -> None:
    low, high, names, log = burgers1d_space()
    assert (
        low[0] == 1e-3
        and high[0] == 1.0
        and names[0] == "nu"
        and log == (True, False, False, False)
    )


def test_burgers1d_autoregressive_layout() -> None:
    solver = Burgers1D(nx=64, n_steps=10)
    samples = list(solver(BURGERS_THETA))
    for x, _ in samples:
        np.testing.assert_allclose(x[1], np.log10(BURGERS_THETA[0]), rtol=1e-6)
    for (_, y), (x_next, _) in itertools.pairwise(samples):
        np.testing.assert_array_equal(y[0], x_next[0])
    u0 = solver.initial_condition(BURGERS_THETA)
    np.testing.assert_array_equal(samples[0][0][0], u0.astype(np.float32))
    _, a1, a2, phi = BURGERS_THETA
    x = solver.grid()
    point = a1 * np.sin(2 * np.pi * x + phi) + a2 * np.sin(4 * np.pi * x)
    np.testing.assert_allclose(u0, point, atol=(4 * np.pi / 64) ** 2 / 24 * 1.5)
    with pytest.raises(ValueError, match="nu"):
        solver(np.array([0.0, 0.5, 0.0, 0.0]))


def test_burgers1d_conservation_energy_and_tvd() -> None:
    solver = Burgers1D()
    x = solver.grid()
    u0 = 0.3 + np.sin(2 * np.pi * x) + 0.5 * np.cos(6 * np.pi * x + 0.4)
    for nu in (1e-3, 3e-2, 1.0):
        traj = solver.simulate(u0, nu)
        assert traj.shape == (solver.n_steps + 1, solver.nx)
        mean = traj.mean(axis=1)
        assert np.abs(mean - mean[0]).max() < 1e-10 * abs(mean[0])
        energy = np.sum((traj - mean[0]) ** 2, axis=1)  # the Galilean-shifted energy also decays
        assert np.all(np.diff(np.sum(traj**2, axis=1)) <= 1e-12)
        assert np.all(np.diff(energy) <= 1e-12)
        tv = np.abs(np.diff(traj, axis=1, append=traj[:, :1])).sum(axis=1)
        assert np.all(np.diff(tv) <= 1e-10)
        assert np.abs(traj).max() <= np.abs(u0).max() + 1e-12


def test_burgers1d_linear_regime_sine_decay() -> None:
    solver = Burgers1D()
    x = solver.grid()
    mode = np.sin(2 * np.pi * x)
    for nu in (1e-2, 5e-2):
        traj = solver.simulate(1e-5 * mode, nu)
        amp = traj @ mode
        t = np.linspace(0.0, solver.t_end, solver.n_steps + 1)
        np.testing.assert_allclose(amp / amp[0], np.exp(-nu * (2 * np.pi) ** 2 * t), rtol=1e-3)


def _cole_hopf(x: np.ndarray, t: float, nu: float, a: float = 1.5, b: float = 1.0) -> np.ndarray:
    """Exact solution from phi = a + b exp(-4 pi^2 nu t) cos(2 pi x), u = -2 nu phi_x / phi."""
    e = b * np.exp(-4.0 * np.pi**2 * nu * t)
    return 4.0 * np.pi * nu * e * np.sin(2 * np.pi * x) / (a + e * np.cos(2 * np.pi * x))


def test_burgers1d_cole_hopf_exact_solution() -> None:
    nu = 0.05
    errors = []
    for nx in (64, 128):
        solver = Burgers1D(nx=nx, n_steps=10, t_end=1.0)
        fine = (np.arange(nx * 32) + 0.5) / (nx * 32)
        u0 = _cole_hopf(fine, 0.0, nu).reshape(nx, 32).mean(axis=1)  # cell averages
        traj = solver.simulate(u0, nu)
        x = solver.grid()
        err = max(
            np.abs(traj[k] - _cole_hopf(x, k * solver.t_end / solver.n_steps, nu)).max()
            for k in range(1, solver.n_steps + 1)
        )
        errors.append(err)
    assert errors[1] < 1e-3 * np.abs(u0).max()
    assert errors[0] / errors[1] > 2.5  # second order in space


# --------------------------------------------------------------------------- Allen-Cahn 1-D


def test_allen_cahn1d_space() -> None:
    low, high, names, log = allen_cahn1d_space()
    assert low[0] == 1e-4 and high[0] == 1e-2 and names[0] == "D" and log == (True, False, False)


def test_allen_cahn1d_layout_and_classical_ic() -> None:
    solver = AllenCahn1D(n_steps=10)
    samples = list(solver(AC_THETA))
    x = solver.grid()
    np.testing.assert_allclose(samples[0][0][0], x**2 * np.cos(np.pi * x), atol=1e-7)
    for xs, _ in samples:
        np.testing.assert_allclose(xs[1], -4.0, rtol=1e-6)
    for (_, y), (x_next, _) in itertools.pairwise(samples):
        np.testing.assert_array_equal(y[0], x_next[0])
    with pytest.raises(ValueError, match="D"):
        solver(np.array([0.0, 1.0, 0.0]))


@pytest.mark.parametrize("c", [-0.7, -0.05, 0.3, 0.999, 1.6])
def test_allen_cahn1d_constant_state_follows_ode(c: float) -> None:
    solver = AllenCahn1D(nx=64)
    ys = _fields(list(solver(np.array([1e-3, 0.0, c]))))[:, 0, :]
    assert np.ptp(ys, axis=1).max() < 1e-6
    t = np.arange(1, solver.n_steps + 1) * solver.t_end / solver.n_steps
    np.testing.assert_allclose(ys[:, 0], allen_cahn_ode_solution(c, t), atol=1e-6)
    traj = solver.simulate(np.full(solver.nx, c), 1e-3)  # float64 path: much tighter
    exact = allen_cahn_ode_solution(c, np.concatenate([[0.0], t]))
    assert np.abs(traj - exact[:, None]).max() < 1e-8


def test_allen_cahn1d_linear_regime_modes() -> None:
    solver = AllenCahn1D(nx=64)
    x = solver.grid()
    D = 5e-3
    for m in (1, 3, 8):
        traj = solver.simulate(1e-7 * np.cos(m * np.pi * x), D)
        amp = traj @ np.cos(m * np.pi * x)
        t = np.linspace(0.0, solver.t_end, solver.n_steps + 1)
        np.testing.assert_allclose(
            amp / amp[0], np.exp((5.0 - D * (m * np.pi) ** 2) * t), rtol=1e-6
        )


def test_allen_cahn1d_classical_bounded_metastable_and_converged() -> None:
    solver = AllenCahn1D()
    traj = solver.simulate(solver.initial_condition(AC_THETA), AC_THETA[0])
    assert np.abs(traj).max() <= 1.0 + 1e-6
    # Even initial data stays even: u(x_j) = u(x_{-j}).
    np.testing.assert_allclose(traj[:, 1:], traj[:, :0:-1], atol=1e-10)
    final = traj[-1]
    assert (np.abs(final) > 0.95).mean() > 0.7  # plateaus at +-1 separated by thin interfaces
    assert final.min() < -0.99 and final.max() > 0.99
    assert np.all(final[np.abs(solver.grid()) > 0.7] < -0.99)
    # Against a finer run in space and time.
    fine = AllenCahn1D(nx=4 * solver.nx, dt_max=5e-4)
    ref = fine.simulate(fine.initial_condition(AC_THETA), AC_THETA[0])
    assert np.abs(traj - ref[:, ::4]).max() < 5e-3


# Values computed before the 1-D solvers moved their shared code into solvers._common.Periodic1D
# (bit for bit the same there with the same numpy; here to 1e-12, across numpy's FFTs).
@pytest.mark.parametrize(
    ("solver", "theta", "last_four", "last_sum", "feature"),
    [
        (
            Burgers1D(nx=16, n_steps=4),
            [0.01, 0.7, 0.2, 1.0],
            [0.06909295171499252, 0.09565716236829758, 0.119387686252594, 0.13389752805233002],
            -7.450580596923828e-09,
            -2.0,
        ),
        (
            AllenCahn1D(nx=16, n_steps=4),
            [1e-3, 1.0, 0.1],
            [-1.0019450187683105, -0.997586190700531, -1.0040048360824585, -0.9683386087417603],
            2.007216453552246,
            -3.0,
        ),
    ],
    ids=["burgers1d", "allen_cahn1d"],
)
def test_the_1d_solvers_yield_what_they_yielded_before_sharing_a_base(
    solver, theta, last_four, last_sum, feature
):
    samples = list(solver(np.array(theta)))
    assert len(samples) == 4
    x, y = samples[-1]
    assert x.shape == (2, 16) and y.shape == (1, 16) and x.dtype == y.dtype == np.float32
    np.testing.assert_allclose(y[0, :4], last_four, rtol=1e-6)
    assert float(y.sum()) == pytest.approx(last_sum, abs=1e-6)
    assert samples[0][0][1, 0] == feature
    # simulate keeps its public argument names, and its own check of the coefficient
    name = "nu" if isinstance(solver, Burgers1D) else "D"
    traj = solver.simulate(u0=solver.initial_condition(np.array(theta)), **{name: theta[0]})
    np.testing.assert_array_equal(traj[-1].astype(np.float32), y[0])
    with pytest.raises(ValueError, match=f"{name} must be"):
        solver.simulate(np.zeros(16), -1.0)
