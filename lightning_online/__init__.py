"""lightning_online: train neural surrogates of PDE solvers online with PyTorch Lightning.

Solver runs are launched as MPI processes with parameters drawn from a sampler; each run streams its
time steps into a bounded buffer on the training process, and ``OnlineDataModule`` feeds batches
from that buffer to an unchanged LightningModule.

The heavy parts (torch, Lightning) load on first use, so that the solver processes, which import
this package too, start fast.

The layout (``docs/architecture.md``): this module is the public API; the public modules
``data``, ``buffers``, ``client``, ``models``, ``cli`` and ``errors`` sit beside it, the parts in
subpackages: ``sampling/`` (spaces, samplers, steering rules), ``callbacks/`` (ActiveSampling,
the live view), ``external/`` (external programs), ``solvers/`` (example solvers), and the
private machinery in ``_study/``, ``_transport/``, ``_wire/`` and ``_util/``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
import warnings
from types import ModuleType
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# A library: its log records go wherever the application sends them, nowhere by default.
logging.getLogger(__name__).addHandler(logging.NullHandler())

_LAZY = {
    "ParameterSpace": "lightning_online.sampling.samplers",
    "Sampler": "lightning_online.sampling.samplers",
    "Uniform": "lightning_online.sampling.samplers",
    "Halton": "lightning_online.sampling.samplers",
    "LatinHypercube": "lightning_online.sampling.samplers",
    "Buffer": "lightning_online.buffers",
    "FIFO": "lightning_online.buffers",
    "FIRO": "lightning_online.buffers",
    "Reservoir": "lightning_online.buffers",
    "OnlineDataModule": "lightning_online.data",
    "Solver": "lightning_online.data",
    "StudyError": "lightning_online.errors",
    "ActiveSampling": "lightning_online.callbacks.active_sampling",
    "StudyMonitor": "lightning_online.callbacks.monitor",
    "StudyProgressBar": "lightning_online.callbacks.monitor",
    "RichStudyProgressBar": "lightning_online.callbacks.monitor",
    "StudyProgressLog": "lightning_online.callbacks.progress",
    "Breed": "lightning_online.sampling.steering",
    "ErrorModel": "lightning_online.sampling.error_model",
    "LossProportional": "lightning_online.sampling.steering",
    "SimulationStats": "lightning_online.sampling.steering",
    "SteeredSampler": "lightning_online.sampling.steering",
    "ExternalSolver": "lightning_online.external.solver",
    "ExternalRunError": "lightning_online.errors",
    "Direct": "lightning_online.external.launchers",
    "Mpiexec": "lightning_online.external.launchers",
    "Srun": "lightning_online.external.launchers",
    "Recording": "lightning_online.recording",
    "Replay": "lightning_online.recording",
    "RecordedDataset": "lightning_online.recording",
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
    "RecordedDataset",
    "Recording",
    "Replay",
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
    "StudyProgressLog",
    "Uniform",
]

if TYPE_CHECKING:
    from lightning_online.buffers import FIFO, FIRO, Buffer, Reservoir
    from lightning_online.callbacks.active_sampling import ActiveSampling
    from lightning_online.callbacks.monitor import (
        RichStudyProgressBar,
        StudyMonitor,
        StudyProgressBar,
    )
    from lightning_online.callbacks.progress import StudyProgressLog
    from lightning_online.data import OnlineDataModule, Solver
    from lightning_online.errors import ExternalRunError, StudyError
    from lightning_online.external.launchers import Direct, Mpiexec, Srun
    from lightning_online.external.solver import ExternalSolver
    from lightning_online.recording import RecordedDataset, Recording, Replay
    from lightning_online.sampling.error_model import ErrorModel
    from lightning_online.sampling.samplers import (
        Halton,
        LatinHypercube,
        ParameterSpace,
        Sampler,
        Uniform,
    )
    from lightning_online.sampling.steering import (
        Breed,
        LossProportional,
        SimulationStats,
        SteeredSampler,
    )


#: Public modules that moved in 0.2 (the layout of docs/architecture.md): importing the old path
#: still works, with a DeprecationWarning; the old paths go in 0.4.
_MOVED = {
    "lightning_online.monitor": "lightning_online.callbacks.monitor",
    "lightning_online.active_sampling": "lightning_online.callbacks.active_sampling",
    "lightning_online.steering": "lightning_online.sampling",
    "lightning_online.launchers": "lightning_online.external.launchers",
}


def _warn_moved(old: str) -> None:
    warnings.warn(
        f"{old} moved to {_MOVED[old]}: import from there, or the name from lightning_online "
        "itself (the old module path goes in 0.4)",
        DeprecationWarning,
        stacklevel=4,
    )


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import lightning_online.monitor`` (a moved module) gives the module at its new path."""

    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        _warn_moved(spec.name)
        return importlib.import_module(_MOVED[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module at the new path is already loaded."""


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.insert(0, _MovedModules())


def __getattr__(name: str) -> Any:
    old = f"{__name__}.{name}"
    if old in _MOVED:
        _warn_moved(old)
        return importlib.import_module(_MOVED[old])
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lightning_online' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
