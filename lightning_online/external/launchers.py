"""How :class:`~lightning_online.ExternalSolver` starts one run of a solver program.

A launcher only turns the program's command line into the command that starts it on ``n_procs``
processes; it is a plain picklable object, so it travels with the solver to the worker that
starts the runs. Use the engine your machine already has: ``Direct`` (a serial program),
``Mpiexec`` (any MPI, e.g. the ``mpich`` wheel's), ``Srun`` (one SLURM job step per run inside the
training job's allocation).
"""

from __future__ import annotations

import shutil
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
    --job-name=... [args] program``. ``--exact`` gives each step only the resources it asks for, so
    concurrent runs share the allocation instead of queueing behind each other (SLURM >= 20.11;
    set ``exact=False`` for older versions). A step that waits for free resources counts toward
    ``ExternalSolver.connect_timeout``. The program connects back to the training node over TCP,
    so it advertises this node's host name (see ``ExternalSolver.host``).

    Args:
        nodes: ``--nodes`` per run (``None``: let SLURM choose).
        cpus_per_task: ``--cpus-per-task`` per rank of the program.
        args: extra options, e.g. ``["--mpi=pmi2"]`` or ``["--gpus-per-task=1"]``.
        executable: the ``srun`` command.
    """

    nodes: int | None = None
    cpus_per_task: int | None = None
    exact: bool = True
    job_name: str = "lightning-online-run"
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
        return [*argv, *self.args, *program]

    def check(self, n_procs: int) -> None:
        if self.nodes is not None and not 1 <= self.nodes <= n_procs:
            raise ValueError(f"Srun: nodes={self.nodes} must be between 1 and n_procs={n_procs}")
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise ValueError(f"Srun: cpus_per_task must be >= 1, got {self.cpus_per_task}")
        if shutil.which(self.executable) is None:
            raise FileNotFoundError(
                f"Srun launcher: {self.executable!r} is not on PATH; run the training job "
                "inside a SLURM allocation (sbatch/salloc), or use launcher='mpiexec'"
            )


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
