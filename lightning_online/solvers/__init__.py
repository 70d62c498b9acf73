"""Plain-numpy PDE solvers yielding one training sample per time step.

A solver is a picklable callable ``solver(theta) -> Iterator[tuple[np.ndarray, ...]]``; each
``*_space()`` function returns the parameter box of its solver.

Where code runs: a solver's ``__call__`` runs in a solver sandbox process (``_transport.runner``),
never in the training or MPI worker processes.
"""

from __future__ import annotations

from .allen_cahn1d import AllenCahn1D, allen_cahn1d_space
from .burgers1d import Burgers1D, burgers1d_space
from .heat2d import Heat2D, heat2d_space

__all__ = [
    "AllenCahn1D",
    "Burgers1D",
    "Heat2D",
    "allen_cahn1d_space",
    "burgers1d_space",
    "heat2d_space",
]
