"""Parameter spaces and samplers that choose the inputs of online solver runs.

Everything here depends only on numpy and scipy, so samplers are plain objects: picklable (they
travel to worker processes), deep-copyable, and checkpointable through ``state_dict`` so that a
resumed run draws exactly the parameters the interrupted one would have drawn.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import qmc

from lightning_online._util.checks import check_optional_int, refuse
from lightning_online._util.seeds import derived_seed

__all__ = [
    "Halton",
    "LatinHypercube",
    "ParameterSpace",
    "Sampler",
    "Uniform",
    "validation_points",
]

# scipy >= 1.15 names the QMC engines' random source ``rng`` (``seed`` is on its way out); we
# always pass a Generator, which both spellings treat the same way.
_QMC_RNG_KW = "rng" if "rng" in inspect.signature(qmc.Halton).parameters else "seed"


def _frozen(values: Any, dtype: type) -> np.ndarray:
    arr: np.ndarray = np.array(values, dtype=dtype)
    arr.setflags(write=False)
    return arr


class ParameterSpace:
    """A box of ``d`` solver input parameters, some of which may be sampled log-uniformly.

    Samplers work in the unit cube; ``from_unit``/``to_unit`` map to and from the box, so a
    log dimension (e.g. a viscosity spanning decades) gets as many draws per decade.

    Args:
        low: Lower bounds, one per dimension.
        high: Upper bounds, one per dimension, each > the matching ``low``.
        names: Unique dimension names; default ``theta0 .. theta{d-1}``.
        log: Per-dimension flags (or one flag for all) for log-uniform sampling; a log
            dimension needs ``low > 0``.

    Raises:
        ValueError: On bad input, naming the offending dimension by index and name.
    """

    def __init__(
        self,
        low: Sequence[float] | np.ndarray,
        high: Sequence[float] | np.ndarray,
        names: Sequence[str] | None = None,
        log: bool | Sequence[bool] | np.ndarray | None = None,
    ) -> None:
        lo = np.asarray(low, dtype=np.float64)
        hi = np.asarray(high, dtype=np.float64)
        if lo.ndim != 1 or hi.ndim != 1:
            raise ValueError("ParameterSpace: low and high must be 1-D sequences")
        d = lo.shape[0]
        if d == 0:
            raise ValueError("ParameterSpace: needs at least one dimension (low is empty)")
        if hi.shape[0] != d:
            raise ValueError(f"ParameterSpace: low has {d} entries but high has {hi.shape[0]}")
        if isinstance(names, str | bytes):  # tuple("xyz") would silently be three names
            raise refuse(
                "names", "a sequence of strings, one per dimension", names, "ParameterSpace"
            )
        names_t = tuple(f"theta{i}" for i in range(d)) if names is None else tuple(names)
        if len(names_t) != d:
            raise ValueError(f"ParameterSpace: {d} dimensions but {len(names_t)} names")
        if log is None or isinstance(log, (bool, np.bool_)):
            log_t = [bool(log)] * d
        else:
            log_t = list(log)
            if len(log_t) != d:
                raise ValueError(f"ParameterSpace: {d} dimensions but {len(log_t)} log flags")
        seen: dict[str, int] = {}
        for i, name in enumerate(names_t):
            if not isinstance(name, str) or not name:
                raise ValueError(
                    f"ParameterSpace: dimension {i}: name must be a non-empty string, got {name!r}"
                )
            where = f"ParameterSpace: dimension {i} ({name!r})"
            if name in seen:
                raise ValueError(f"{where}: duplicate name (also dimension {seen[name]})")
            seen[name] = i
            if not isinstance(log_t[i], (bool, np.bool_)):
                raise ValueError(f"{where}: log flag {log_t[i]!r} is not a bool")
            if not (np.isfinite(lo[i]) and np.isfinite(hi[i])):
                raise ValueError(f"{where}: bounds must be finite, got [{lo[i]}, {hi[i]}]")
            if not lo[i] < hi[i]:
                raise ValueError(f"{where}: low ({lo[i]}) must be < high ({hi[i]})")
            with np.errstate(over="ignore"):
                span = hi[i] - lo[i]
            if not np.isfinite(span):
                raise ValueError(
                    f"{where}: the span high - low overflows a float64 ([{lo[i]}, {hi[i]}]); "
                    "rescale the parameter"
                )
            if log_t[i] and lo[i] <= 0:
                raise ValueError(f"{where}: log dimension needs low > 0, got low ({lo[i]})")
        self._low = _frozen(lo, np.float64)
        self._high = _frozen(hi, np.float64)
        self._names = names_t
        self._log = _frozen(log_t, np.bool_)
        # Sampling coordinates: log10 for log dimensions, identity otherwise.
        self._lo_c = np.where(self._log, np.log10(np.where(self._log, lo, 1.0)), lo)
        self._hi_c = np.where(self._log, np.log10(np.where(self._log, hi, 1.0)), hi)

    @property
    def low(self) -> np.ndarray:
        """Lower bounds (read-only float64 array)."""
        return self._low

    @property
    def high(self) -> np.ndarray:
        """Upper bounds (read-only float64 array)."""
        return self._high

    @property
    def names(self) -> tuple[str, ...]:
        """Dimension names."""
        return self._names

    @property
    def log(self) -> np.ndarray:
        """Log-uniform flags (read-only bool array)."""
        return self._log

    @property
    def dim(self) -> int:
        """Number of dimensions ``d``."""
        return int(self._low.shape[0])

    def __len__(self) -> int:
        return self.dim

    def _check_last_axis(self, x: Any, what: str) -> np.ndarray:
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim == 0 or arr.shape[-1] != self.dim:
            raise ValueError(
                f"ParameterSpace.{what}: expected last axis {self.dim}, got {arr.shape}"
            )
        return arr

    def to_unit(self, theta: Any) -> np.ndarray:
        """Map points of the box, shape ``(..., d)``, to ``[0, 1]^d`` (log10 on log dims)."""
        t = self._check_last_axis(theta, "to_unit")
        with np.errstate(divide="ignore", invalid="ignore"):
            c = np.where(self._log, np.log10(t), t)
        return (c - self._lo_c) / (self._hi_c - self._lo_c)

    def from_unit(self, u: Any) -> np.ndarray:
        """Map points of ``[0, 1]^d``, shape ``(..., d)``, into the box (clipped against rounding)."""
        c = self._lo_c + self._check_last_axis(u, "from_unit") * (self._hi_c - self._lo_c)
        theta = np.where(self._log, 10.0 ** np.where(self._log, c, 0.0), c)
        return np.clip(theta, self._low, self._high)

    def contains(self, theta: Any) -> np.ndarray:
        """Whether each row of ``theta`` (shape ``(n, d)`` or ``(d,)``) lies in the closed box."""
        t = np.atleast_2d(self._check_last_axis(theta, "contains"))
        return np.all((t >= self._low) & (t <= self._high), axis=-1)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ParameterSpace):
            return NotImplemented
        return (
            self._names == other._names
            and np.array_equal(self._low, other._low)
            and np.array_equal(self._high, other._high)
            and np.array_equal(self._log, other._log)
        )

    def __hash__(self) -> int:
        # + 0.0 turns -0.0 into 0.0, which __eq__ treats as equal.
        lo, hi = (self._low + 0.0).tobytes(), (self._high + 0.0).tobytes()
        return hash((self._names, lo, hi, self._log.tobytes()))

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild through __init__ so an unpickled space is validated and read-only again.
        return (
            type(self),
            (self._low.tolist(), self._high.tolist(), self._names, self._log.tolist()),
        )

    def __repr__(self) -> str:
        dims = ", ".join(
            f"{n}=[{lo:g}, {hi:g}]{' log' if lg else ''}"
            for n, lo, hi, lg in zip(self._names, self._low, self._high, self._log, strict=True)
        )
        return f"ParameterSpace({dims})"


class Sampler:
    """Base class: draws solver inputs from a :class:`ParameterSpace`.

    Subclasses implement ``_draw_unit(d, n)`` (points of the unit cube; ``draw`` maps them into
    the box, so log dimensions work for free) or override ``draw`` itself, and extend
    ``state_dict``/``load_state_dict`` with whatever fixes their future draws.

    Args:
        seed: Non-negative int for reproducible draws, or None: then derived from Lightning's
            global seed when one is set (``seed_everything(s)`` before the sampler is made, as
            ``LightningCLI``'s ``seed_everything:`` does; the same ``s`` draws the same
            parameters), else fresh OS entropy. Either way a concrete seed is picked (and saved
            by ``state_dict``) so that checkpoints resume exactly; ``seed`` itself stays as
            given.
    """

    def __init__(self, seed: int | None = None) -> None:
        seed = check_optional_int(seed, "seed", 0, type(self).__name__)
        self.seed: int | None = seed
        if seed is None:
            seed = derived_seed("sampler", type(self).__name__)
        self._effective_seed: int = (
            # a SeedSequence made without entropy draws an int from the OS
            seed if seed is not None else int(np.random.SeedSequence().entropy)  # type: ignore[arg-type]
        )

    def draw(self, space: ParameterSpace, n: int) -> np.ndarray:
        """Draw ``n >= 0`` points of ``space`` as a float64 array of shape ``(n, space.dim)``."""
        if not isinstance(space, ParameterSpace):
            raise TypeError(
                f"{type(self).__name__}.draw: space must be a ParameterSpace, got {type(space).__name__}"
            )
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise TypeError(f"{type(self).__name__}.draw: n must be an int, got {n!r}")
        if n < 0:
            raise ValueError(f"{type(self).__name__}.draw: n must be >= 0, got {n}")
        u = np.asarray(self._draw_unit(space.dim, int(n)), dtype=np.float64).reshape(
            int(n), space.dim
        )
        return space.from_unit(u)

    def _draw_unit(self, d: int, n: int) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must implement _draw_unit or draw")

    def update(self, stats: Any = None) -> None:
        """Feed training statistics (e.g. per-sample losses) back to the sampler.

        A hook for loss-driven samplers; the space-filling samplers of this module ignore it,
        accepting any argument so that a training loop can call it unconditionally.
        """
        return None

    def config(self) -> dict[str, Any]:
        """What was chosen at construction, as plain values: the constructor's arguments read
        back from the attributes of the same name (``seed`` as given, not the seed picked for
        ``None``; a sampler argument as its own kind and config, without its seed, which is
        usually derived from this one's). A resumed study compares it with the checkpoint's
        (``OnlineDataModule(resume=...)``); a subclass whose arguments are not kept under their
        own names overrides it."""
        out: dict[str, Any] = {}
        for name, p in inspect.signature(type(self).__init__).parameters.items():
            if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if hasattr(self, name):
                out[name] = _plain(getattr(self, name))
        return out

    def state_dict(self) -> dict[str, Any]:
        """Everything that fixes future draws, as plain Python objects (pickle/torch.save safe)."""
        return {
            "kind": type(self).__name__,
            "seed": self.seed,
            "effective_seed": self._effective_seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from ``state_dict()``: from here on, draw what the saved sampler would have."""
        if state.get("kind") != type(self).__name__:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: state is for {state.get('kind')!r}"
            )
        self.seed = state["seed"]
        self._effective_seed = int(state["effective_seed"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed!r})"


def _plain(value: Any) -> Any:
    """``value`` as plain Python data for a configuration (numbers, strings, lists, dicts)."""
    if isinstance(value, Sampler):
        config = {k: v for k, v in value.config().items() if k != "seed"}
        return {"kind": type(value).__name__, **config}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


class _GeneratorSampler(Sampler):
    """A sampler driven by one numpy Generator, whose bit-generator state is its whole state."""

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(seed)
        self._rng = np.random.default_rng(self._effective_seed)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = copy.deepcopy(state["rng"])


class Uniform(_GeneratorSampler):
    """I.i.d. uniform points of the unit cube (log-uniform on log dimensions)."""

    def _draw_unit(self, d: int, n: int) -> np.ndarray:
        return self._rng.random((n, d))


class LatinHypercube(_GeneratorSampler):
    """Each ``draw(space, n)`` is an ``n``-point Latin hypercube: one point per stratum ``1/n``
    of every dimension, so even small batches cover each parameter's whole range."""

    def _draw_unit(self, d: int, n: int) -> np.ndarray:
        # A child generator per draw: the engine's consumption then never aliases our state.
        child = np.random.default_rng(int(self._rng.integers(0, 2**63)))
        return qmc.LatinHypercube(d, **{_QMC_RNG_KW: child}).random(n)


class Halton(Sampler):
    """A (scrambled) Halton sequence: low-discrepancy points, continued across draws.

    The dimension is fixed at the first draw. The state is the effective seed plus the number
    of points drawn, from which the engine is rebuilt and fast-forwarded on resume.
    """

    def __init__(self, seed: int | None = None, scramble: bool = True) -> None:
        super().__init__(seed)
        self.scramble = bool(scramble)
        self._dim: int | None = None
        self._count = 0
        self._engine: qmc.Halton | None = None

    def _draw_unit(self, d: int, n: int) -> np.ndarray:
        if self._dim is None:
            self._dim = d
        elif d != self._dim:
            raise ValueError(
                f"Halton: this sequence is {self._dim}-dimensional (fixed at the first draw); "
                f"cannot draw for a {d}-dimensional space"
            )
        if self._engine is None:
            rng = np.random.default_rng(self._effective_seed)
            self._engine = qmc.Halton(d, scramble=self.scramble, **{_QMC_RNG_KW: rng})
            if self._count:
                self._engine.fast_forward(self._count)
        u = self._engine.random(n)
        self._count += n
        return u

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "scramble": self.scramble,
            "dim": self._dim,
            "count": self._count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.scramble = bool(state["scramble"])
        self._dim = None if state["dim"] is None else int(state["dim"])
        self._count = int(state["count"])
        self._engine = None

    def __getstate__(self) -> dict[str, Any]:
        # The engine is rebuilt lazily from (seed, count); do not pickle it.
        return {**self.__dict__, "_engine": None}

    def __repr__(self) -> str:
        return f"Halton(seed={self.seed!r}, scramble={self.scramble})"


def _golden(d: int) -> float:
    """The generalised golden ratio of dimension d: the positive root of x^(d+1) = x + 1."""
    x = 2.0
    for _ in range(64):  # Newton's iteration; converges from 2 for every d
        x -= (x ** (d + 1) - x - 1) / ((d + 1) * x**d - 1)
    return x


def validation_points(space: ParameterSpace, n: int) -> np.ndarray:
    """``n`` validation points of ``space``: points 1..n of the R_d Kronecker sequence
    (``frac(0.5 + k * alpha)`` with ``alpha_i = phi_d^-i``, phi_d the generalised golden ratio;
    Roberts 2018), mapped into the box like any draw.

    Deterministic and space-filling (low discrepancy), and no :class:`Sampler` of this package
    draws these points, whatever its seed: Halton and Latin hypercube points are rationals with
    small denominators before rounding, uniform draws are random, while ``k * alpha`` is
    irrational. So a study never validates on a run it trained on (``val_parameters=n``)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"validation_points: n must be an int >= 0, got {n!r}")
    d = space.dim
    alpha = _golden(d) ** -np.arange(1, d + 1, dtype=np.float64)
    k = np.arange(1, int(n) + 1, dtype=np.float64)[:, None]
    return space.from_unit(np.mod(0.5 + k * alpha, 1.0))
