"""Small solvers for tests: cheap, deterministic, and some of them faulty on purpose."""

from __future__ import annotations

import os
import signal
import time

import numpy as np


def smooth(theta: np.ndarray, n_steps: int = 10, delay: float = 0.0):
    """x = (theta, t), y = a smooth function of both; optional delay per step."""
    for k in range(n_steps):
        if delay:
            time.sleep(delay)
        x = np.array([*theta, k / n_steps], dtype=np.float32)
        yield x, np.sin(3 * x[:1] + x[-1:]).astype(np.float32)


class Smooth:
    def __init__(self, n_steps: int = 10, delay: float = 0.0, slow_above: float | None = None):
        self.n_steps, self.delay, self.slow_above = n_steps, delay, slow_above

    def __call__(self, theta: np.ndarray):
        delay = self.delay
        if self.slow_above is not None and theta[0] < self.slow_above:
            delay = 0.0
        return smooth(theta, self.n_steps, delay)


class Faulty:
    """Fails according to theta[0]: a fixed, known share of the box for each fault.

    [0, .1) raises; [.1, .2) yields NaN at step 2; [.2, .3) changes shape at step 3;
    [.3, .4) segfaults at step 1; [.4, .5) yields nothing; the rest is healthy.
    """

    def __init__(self, n_steps: int = 6) -> None:
        self.n_steps = n_steps

    def __call__(self, theta: np.ndarray):
        t0 = float(theta[0])
        for k in range(self.n_steps):
            if t0 < 0.1 and k == 1:
                raise RuntimeError(f"solver diverged at theta={t0:.3f}")
            if t0 < 0.4 and 0.3 <= t0 and k == 1:
                os.kill(os.getpid(), signal.SIGSEGV)
            if 0.4 <= t0 < 0.5:
                return
            x = np.array([t0, k / self.n_steps], dtype=np.float32)
            y = np.array([np.sin(3 * t0)], dtype=np.float32)
            if 0.1 <= t0 < 0.2 and k == 2:
                y[0] = np.nan
            if 0.2 <= t0 < 0.3 and k == 3:
                y = np.zeros(2, dtype=np.float32)
            yield x, y


class HardCorner:
    """Easy (y = 0) everywhere except in the sub-box theta0 > 0.75, theta1 > 0.6 (10 % of the
    unit square), where the target oscillates fast in time and parameters: a network cannot fit it
    quickly, so its loss stays high there."""

    box = ((0.75, 1.0), (0.6, 1.0))

    def __init__(self, n_steps: int = 8) -> None:
        self.n_steps = n_steps

    def __call__(self, theta: np.ndarray):
        (a0, b0), (a1, b1) = self.box
        hard = a0 < theta[0] <= b0 and a1 < theta[1] <= b1
        for k in range(self.n_steps):
            t = k / self.n_steps
            x = np.array([theta[0], theta[1], t], dtype=np.float32)
            y = np.array([np.sin(40 * t + 30 * theta[0]) if hard else 0.0], dtype=np.float32)
            yield x, y

    @classmethod
    def inside(cls, thetas: np.ndarray) -> np.ndarray:
        (a0, b0), (a1, b1) = cls.box
        return (
            (thetas[:, 0] > a0) & (thetas[:, 0] <= b0) & (thetas[:, 1] > a1) & (thetas[:, 1] <= b1)
        )


class FaultAt:
    """Healthy for theta[0] >= 0.5; for theta[0] < 0.5 it fails in one chosen way.

    ``n_steps`` is announced (an int attribute), so a run that stops early is a failure.
    """

    def __init__(self, kind: str, n_steps: int = 6) -> None:
        self.kind, self.n_steps = kind, n_steps

    def __call__(self, theta: np.ndarray):
        import sys

        faulty = theta[0] < 0.5
        kind = self.kind if faulty else "healthy"
        if kind == "first_shape":
            time.sleep(0.3)  # let healthy runs define the study's sample layout first
        for k in range(self.n_steps):
            x = np.array([theta[0], k / self.n_steps], dtype=np.float32)
            y = np.array([np.sin(3 * theta[0])], dtype=np.float32)
            if k == 2:
                if kind == "raise":
                    raise RuntimeError("solver diverged")
                if kind == "exit":
                    sys.exit(3)
                if kind == "os_exit":
                    os._exit(7)
                if kind in ("sigkill", "sigsegv"):
                    os.kill(os.getpid(), signal.SIGKILL if kind == "sigkill" else signal.SIGSEGV)
                if kind == "hang":
                    time.sleep(3600)
                if kind == "nan":
                    y[0] = np.nan
                if kind == "inf":
                    x[0] = np.inf
                if kind == "shape":
                    y = np.zeros(3, dtype=np.float32)
                if kind == "dtype":
                    y = y.astype(np.float64)
                if kind == "fewer":
                    return
            if kind == "none":
                return
            if kind == "first_shape":
                y = np.zeros(2, dtype=np.float32)
            yield x, y


def steer_hard_corner(sampler, n_simulations: int, update_every: int, window: int):
    """A real steered study on :class:`HardCorner` (2 workers, FIFO, a small MLP): returns the
    DataModule and the ActiveSampling callback after ``fit``."""
    from _models import Regressor, quiet_trainer

    from lightning_online import FIFO, ActiveSampling, OnlineDataModule, ParameterSpace

    dm = OnlineDataModule(
        HardCorner(),
        ParameterSpace([0, 0], [1, 1]),
        n_simulations=n_simulations,
        batch_size=16,
        n_workers=2,
        sampler=sampler,
        buffer=FIFO(48, watermark=16),
    )
    active = ActiveSampling(update_every_n_steps=update_every, window=window)
    quiet_trainer([active], accelerator="cpu").fit(Regressor(3, 1, hidden=32, lr=3e-3), dm)
    return dm, active
