"""How :class:`~lightning_online.ExternalSolver` starts one run of a solver program.

A launcher only turns the program's command line into the command that starts it on ``n_procs``
processes; it is a plain picklable object, so it travels with the solver to the worker that
starts the runs. Use the engine your machine already has: ``Direct`` (a serial program),
``Mpiexec`` (any MPI, e.g. the ``mpich`` wheel's), ``Srun`` (one SLURM job step per run inside the
training job's allocation).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Direct", "Launcher", "Mpiexec", "Srun", "resolve_launcher"]


class Launcher:
    """Base class: ``command(program, n_procs)`` returns the argv that starts one run."""

    #: True when runs may start on other nodes: the program must then connect back over the
    #: network (to this node's host name) instead of the loopback address.
    remote: bool = False

    def command(self, program: list[str], n_procs: int) -> list[str]:
        raise NotImplementedError

    def check(self, n_procs: int) -> None:
        """Refuse a configuration that cannot work, at construction time."""


def _find(executable: str, what: str) -> str:
    """An executable on PATH or, for the MPI wheel's tools, next to this Python interpreter
    (a virtual environment that is used without being activated)."""
    found = shutil.which(executable)
    if found is None:
        beside = Path(sys.executable).parent / executable
        if beside.exists():
            found = str(beside)
    if found is None:
        raise FileNotFoundError(
            f"{what}: cannot find {executable!r} on PATH or next to {sys.executable}; "
            "install it (e.g. pip install mpich) or give the full path"
        )
    return found


@dataclass
class Direct(Launcher):
    """Start the program itself: a serial program on the training node (``n_procs`` must be 1)."""

    def command(self, program: list[str], n_procs: int) -> list[str]:
        return list(program)

    def check(self, n_procs: int) -> None:
        if n_procs != 1:
            raise ValueError(
                f"the Direct launcher starts one process, but n_procs={n_procs}; "
                "use launcher='mpiexec' or 'srun' for a parallel program"
            )


@dataclass
class Mpiexec(Launcher):
    """``mpiexec -n {n_procs} [args] program``: each run is its own MPI job.

    Args:
        executable: ``mpiexec`` found on PATH or next to the Python interpreter (the ``mpich``
            wheel's), unless a path is given. Use the ``mpiexec`` of the MPI the program was
            compiled with.
        args: extra options placed before the program, e.g. ``["-bind-to", "core"]``.
    """

    executable: str = "mpiexec"
    args: Sequence[str] = field(default_factory=list)

    def command(self, program: list[str], n_procs: int) -> list[str]:
        exe = _find(self.executable, "Mpiexec launcher")
        return [exe, "-n", str(n_procs), *self.args, *program]

    def check(self, n_procs: int) -> None:
        _find(self.executable, "Mpiexec launcher")


@dataclass
class Srun(Launcher):
    """One SLURM job step per run, inside the allocation of the training job.

    ``srun --ntasks={n_procs} [--nodes=N] [--cpus-per-task=C] --kill-on-bad-exit=1 --exact
    --job-name=... --mpi={mpi} [args] program``. ``--mpi`` is the process-manager interface
    through which the program's MPI ranks find each other: without one the MPI library knows
    of no process manager, every rank starts as a singleton (rank 0 of 1) and a multi-rank run
    fails. ``pmi2`` (the default) is what MPICH and its derivatives (the ``mpich`` wheel, Intel
    MPI, Cray MPICH, MVAPICH) speak under SLURM; ``pmix`` (or a versioned ``pmix_v4`` ...) for an
    Open MPI or MPICH built with PMIx, where the site's SLURM offers it; ``None`` leaves it to the
    site's ``MpiDefault``. It is checked at construction against ``srun --mpi=list``.
    ``--exact`` gives each step only the resources it asks for, so concurrent runs share the
    allocation instead of queueing behind each other (SLURM >= 20.11; set ``exact=False`` for
    older versions). A step that waits for free resources counts toward
    ``ExternalSolver.connect_timeout``. The program connects back to the training node over TCP,
    so it advertises this node's host name (see ``ExternalSolver.host``).

    Args:
        nodes: ``--nodes`` per run (``None``: let SLURM choose).
        cpus_per_task: ``--cpus-per-task`` per rank of the program.
        mpi: ``--mpi`` of every step (``"pmi2"``, ``"pmix"``, ``"pmix_v4"``, ``"none"``...), or
            ``None`` for the site's default. Must be one ``srun --mpi=list`` names. A ``--mpi``
            option in ``args`` wins over it.
        args: extra options, e.g. ``["--gpus-per-task=1"]``.
        executable: the ``srun`` command.
    """

    nodes: int | None = None
    cpus_per_task: int | None = None
    exact: bool = True
    job_name: str = "lightning-online-run"
    mpi: str | None = "pmi2"
    args: Sequence[str] = field(default_factory=list)
    executable: str = "srun"
    remote: bool = True

    def command(self, program: list[str], n_procs: int) -> list[str]:
        exe = shutil.which(self.executable) or self.executable
        argv = [exe, f"--ntasks={n_procs}"]
        if self.nodes is not None:
            argv.append(f"--nodes={self.nodes}")
        if self.cpus_per_task is not None:
            argv.append(f"--cpus-per-task={self.cpus_per_task}")
        argv += ["--kill-on-bad-exit=1", f"--job-name={self.job_name}"]
        if self.exact:
            argv.append("--exact")
        if self.mpi is not None and not self._mpi_in_args():
            argv.append(f"--mpi={self.mpi}")
        return [*argv, *self.args, *program]

    def check(self, n_procs: int) -> None:
        if self.nodes is not None and not 1 <= self.nodes <= n_procs:
            raise ValueError(f"Srun: nodes={self.nodes} must be between 1 and n_procs={n_procs}")
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise ValueError(f"Srun: cpus_per_task must be >= 1, got {self.cpus_per_task}")
        if self.mpi is not None and not (isinstance(self.mpi, str) and _MPI_TYPE.match(self.mpi)):
            raise ValueError(
                f"Srun: mpi={self.mpi!r} is not a process-manager interface; use 'pmi2' (MPICH "
                "and the mpich wheel), 'pmix' (PMIx builds, where SLURM offers it), 'none', or "
                "None for the site's default (srun --mpi=list names what this SLURM offers)"
            )
        exe = shutil.which(self.executable)
        if exe is None:
            raise FileNotFoundError(
                f"Srun launcher: {self.executable!r} is not on PATH; run the training job "
                "inside a SLURM allocation (sbatch/salloc), or use launcher='mpiexec'"
            )
        if self.mpi is not None and self.mpi != "none" and not self._mpi_in_args():
            offered = _mpi_types(exe)
            if offered is not None and self.mpi not in offered:
                raise ValueError(
                    f"Srun: mpi={self.mpi!r}, but this SLURM offers {sorted(offered)} "
                    f"(srun --mpi=list); use one of them, or mpi=None for the site's default"
                )

    def _mpi_in_args(self) -> bool:
        """``--mpi`` given in ``args`` (as before ``mpi`` existed) wins over ``mpi``."""
        return any(str(a) == "--mpi" or str(a).startswith("--mpi=") for a in self.args)


#: What ``--mpi`` may be: SLURM's plugin names (pmi2, pmix, pmix_v4, none, cray_shasta, ...).
_MPI_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def _mpi_types(srun: str) -> set[str] | None:
    """The ``--mpi`` values this ``srun`` offers (``srun --mpi=list``: the plugin types and the
    versioned PMIx ones), or None when it does not say."""
    try:
        out = subprocess.run(
            [srun, "--mpi=list"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    text = out.stdout + out.stderr
    types = set(re.findall(r"^\s+([a-z][a-z0-9_]*)\s*$", text, re.M))
    for versions in re.findall(r"plugin versions available:\s*(.*)$", text, re.M):
        types.update(v.strip() for v in versions.split(",") if v.strip())
    return types or None


_NAMES: dict[str, type[Launcher]] = {"direct": Direct, "mpiexec": Mpiexec, "srun": Srun}


def resolve_launcher(launcher: str | Launcher) -> Launcher:
    """A launcher object from a name (``"direct"``, ``"mpiexec"``, ``"srun"``) or an instance."""
    if isinstance(launcher, Launcher):
        return launcher
    if isinstance(launcher, str) and launcher.lower() in _NAMES:
        return _NAMES[launcher.lower()]()
    raise ValueError(
        f"unknown launcher {launcher!r}; use one of {sorted(_NAMES)} or a Launcher instance "
        "(lightning_online.external.launchers.Direct/Mpiexec/Srun)"
    )
