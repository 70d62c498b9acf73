"""``ExternalSolver``: a compiled solver program (C, C++, Fortran, or any language) as a solver.

Each call launches one run of the program through a launcher (``mpiexec -n k``, ``srun`` or
directly), hands it its parameters and the address to stream to through the environment, and
yields the time steps it sends. The program uses the client library (``lightning_online.client``
in Python, ``csrc/lightning_online.h`` in C): connect, send one step (named fields, raw typed
buffers behind a checked fixed header), close.

Where this runs: like any solver, inside the sandbox process of one MPI worker (``_runner``), on
the training node, so everything the DataModule does for Python solvers holds here too: one run
per worker at a time, backpressure (the sandbox stops reading the socket while the buffer is full,
so the program blocks in its send), ``run_timeout``, retries and the failure report. The program
itself runs in its own process group and is killed with its run, or with the sandbox.

Why TCP and not an MPI port: ``MPI_Comm_accept`` cannot time out or be cancelled, and a peer that
dies inside a connected MPI job can take the receiving job down with it. A socket gives the
receiving side a clean end of file instead, so a crashed solver is one failed run, nothing more.
"""

from __future__ import annotations

import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

import numpy as np

from lightning_online import _protocol as proto
from lightning_online._runner import die_with_parent, mpi_free_environ, read_exact, signal_name
from lightning_online.client import ENV_ADDRESS, ENV_PARAMETERS, ENV_TOKEN
from lightning_online.launchers import Launcher, resolve_launcher

__all__ = ["ExternalRunError", "ExternalSolver"]


class ExternalRunError(RuntimeError):
    """One run of an external program failed; the message says how, with its last output."""


class _Tail:
    """Drains the program's merged stdout/stderr in a thread and keeps the last lines, so that
    a failure report can show them and a chatty program never blocks on a full pipe."""

    def __init__(self, stream: IO[bytes], echo: bool, max_lines: int = 20) -> None:
        self.lines: deque[str] = deque(maxlen=max_lines)
        self._stream, self._echo = stream, echo
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        with self._stream:
            for raw in iter(self._stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.lines.append(line)
                if self._echo:
                    print(line, file=sys.stderr, flush=True)

    def text(self) -> str:
        self._thread.join(timeout=1.0)
        if not self.lines:
            return "(no output)"
        return "\n".join(f"    {line}" for line in self.lines)


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM when the sandbox dies (mpiexec and srun forward it
    to every rank), so that no solver run outlives the study that launched it."""
    die_with_parent(signal.SIGTERM)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    return f"killed by {signal_name(code)}" if code < 0 else f"exit code {code}"


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

    Args:
        command: the program and its arguments, e.g. ``["./heat2d", "--nx", "32"]``.
        fields: names of the fields each step must carry, in the order the training batch gets
            them (e.g. ``["x", "y"]``); ``None`` takes the names and order of the first step.
        n_procs: processes per run (``mpiexec -n``/``srun --ntasks``).
        launcher: ``"mpiexec"`` (default), ``"srun"``, ``"direct"``, or a
            :class:`~lightning_online.launchers.Launcher` with options.
        n_steps: steps a complete run sends; a run that closes after fewer is a failure.
        env: extra environment variables for the program.
        cwd: working directory of the program.
        connect_timeout: seconds from launch until the program must have connected (includes
            an ``srun`` step waiting for resources).
        exit_timeout: seconds the program may take to exit after it closed the connection.
        host: the address the program connects to; default: loopback for local launchers, this
            node's host name for ``srun``. Set it to the name of a fast interface on a cluster.
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
        if isinstance(n_procs, bool) or not isinstance(n_procs, int) or n_procs < 1:
            raise ValueError(f"n_procs must be a positive integer, got {n_procs!r}")
        if n_steps is not None and (
            isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1
        ):
            raise ValueError(f"n_steps must be a positive integer or None, got {n_steps!r}")
        for name, value in (("connect_timeout", connect_timeout), ("exit_timeout", exit_timeout)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
        if fields is not None:
            fields = [str(f) for f in fields]
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
        self.env = dict(env or {})
        self.cwd = cwd
        self.connect_timeout = float(connect_timeout)
        self.exit_timeout = float(exit_timeout)
        self.host = host
        self.echo_output = echo_output
        self.max_step_bytes = int(max_step_bytes)
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

    # -- one run ---------------------------------------------------------------------------

    def _addresses(self) -> tuple[str, str]:
        """(address to bind, address the program connects to)."""
        if self.host is not None:
            return "", self.host
        if self.launcher.remote:
            return "", socket.gethostname()
        return "127.0.0.1", "127.0.0.1"

    def _launch(self, theta: np.ndarray, address: str, token: str) -> subprocess.Popen[bytes]:
        env = mpi_free_environ()  # the program must not join the MPI job of its launcher
        env.update(self.env)
        env[ENV_ADDRESS] = address
        env[ENV_TOKEN] = token
        env[ENV_PARAMETERS] = ",".join(repr(float(v)) for v in theta)
        return subprocess.Popen(
            self.argv(theta),
            env=env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed as a whole
            preexec_fn=_die_with_parent,
        )

    def _fail(self, proc: subprocess.Popen[bytes], tail: _Tail, what: str) -> ExternalRunError:
        if proc.poll() is None:
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                pass
        return ExternalRunError(
            f"{what} ({_describe_exit(proc.poll())}); command: {' '.join(proc.args)}\n"  # type: ignore[arg-type]
            f"  last output of the program:\n{tail.text()}"
        )

    def _accept(
        self, listener: socket.socket, proc: subprocess.Popen[bytes], tail: _Tail, token: str
    ) -> list[socket.socket]:
        """The run's connections, one per part, in part order (connections without this run's
        token are dropped: a stray peer cannot take the run's place)."""
        deadline = time.monotonic() + self.connect_timeout
        parts: dict[int, socket.socket] = {}
        n_parts: int | None = None
        try:
            while n_parts is None or len(parts) < n_parts:
                left = deadline - time.monotonic()
                so_far = f"; {len(parts)} of {n_parts} parts connected" if n_parts else ""
                if left <= 0:
                    raise self._fail(
                        proc,
                        tail,
                        f"the program did not connect within {self.connect_timeout:g} s{so_far}",
                    )
                if not select.select([listener], [], [], min(left, 0.1))[0]:
                    if proc.poll() is not None:
                        raise self._fail(
                            proc, tail, f"the program ended before it connected{so_far}"
                        )
                    continue
                conn, _ = listener.accept()
                hello = self._hello(conn, token, deadline)
                if hello is None:
                    conn.close()  # a stray or foreign connection: keep waiting for the program
                    continue
                part, n = hello
                parts_before = n_parts
                n_parts = n if n_parts is None else n_parts
                if n != n_parts or part in parts:
                    conn.close()
                    raise self._fail(
                        proc,
                        tail,
                        f"a connection says it is part {part} of {n}, but part(s) "
                        f"{sorted(parts)} of {parts_before} are already connected",
                    )
                conn.settimeout(None)
                parts[part] = conn
        except BaseException:
            for conn in parts.values():
                conn.close()
            raise
        return [parts[i] for i in range(n_parts)]

    @staticmethod
    def _hello(conn: socket.socket, token: str, deadline: float) -> tuple[int, int] | None:
        """``(part, n_parts)`` from a connection's HELLO, or None if it is not this run's."""
        # A stray peer that never says hello must not hold up the program's connection.
        conn.settimeout(min(5.0, max(0.5, deadline - time.monotonic())))
        inp = conn.makefile("rb", buffering=0)
        try:
            head = read_exact(inp, proto.HEADER.size)
            kind, _, _, size = proto.decode_header(head) if head else (0, 0, 0, 0)
            if kind != proto.HELLO or size > 1024:
                return None
            payload = read_exact(inp, size)
            if payload is None:
                return None
            part, n_parts, got = proto.decode_hello(payload)
        except (OSError, proto.ProtocolError):
            return None
        finally:
            inp.close()  # the socket itself stays open
        return (part, n_parts) if secrets.compare_digest(got, token.encode()) else None

    def _message(
        self, inp: IO[bytes], where: str, step: int, proc: subprocess.Popen[bytes], tail: _Tail
    ) -> tuple[int, int, int, bytearray]:
        """The next message of one connection as ``(kind, n_fields, step, payload)``; a
        connection that breaks or breaks the protocol fails the run."""
        try:
            head = read_exact(inp, proto.HEADER.size)
            if head is None:
                raise self._fail(
                    proc,
                    tail,
                    f"the program closed the connection{where} after {step} steps without "
                    "lo_close/close()",
                )
            kind, n_fields, index, size = proto.decode_header(head)
            if size > self.max_step_bytes:
                raise proto.ProtocolError(
                    f"message of {size} bytes exceeds max_step_bytes={self.max_step_bytes}"
                )
            payload = read_exact(inp, size) if size else bytearray()
        except ConnectionError as exc:
            raise self._fail(
                proc, tail, f"connection{where} lost after {step} steps: {exc}"
            ) from None
        except proto.ProtocolError as exc:
            raise self._fail(proc, tail, f"step {step}{where}: protocol error: {exc}") from None
        if payload is None:
            raise self._fail(proc, tail, f"the program died while sending step {step}{where}")
        if kind == proto.ERROR:
            msg = payload.decode("utf-8", "replace")
            raise self._fail(proc, tail, f"the program reported an error{where}: {msg}")
        if kind == proto.HELLO:
            raise self._fail(proc, tail, f"unexpected HELLO message{where}")
        if index != step:
            what = "closed after" if kind == proto.CLOSE else "sent step"
            raise self._fail(proc, tail, f"the program {what} {index}{where}, expected {step}")
        return kind, n_fields, index, payload

    def _run(self, theta: np.ndarray) -> Iterator[tuple[np.ndarray, ...]]:
        bind, host = self._addresses()
        listener = socket.create_server((bind, 0))
        token = secrets.token_hex(16)
        proc = self._launch(theta, f"{host}:{listener.getsockname()[1]}", token)
        assert proc.stdout is not None
        tail = _Tail(proc.stdout, self.echo_output)
        conns: list[socket.socket] = []
        inps: list[IO[bytes]] = []  # the connections' reading sides (read_exact wants readinto)
        try:
            try:
                conns = self._accept(listener, proc, tail, token)
            finally:
                listener.close()
            inps = [c.makefile("rb", buffering=0) for c in conns]
            where = [
                f" (part {i} of {len(conns)})" if len(conns) > 1 else "" for i in range(len(conns))
            ]
            names = self.fields
            step = 0
            while True:
                # Step k of every part, in part order: each part's socket buffers what it sent
                # meanwhile, so the parts never wait for each other through this loop.
                msgs = [
                    self._message(f, w, step, proc, tail) for f, w in zip(inps, where, strict=True)
                ]
                kinds = {m[0] for m in msgs}
                if kinds == {proto.CLOSE}:
                    break
                if kinds != {proto.STEP}:
                    closed = [i for i, m in enumerate(msgs) if m[0] == proto.CLOSE]
                    raise self._fail(
                        proc,
                        tail,
                        f"part(s) {closed} closed after {step} steps, the others did not",
                    )
                pieces = []
                for (_, n_fields, _, payload), w in zip(msgs, where, strict=True):
                    try:
                        pieces.append(proto.decode_step(n_fields, payload))
                    except proto.ProtocolError as exc:
                        raise self._fail(proc, tail, f"step {step}{w}: {exc}") from None
                    if names is None:
                        names = list(pieces[0])
                    if sorted(pieces[-1]) != sorted(names):
                        raise self._fail(
                            proc,
                            tail,
                            f"step {step}{w} has fields {list(pieces[-1])}, expected {names}",
                        )
                try:
                    sample = tuple(_join([p[n] for p in pieces], n) for n in names)
                except ValueError as exc:
                    raise self._fail(proc, tail, f"step {step}: {exc}") from None
                yield sample
                step += 1
            for end in (*inps, *conns):
                end.close()
            inps, conns = [], []
            try:
                code = proc.wait(timeout=self.exit_timeout)
            except subprocess.TimeoutExpired:
                raise self._fail(
                    proc,
                    tail,
                    f"the program did not exit within {self.exit_timeout:g} s of closing",
                ) from None
            if code != 0:
                raise self._fail(proc, tail, f"the program sent {step} steps, then failed")
        finally:
            for end in (*inps, *conns):
                end.close()
            _stop(proc)


def _join(pieces: list[np.ndarray], name: str) -> np.ndarray:
    """One field of a step from its parts: concatenated along the first axis, in part order."""
    if len(pieces) == 1:
        return pieces[0]
    first = pieces[0]
    for i, p in enumerate(pieces):
        if p.ndim == 0 or p.dtype != first.dtype or p.shape[1:] != first.shape[1:]:
            raise ValueError(
                f"field {name!r}: part {i} sent {p.dtype}{p.shape}, part 0 {first.dtype}"
                f"{first.shape}; parts must agree on dtype and on every extent but the first"
            )
    return np.concatenate(pieces, axis=0)


def _stop(proc: subprocess.Popen[Any]) -> None:
    """End a run's whole process group: SIGTERM (mpiexec and srun pass it on), then SIGKILL."""
    if proc.poll() is None:
        for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
    else:  # the launcher is gone; make sure nothing it started lingers in its group
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
