"""External solver programs (C, C++, Fortran, any language): :class:`ExternalSolver`, the
launchers (:class:`Direct`, :class:`Mpiexec`, :class:`Srun`), and the machinery that runs them.

* ``solver``: :class:`ExternalSolver`, the program's description (command, fields, launcher);
* ``launchers``: how a program is started (directly, under ``mpiexec``, as an ``srun`` step);
* ``_hub``: a training rank's receiver for programs (one listening socket, many connections);
* ``_pool``: the rank's pool of runs in flight around the hub, and one run for a direct call;
* ``_launchd``: the small launch helper process that starts and ends each run's program.

The names load on first use (``_launchd`` runs in a helper started with ``python -S``, which
must not import numpy through this package).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["Direct", "ExternalRunError", "ExternalSolver", "Launcher", "Mpiexec", "Srun"]

_LAZY = {
    "ExternalSolver": "lightning_online.external.solver",
    "ExternalRunError": "lightning_online.errors",
    "Direct": "lightning_online.external.launchers",
    "Launcher": "lightning_online.external.launchers",
    "Mpiexec": "lightning_online.external.launchers",
    "Srun": "lightning_online.external.launchers",
}

if TYPE_CHECKING:
    from lightning_online.errors import ExternalRunError
    from lightning_online.external.launchers import Direct, Launcher, Mpiexec, Srun
    from lightning_online.external.solver import ExternalSolver


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lightning_online.external' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
