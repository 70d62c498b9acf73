"""lightning_online: train neural surrogates of PDE solvers online with PyTorch Lightning.

Solver runs are launched as MPI processes with parameters drawn from a sampler; each run streams its
time steps into a bounded buffer on the training process, and ``OnlineDataModule`` feeds batches
from that buffer to an unchanged LightningModule.

The heavy parts (torch, Lightning) load on first use, so that the solver processes, which import
this package too, start fast.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# A library: its log records go wherever the application sends them, nowhere by default.
logging.getLogger(__name__).addHandler(logging.NullHandler())

_LAZY = {
    "ParameterSpace": "lightning_online.sampling",
    "Sampler": "lightning_online.sampling",
    "Uniform": "lightning_online.sampling",
    "Halton": "lightning_online.sampling",
    "LatinHypercube": "lightning_online.sampling",
    "Buffer": "lightning_online.buffers",
    "FIFO": "lightning_online.buffers",
    "FIRO": "lightning_online.buffers",
    "Reservoir": "lightning_online.buffers",
    "OnlineDataModule": "lightning_online.data",
    "Solver": "lightning_online.data",
    "StudyError": "lightning_online._study",
    "ActiveSampling": "lightning_online.active_sampling",
    "StudyMonitor": "lightning_online.monitor",
    "StudyProgressBar": "lightning_online.monitor",
    "RichStudyProgressBar": "lightning_online.monitor",
    "Breed": "lightning_online.steering",
    "ErrorModel": "lightning_online.steering",
    "LossProportional": "lightning_online.steering",
    "SimulationStats": "lightning_online.steering",
    "SteeredSampler": "lightning_online.steering",
    "ExternalSolver": "lightning_online.external",
    "ExternalRunError": "lightning_online.external",
    "Direct": "lightning_online.launchers",
    "Mpiexec": "lightning_online.launchers",
    "Srun": "lightning_online.launchers",
}

__all__ = [
    "FIFO",
    "FIRO",
    "ActiveSampling",
    "Breed",
    "Buffer",
    "Direct",
    "ErrorModel",
    "ExternalRunError",
    "ExternalSolver",
    "Halton",
    "LatinHypercube",
    "LossProportional",
    "Mpiexec",
    "OnlineDataModule",
    "ParameterSpace",
    "Reservoir",
    "RichStudyProgressBar",
    "Sampler",
    "SimulationStats",
    "Solver",
    "Srun",
    "SteeredSampler",
    "StudyError",
    "StudyMonitor",
    "StudyProgressBar",
    "Uniform",
]

if TYPE_CHECKING:
    from lightning_online._study import StudyError
    from lightning_online.active_sampling import ActiveSampling
    from lightning_online.buffers import FIFO, FIRO, Buffer, Reservoir
    from lightning_online.data import OnlineDataModule, Solver
    from lightning_online.external import ExternalRunError, ExternalSolver
    from lightning_online.launchers import Direct, Mpiexec, Srun
    from lightning_online.monitor import RichStudyProgressBar, StudyMonitor, StudyProgressBar
    from lightning_online.sampling import Halton, LatinHypercube, ParameterSpace, Sampler, Uniform
    from lightning_online.steering import (
        Breed,
        ErrorModel,
        LossProportional,
        SimulationStats,
        SteeredSampler,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lightning_online' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
