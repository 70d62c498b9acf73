"""The offline side's solver job: run one simulation and write it to disk (light imports only)."""

from __future__ import annotations

import numpy as np


def simulate_to_disk(args: tuple) -> str:
    solver, theta, path = args
    xs, ys = zip(*solver(theta), strict=True)
    np.save(path + "_x.npy", np.stack(xs))
    np.save(path + "_y.npy", np.stack(ys))
    return path
