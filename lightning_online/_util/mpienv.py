"""Which MPI launcher this process's MPI will use, whatever ``PATH`` says.

Runs in the training process, on the training thread: :func:`check_mpi` when an
``OnlineDataModule`` is built, :func:`spawn_environment` around the first ``MPI_Comm_spawn``
(made by the receiver thread, which only calls :func:`mark_spawned`). None makes an MPI call.

Why: a training process started without an MPI launcher is an MPI *singleton*. MPICH starts its
process manager for the first spawn by executing ``mpiexec`` found on ``PATH``; when the
environment's ``bin/`` is not on ``PATH`` (``/path/to/venv/bin/python train.py``, a job script,
an IDE or Jupyter kernel), that fails inside ``MPI_Comm_spawn`` with ``Abort(1)``, which takes the
whole process down. So the launcher that belongs to the MPI library mpi4py loads is found first
and put at the front of the ``PATH`` that process manager starts with (this process's own
``PATH`` is the same before and after), or the study is refused with an error that says what to
do.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = [
    "MPIUnavailableError",
    "check_mpi",
    "launched_by_mpi",
    "mark_spawned",
    "spawn_env",
    "spawn_environment",
    "wheel_bin",
]

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


def spawn_env() -> dict[str, str]:
    """The variables MPI's singleton process manager must start with, beyond this process's
    environment: the environment's MPI ``bin/`` first on ``PATH`` (the launcher of the library
    mpi4py loads), and inside a SLURM job ``HYDRA_LAUNCHER=fork``/``HYDRA_RMK=user`` unless set
    (the workers belong next to their rank, not in an ``srun`` step that may land on another
    node). Empty when a launcher started this process (its process manager already runs).
    Training thread, before the first spawn; no MPI call; raises :class:`MPIUnavailableError`
    as :func:`check_mpi`. Nothing is written: see :func:`spawn_environment`."""
    bindir = check_mpi()
    if launched_by_mpi():
        return {}
    env: dict[str, str] = {}
    path = os.environ.get("PATH", "")
    if bindir is not None:
        current = shutil.which("mpiexec", path=path)
        if current is None or Path(current).resolve() != (bindir / "mpiexec").resolve():
            env["PATH"] = os.pathsep.join([str(bindir), path]) if path else str(bindir)
            log.info(
                "MPI's process manager starts with %s first on PATH (%s); this process's "
                "PATH is not changed",
                bindir,
                "PATH has no mpiexec" if current is None else f"PATH has {current}",
            )
    if "SLURM_JOB_ID" in os.environ:
        for key, value in (("HYDRA_LAUNCHER", "fork"), ("HYDRA_RMK", "user")):
            if key not in os.environ:
                env[key] = value
    return env


_pm_started = False  # MPI started its process manager in this process (once per process)


@contextmanager
def spawn_environment() -> Iterator[None]:
    """Around the first ``MPI_Comm_spawn`` of this process (training thread, while it waits for
    the receiver thread to spawn): MPICH's singleton starts its process manager with
    ``execvp("mpiexec")`` from inside the spawn call, so the ``PATH`` and hydra variables it
    needs (:func:`spawn_env`) can only reach it through this process's environment. They are
    put there for that call only and taken out again as soon as it returns (a variable
    someone else changed meanwhile is left as it is); every later spawn reuses the running
    process manager and changes nothing. Set ``PATH`` (the environment's ``bin/`` first) and,
    under SLURM, ``HYDRA_LAUNCHER``/``HYDRA_RMK`` yourself and nothing is ever written."""
    global _pm_started
    changes = {} if _pm_started else spawn_env()
    saved = {key: os.environ.get(key) for key in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for key, value in changes.items():
            if os.environ.get(key) != value:
                continue  # changed by someone else meanwhile: theirs
            if saved[key] is None:
                del os.environ[key]
            else:
                os.environ[key] = saved[key]  # type: ignore[assignment]


def mark_spawned() -> None:
    """The process manager runs (receiver thread, after a successful spawn)."""
    global _pm_started
    _pm_started = True
