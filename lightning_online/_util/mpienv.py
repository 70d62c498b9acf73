"""Which MPI launcher this process's MPI will use, whatever ``PATH`` says.

Runs in the training process: :func:`check_mpi` on the training thread when an
``OnlineDataModule`` is built, :func:`prepare_spawn` on the receiver thread just before the first
``MPI_Comm_spawn``. Neither makes an MPI call.

Why: a training process started without an MPI launcher is an MPI *singleton*. MPICH starts its
process manager for the first spawn by executing ``mpiexec`` found on ``PATH``; when the
environment's ``bin/`` is not on ``PATH`` (``/path/to/venv/bin/python train.py``, a job script,
an IDE or Jupyter kernel), that fails inside ``MPI_Comm_spawn`` with ``Abort(1)``, which takes the
whole process down. So the launcher that belongs to the MPI library mpi4py loads is found first
and put at the front of ``PATH``, or the study is refused with an error that says what to do.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["MPIUnavailableError", "check_mpi", "launched_by_mpi", "prepare_spawn", "wheel_bin"]

# Set by a process manager in the processes it starts (MPICH/hydra, PMIx, Open MPI).
_LAUNCHER_VARS = ("PMI_RANK", "PMI_FD", "PMIX_RANK", "OMPI_COMM_WORLD_RANK")


class MPIUnavailableError(RuntimeError):
    """No MPI (library or launcher) that can start the solver workers; the message names the fix."""


def launched_by_mpi() -> bool:
    """Whether this process was started by an MPI launcher (then its process manager exists)."""
    return any(k in os.environ for k in _LAUNCHER_VARS)


def _prefixes() -> list[Path]:
    # Where mpi4py looks first for libmpi (its _mpiabi search), in its order: the virtual
    # environment, the user base (``pip install --user``), the interpreter's own prefix.
    import site

    found = [sys.exec_prefix, sys.prefix]
    if site.ENABLE_USER_SITE and site.USER_BASE:
        found.append(site.USER_BASE)
    found.append(sys.base_exec_prefix)
    out: list[Path] = []
    for p in found:
        path = Path(p)
        if path not in out:
            out.append(path)
    return out


def wheel_bin() -> Path | None:
    """The ``bin/`` of an MPI installed in this interpreter's environment (the ``mpich`` wheel):
    the directory holding ``mpiexec`` next to the ``libmpi`` that mpi4py loads; or None."""
    for prefix in _prefixes():
        bindir = prefix / ("Scripts" if os.name == "nt" else "bin")
        libdir = prefix / "lib"
        if (bindir / "mpiexec").is_file() and any(libdir.glob("libmpi*.so*")):
            return bindir
        if (bindir / "mpiexec").is_file() and any(libdir.glob("libmpi*.dylib")):
            return bindir
    return None


def _has_mpi4py() -> bool:
    import importlib.util

    return importlib.util.find_spec("mpi4py") is not None


def check_mpi() -> Path | None:
    """The launcher directory to use (see :func:`wheel_bin`), or None when ``PATH`` or an MPI
    launcher already provides one; raise :class:`MPIUnavailableError` when there is no MPI to
    start workers with. Training thread, at construction; no MPI call."""
    if not _has_mpi4py():
        raise MPIUnavailableError(
            "mpi4py is not installed, and Python solvers run in MPI worker processes: "
            "`pip install mpi4py mpich` (Linux, macOS), or use an ExternalSolver"
        )
    found = wheel_bin()
    if found is not None or launched_by_mpi():
        return found
    if shutil.which("mpiexec") is None:
        raise MPIUnavailableError(
            "no MPI launcher: the mpich wheel is not installed in this environment "
            f"({sys.prefix}) and `mpiexec` is not on PATH, so MPI could not start the solver "
            "workers (it would abort the process). Fix: `pip install mpich` in this "
            "environment (Linux, macOS), or put your MPI's bin/ directory on PATH, or start "
            "training with `mpiexec -n 1 python train.py`"
        )
    return None


def prepare_spawn() -> None:
    """Make sure MPI's singleton process manager will find the right ``mpiexec``: put the
    environment's MPI ``bin/`` first on ``PATH`` (it is the launcher of the library mpi4py
    loads; ``os.environ`` is changed for the rest of the process and its children). Receiver
    thread, before any MPI call; raises :class:`MPIUnavailableError` as :func:`check_mpi`."""
    bindir = check_mpi()
    if bindir is None or launched_by_mpi():
        return
    path = os.environ.get("PATH", "")
    current = shutil.which("mpiexec", path=path)
    if current is not None and Path(current).resolve() == (bindir / "mpiexec").resolve():
        return
    os.environ["PATH"] = os.pathsep.join([str(bindir), path]) if path else str(bindir)
    log.info(
        "put %s first on PATH: MPI starts its process manager from there (%s)",
        bindir,
        "PATH had no mpiexec" if current is None else f"PATH had {current}",
    )
