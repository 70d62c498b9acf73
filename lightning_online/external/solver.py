"""``ExternalSolver``: a compiled solver program (C, C++, Fortran, or any language) as a solver.

Each run launches the program through a launcher (``mpiexec -n k``, ``srun`` or directly), hands
it its parameters and the address to stream to through the environment, and receives the time
steps it sends. The program uses the client library (``lightning_online.client`` in Python,
``csrc/lightning_online.h`` in C): connect, send one step (named fields, raw typed buffers behind
a checked fixed header), close.

Where code runs: in a study, the program connects straight to its training rank: the receiver
thread of that rank (``external._pool.ExternalPool``) multiplexes every connection of every run in flight,
and one launcher helper process per rank (``_launchd``) starts the programs, keeps the tail of
their output and ends their process groups. No Python process per run. Everything the DataModule
does for Python solvers holds here too: ``n_workers`` runs at a time, backpressure (the receiver
stops reading while the buffer is full, so the program blocks in its send), ``run_timeout``,
retries and the failure report. Calling the solver directly (``solver(theta)``) runs the same
machinery for one run, in the calling thread.

Why TCP and not an MPI port: ``MPI_Comm_accept`` cannot time out or be cancelled, and a peer that
dies inside a connected MPI job can take the receiving job down with it. A socket gives the
receiving side a clean end of file instead, so a crashed solver is one failed run, nothing more.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from lightning_online._util.checks import (
    check_choice,
    check_directory,
    check_environment,
    check_int,
    check_optional_int,
    check_real,
    check_string,
    check_template,
    refuse,
)
from lightning_online._wire import tcp as proto
from lightning_online.errors import ExternalRunError
from lightning_online.external._pool import run_once
from lightning_online.external.launchers import Launcher, resolve_launcher

__all__ = ["ExternalRunError", "ExternalSolver"]


class ExternalSolver:
    """Run an external program per simulation and yield the time steps it streams back.

    Use it wherever a solver goes (``OnlineDataModule(solver=ExternalSolver(...))``, a recipe's
    ``data.solver``). Calling it with a parameter vector launches one run and returns a generator
    of tuples of arrays, one tuple per time step, in the order of ``fields``.

    The program finds in its environment ``LIGHTNING_ONLINE_PARAMETERS`` (the parameters,
    comma-separated), ``LIGHTNING_ONLINE_ADDRESS`` (``host:port`` to connect to) and
    ``LIGHTNING_ONLINE_TOKEN`` (proves the connection belongs to this run). The command may also
    carry the parameters: ``{0}``, ``{1}``... are replaced by each parameter (format specs work:
    ``{0:.6g}``) and ``{theta}`` by all of them, comma-separated.

    Where code runs: in a study, the receiving side of every run lives in the receiver thread
    of its training rank, and the programs are started by one launcher helper process per rank
    (``python -m lightning_online.external._launchd``); a direct call runs the same machinery in the
    calling thread. Closing the generator ends the program's whole process group.

    Args:
        command: the program and its arguments, e.g. ``["./heat2d", "--nx", "32"]``.
        fields: names of the fields each step must carry, in the order the training batch gets
            them (e.g. ``["x", "y"]``); ``None`` takes the names and order of the first step.
        n_procs: processes per run (``mpiexec -n``/``srun --ntasks``).
        launcher: ``"mpiexec"`` (default), ``"srun"``, ``"direct"``, or a
            :class:`~lightning_online.external.launchers.Launcher` with options.
        n_steps: steps a complete run sends; a run that closes after fewer is a failure.
        env: extra environment variables for the program.
        cwd: working directory of the program.
        connect_timeout: seconds from launch until the program must have connected (includes
            an ``srun`` step waiting for resources).
        exit_timeout: seconds the program may take to exit after it closed the connection.
        host: the address to listen on, which the program is told to connect to (an IPv4 or
            IPv6 address or a name; ``::1`` is told as ``[::1]:port``); default: loopback for
            local launchers, every interface and this node's host name for ``srun``. Set it to
            the address of a fast interface on a cluster.
        echo_output: also print the program's output (it is always kept for failure reports).
        max_step_bytes: larger steps are refused as corrupt.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        fields: Sequence[str] | None = None,
        n_procs: int = 1,
        launcher: str | Launcher = "mpiexec",
        n_steps: int | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        connect_timeout: float = 120.0,
        exit_timeout: float = 30.0,
        host: str | None = None,
        echo_output: bool = False,
        max_step_bytes: int = 1 << 30,
    ) -> None:
        if isinstance(command, str) or not command or not all(isinstance(c, str) for c in command):
            raise ValueError(
                f"command must be a non-empty list of strings (the program and its arguments), "
                f"got {command!r}"
            )
        owner = "ExternalSolver"
        self._n_placeholders = max(
            check_template(c, f"command[{i}]", ("theta",), owner) for i, c in enumerate(command)
        )
        n_procs = check_int(n_procs, "n_procs", 1, owner)
        n_steps = check_optional_int(n_steps, "n_steps", 1, owner)
        connect_timeout = check_real(connect_timeout, "connect_timeout", owner, positive=True)
        exit_timeout = check_real(exit_timeout, "exit_timeout", owner, positive=True)
        # a step is at least a header and one descriptor
        max_step_bytes = check_int(
            max_step_bytes, "max_step_bytes", proto.DESCRIPTOR.itemsize, owner
        )
        if host is not None:
            host = check_string(host, "host", owner)
        env = check_environment(env, "env", owner)
        cwd = check_directory(cwd, "cwd", owner)
        echo_output = check_choice(echo_output, "echo_output", (True, False), owner)
        if fields is not None:
            if isinstance(fields, str):
                raise refuse("fields", "a list of names or None", fields, owner)
            fields = [check_string(f, "a field name", owner) for f in fields]
            if not fields or len(set(fields)) != len(fields):
                raise ValueError(f"fields must be distinct names, got {fields!r}")
            for f in fields:
                if not 0 < len(f.encode()) < proto.NAME_BYTES:
                    raise ValueError(f"field name {f!r} must be 1 to {proto.NAME_BYTES - 1} bytes")
        self.command = list(command)
        self.fields = fields
        self.n_procs = n_procs
        self.launcher = resolve_launcher(launcher)
        self.launcher.check(n_procs)
        self.n_steps = n_steps
        self.env = env
        self.cwd = cwd
        self.connect_timeout = connect_timeout
        self.exit_timeout = exit_timeout
        self.host = host
        self.echo_output = echo_output
        self.max_step_bytes = max_step_bytes
        self._check_program()

    def _check_program(self) -> None:
        prog = self.command[0]
        if "{" in prog:
            return
        base = self.cwd or os.getcwd()
        if shutil.which(prog, path=os.environ.get("PATH")) is None and not (
            os.sep in prog and os.path.exists(os.path.join(base, prog))
        ):
            raise FileNotFoundError(
                f"ExternalSolver: the program {prog!r} is neither on PATH nor a file relative "
                f"to {base!r}; build it first (see docs/external-solvers.md) or give its path"
            )

    def __repr__(self) -> str:
        return (
            f"ExternalSolver(command={self.command!r}, n_procs={self.n_procs}, "
            f"launcher={self.launcher!r})"
        )

    def check_dim(self, dim: int) -> None:
        """Refuse a command whose placeholders ask for more parameters than ``dim`` (called by
        ``OnlineDataModule`` with the parameter space, at construction)."""
        if getattr(self, "_n_placeholders", 0) > dim:
            raise ValueError(
                f"ExternalSolver: the command uses {{{self._n_placeholders - 1}}}, but the "
                f"parameter space has {dim} dimension(s) ({{0}} to {{{dim - 1}}}): "
                f"{self.command!r}"
            )

    def argv(self, theta: np.ndarray) -> list[str]:
        """The full command line of one run (launcher included) for parameters ``theta``."""
        values = [float(v) for v in theta]
        joined = ",".join(repr(v) for v in values)
        program = [c.format(*values, theta=joined) for c in self.command]
        return self.launcher.command(program, self.n_procs)

    def __call__(self, theta: np.ndarray) -> Iterator[tuple[np.ndarray, ...]]:
        theta = np.asarray(theta, dtype=np.float64).reshape(-1)
        if not np.isfinite(theta).all():
            raise ValueError(f"parameters must be finite, got {theta.tolist()}")
        return self._run(theta)

    def _run(self, theta: np.ndarray) -> Iterator[tuple[np.ndarray, ...]]:
        return run_once(self, theta)
