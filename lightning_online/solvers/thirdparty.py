"""Wrapping a solver you did not write: py-pde and scikit-fem examples (optional extra ``bench``).

Each class is an ordinary picklable solver: ``solver(theta)`` yields one training sample per
output time, ``x = [theta..., t]`` (float32 ``(d + 1,)``) and ``y`` the field at that time
(float32), the Melissa heat-pde layout (an MLP maps parameters and time to the whole field).
``trajectory(theta)`` returns the ``(n_out, n_field)`` float64 fields (used by the steering
suite, ``benchmarks/steering_suite.py``). What the wrappers show:

* **compile once per process**: py-pde compiles the right-hand side and the time stepper with
  numba (about 20 s); building a ``pde.PDE`` per run recompiles for every run (5-10 s each).
  The parameters are therefore carried as constant *fields* of the state (their rate is 0), so
  one compiled stepper serves every parameter value; it is built at the first run in each
  process and kept in a module-level cache (the solver object itself stays picklable);
* **assemble what does not depend on the parameters once**: scikit-fem's mesh, basis and the
  mass and stiffness matrices of each material region are built once per process; a run only
  combines them and factorises one sparse matrix;
* **the third-party import inside the solver**: ``import pde`` / ``import skfem`` happen when a
  run starts, in the solver's process, so the package imports without them
  (``pip install lightning-online[bench]`` installs them).

Where code runs: ``__call__``/``trajectory`` in a solver sandbox process
(``_transport.runner``), or in the benchmark's process.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from lightning_online.solvers._common import check_theta

__all__ = ["Brusselator1D", "GrayScott1D", "HeatChannel2D"]

_CACHE: dict[tuple[Any, ...], Any] = {}  # per process: compiled steppers, assembled matrices


def _samples(theta: np.ndarray, times: np.ndarray, fields: np.ndarray) -> Iterator[Any]:
    for t, f in zip(times, fields, strict=True):
        yield np.append(theta, t).astype(np.float32), f.astype(np.float32)


class _Solver:
    n_params: ClassVar[int]
    names: ClassVar[tuple[str, ...]]
    n_out: int

    def trajectory(self, theta: Any) -> np.ndarray:
        raise NotImplementedError

    def times(self) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, theta: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        th = check_theta(theta, self.n_params, self.names)
        return _samples(th, self.times(), self.trajectory(th))


@dataclass(frozen=True)
class _ReactionDiffusion1D(_Solver):
    """Two species on a periodic line, solved by py-pde's explicit (Euler) stepper."""

    nx: int = 64
    length: float = 100.0
    t_end: float = 1000.0
    dt: float = 0.25
    n_out: int = 10

    n_params = 2
    _RATES: ClassVar[tuple[str, str]] = ("", "")

    def times(self) -> np.ndarray:
        return self.t_end * np.arange(1, self.n_out + 1) / self.n_out

    def _initial(self, grid: Any, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def trajectory(self, theta: Any) -> np.ndarray:
        import pde  # the third-party solver, imported where it runs

        th = check_theta(theta, self.n_params, self.names)
        key = (type(self).__name__, self.nx, self.length, self.dt)
        grid = pde.CartesianGrid([(0.0, self.length)], [self.nx], periodic=True)
        u0, v0 = self._initial(grid, th)
        fields = [pde.ScalarField(grid, u0), pde.ScalarField(grid, v0)]
        fields += [pde.ScalarField(grid, float(p)) for p in th]
        state = pde.FieldCollection(fields)
        if key not in _CACHE:  # compiled on a real state (a constant one gave a no-op stepper)
            eq = pde.PDE({"u": self._RATES[0], "v": self._RATES[1], "p": "0", "q": "0"})
            solver = pde.ExplicitSolver(eq, backend="numba")
            _CACHE[key] = solver.make_stepper(state.copy(), dt=self.dt)
        stepper = _CACHE[key]
        out, t = [], 0.0
        for t_next in self.times():
            t = stepper(state, t, float(t_next))
            out.append(state[1].data.copy())
        arr = np.array(out)
        if not np.all(np.isfinite(arr)):
            raise FloatingPointError(f"{type(self).__name__} diverged at theta={th}")
        return arr


@dataclass(frozen=True)
class GrayScott1D(_ReactionDiffusion1D):
    """Gray-Scott on a periodic line across its pattern-forming transition (py-pde).

    ``u_t = u_xx - u v^2 + F (1 - u)``, ``v_t = 0.5 v_xx + u v^2 - (F + k) v``; a pulse of
    ``v`` at the centre. Over ``theta = (F, k)`` in ``[0.01, 0.07] x [0.045, 0.07]``
    (:meth:`space`) the pulse dies out (large ``k``: an easy, decaying field), stands, or splits
    into a train of self-replicating pulses (a band of the box: the hard part). The field
    returned is ``v`` at ``n_out`` times.
    """

    _RATES = ("laplace(u) - u*v**2 + p*(1-u)", "0.5*laplace(v) + u*v**2 - (p+q)*v")
    names = ("F", "k")

    @staticmethod
    def space() -> tuple[list[float], list[float], tuple[str, ...], tuple[bool, ...]]:
        return [0.01, 0.045], [0.07, 0.07], ("F", "k"), (False, False)

    def _initial(self, grid: Any, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = grid.axes_coords[0]
        bump = np.exp(-((x - 0.5 * self.length) ** 2) / 20.0)
        return 1.0 - 0.5 * bump, 0.5 * bump


@dataclass(frozen=True)
class Brusselator1D(_ReactionDiffusion1D):
    """The Brusselator on a periodic line across its Turing instability (py-pde).

    ``u_t = u_xx + a - (b + 1) u + u^2 v``, ``v_t = 8 v_xx + b u - u^2 v`` from the steady
    state ``(a, b / a)`` plus a fixed small perturbation. Over ``theta = (a, b)`` in
    ``[1, 3] x [1, 6]`` (:meth:`space`) the perturbation decays below the Turing threshold
    ``b = (1 + a / sqrt(8))^2`` (easy) and grows into a stationary pattern above it (and into
    oscillations above the Hopf line ``b = 1 + a^2``): the hard part is a corner of the box.
    The field returned is ``v - b / a`` at ``n_out`` times.
    """

    length: float = 64.0
    t_end: float = 40.0
    dt: float = 0.005
    _RATES = ("laplace(u) + p - (q + 1)*u + u**2*v", "8*laplace(v) + q*u - u**2*v")
    names = ("a", "b")

    @staticmethod
    def space() -> tuple[list[float], list[float], tuple[str, ...], tuple[bool, ...]]:
        return [1.0, 1.0], [3.0, 6.0], ("a", "b"), (False, False)

    def _initial(self, grid: Any, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, b = theta
        noise = np.random.default_rng(7).normal(0.0, 0.05, (2, self.nx))
        return a + noise[0], b / a + noise[1]

    def trajectory(self, theta: Any) -> np.ndarray:
        th = check_theta(theta, self.n_params, self.names)
        return super().trajectory(th) - th[1] / th[0]


@dataclass(frozen=True)
class HeatChannel2D(_Solver):
    """Transient heat in the unit square with a thin conducting channel (scikit-fem, P1).

    ``T_t = div(kappa grad T)`` on ``[0, 1]^2``, ``T = 1`` on the left wall, ``T = 0`` on the
    right, insulated top and bottom, ``T(0) = 0``; ``kappa = 1`` except in a horizontal
    channel of height 1/16 centred at ``y_c`` where ``kappa = 10 ** log_kappa``. Backward Euler,
    ``n_sub`` steps per output. Over ``theta = (log_kappa, y_c)`` in ``[0, 3] x [0.25, 0.75]``
    (:meth:`space`) heat runs along a conducting channel ahead of the rest: a sharp, moving
    front where the contrast is large. The field is ``T`` at a ``probes x probes`` grid of
    points at ``n_out`` times.
    """

    refine: int = 4
    t_end: float = 0.2
    n_out: int = 10
    n_sub: int = 2
    probes: int = 8

    n_params = 2
    names = ("log_kappa", "y_c")

    @staticmethod
    def space() -> tuple[list[float], list[float], tuple[str, ...], tuple[bool, ...]]:
        return [0.0, 0.25], [3.0, 0.75], ("log_kappa", "y_c"), (False, False)

    def times(self) -> np.ndarray:
        return self.t_end * np.arange(1, self.n_out + 1) / self.n_out

    def _assembled(self) -> dict[str, Any]:
        key = ("HeatChannel2D", self.refine, self.probes)
        if key not in _CACHE:
            import skfem
            from skfem.models.poisson import mass

            mesh = skfem.MeshTri.init_sqsymmetric().refined(self.refine)
            basis = skfem.Basis(mesh, skfem.ElementTriP1())
            left = basis.get_dofs(lambda x: np.isclose(x[0], 0.0)).all()
            right = basis.get_dofs(lambda x: np.isclose(x[0], 1.0)).all()
            g = np.linspace(0.5 / self.probes, 1 - 0.5 / self.probes, self.probes)
            px, py = np.meshgrid(g, g)
            probe = basis.probes(np.vstack([px.ravel(), py.ravel()]))
            _CACHE[key] = {
                "skfem": skfem,
                "basis": basis,
                "M": mass.assemble(basis),
                "left": left,
                "right": right,
                "probe": probe,
            }
        return _CACHE[key]

    def trajectory(self, theta: Any) -> np.ndarray:
        from scipy.sparse.linalg import splu

        th = check_theta(theta, self.n_params, self.names)
        a = self._assembled()
        skfem = a["skfem"]
        log_kappa, y_c = th

        @skfem.BilinearForm
        def conduct(u: Any, v: Any, w: Any) -> Any:
            kappa = np.where(np.abs(w.x[1] - y_c) < 1.0 / 32.0, 10.0**log_kappa, 1.0)
            return kappa * skfem.helpers.dot(skfem.helpers.grad(u), skfem.helpers.grad(v))

        K = conduct.assemble(a["basis"])
        dt = self.t_end / (self.n_out * self.n_sub)
        A = (a["M"] + dt * K).tolil()
        fixed = np.concatenate([a["left"], a["right"]])
        temp = np.zeros(a["basis"].N)
        temp[a["left"]] = 1.0
        for i in fixed:  # Dirichlet rows: identity
            A.rows[i], A.data[i] = [i], [1.0]
        lu = splu(A.tocsc())
        out = []
        for _ in range(self.n_out):
            for _ in range(self.n_sub):
                rhs = a["M"] @ temp
                rhs[fixed] = temp[fixed]
                temp = lu.solve(rhs)
            out.append(a["probe"] @ temp)
        return np.array(out)
