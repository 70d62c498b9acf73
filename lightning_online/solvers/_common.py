"""What the shipped solvers share: the check of a run's parameters (numpy only)."""

from __future__ import annotations

import numpy as np


def check_theta(theta: object, n: int, names: tuple[str, ...]) -> np.ndarray:
    """``theta`` as a float64 vector of ``n`` finite values, or a ValueError saying what is wrong."""
    arr = np.asarray(theta, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"theta must be a 1-D array of {n} values {names}, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"theta must be finite, got {arr}")
    return arr
