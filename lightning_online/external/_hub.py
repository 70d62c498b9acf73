"""Receiving side of external programs: their connections land straight on the training rank.

(Over 400 lines on purpose: :class:`_Hub` is one event loop over every connection of every run
in flight, and its parts share that state; the pool around it is ``_pool``.)

Where code runs: everything here runs in one thread of the training process, the *receiver*
thread of :class:`ExternalPool` (or, for a direct ``ExternalSolver(...)(theta)`` call, the thread
that iterates the generator). The programs themselves are started, drained and ended by one
helper process per pool, ``lightning_online.external._launchd``; there is no Python process per run.

One listening socket per pool. Every connection is a non-blocking socket multiplexed with
``selectors`` (epoll): a connection first sends HELLO with its run's token (a stray peer, a wrong
token or a peer that says nothing within a few seconds is closed and never affects a run), then
STEP messages, each read incrementally into buffers of the connection that are reused from
message to message (grown only for a larger message, every length checked against
``max_step_bytes`` before anything is allocated). A run with several senders (*parts*) delivers
step k once every part has sent it; a part that is ahead waits, unread, so the program blocks in
its send. While the training buffer has no room, no sample data is read at all (backpressure).

A run is complete once every part has sent CLOSE and the program's leader has exited with status
0; everything else fails the run, with the cause, how the program ended and its last output.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import select
import selectors
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from lightning_online._transport.runner import mpi_free_environ, signal_name
from lightning_online._wire import tcp as proto
from lightning_online._wire.frames import FrameReader, encode_frame
from lightning_online._wire.samples import NO_SAMPLE, cap_text
from lightning_online._wire.tcp import ENV_ADDRESS, ENV_PARAMETERS, ENV_TOKEN
from lightning_online.external._launchd import GRACE

if TYPE_CHECKING:
    from lightning_online.external.launchers import Launcher


class Program(Protocol):
    """What the hub reads of a program's description: the attributes of
    :class:`~lightning_online.ExternalSolver` (which sits above this module and is never
    imported here)."""

    fields: list[str] | None
    n_procs: int
    launcher: Launcher
    n_steps: int | None
    env: dict[str, str]
    cwd: str | None
    host: str | None
    connect_timeout: float
    exit_timeout: float
    echo_output: bool
    max_step_bytes: int

    def argv(self, theta: np.ndarray) -> list[str]: ...


log = logging.getLogger(__name__)

__all__ = ["Program"]

HELLO_SECONDS = 5.0  # a connection that has not said HELLO by then is closed
_HELLO_LIMIT = 8 + 1024  # bytes of a HELLO payload: part, n_parts and the token
EXIT_GRACE = 2.0  # a failing program may exit by itself this long before it is stopped
GONE_GRACE = 0.5  # after a program's exit, time for its last connections to be accepted
_SWEEP = 0.05  # seconds between two looks at the deadlines
_BACKLOG = 4096
_BUDGET = 8  # messages read from one connection before the others get their turn

# The *connection phase* of a program in flight, for this event loop only (which deadline
# applies, which sockets to read). It is not the run's life cycle: that is _study/runs.py, which
# the ledger moves when this hub reports the run's samples and its end (launched until the first
# sample, streaming, then completed / failed / stopped), the same as for a Python solver.
_CONNECTING, _STREAMING, _CLOSED, _FAILING, _DONE = range(5)
# _fill results
_MORE, _COMPLETE, _EOF = range(3)
_LISTENER, _DATA, _HELPER, _WAKE = "listener", "data", "helper", "wake"


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets (``[::1]:5000``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _describe_exit(code: int, stopped: bool = False) -> str:
    """How a program ended; ``stopped``: it was still running when its run ended it."""
    how = f"killed by {signal_name(code)}" if code < 0 else f"exit code {code}"
    return f"still running, stopped: {how}" if stopped else how


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


class _Conn:
    """One connection: its socket and the buffers its messages are read into (reused)."""

    __slots__ = (
        "active",
        "body",
        "bpos",
        "bview",
        "deadline",
        "head",
        "hpos",
        "hview",
        "index",
        "kind",
        "n_fields",
        "need",
        "part",
        "ready",
        "run",
        "sock",
    )

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock: socket.socket | None = sock
        self.deadline = deadline
        self.head = bytearray(proto.HEADER.size)
        self.hview = memoryview(self.head)
        self.body = bytearray(64)
        self.bview = memoryview(self.body)
        self.hpos = self.bpos = self.need = 0
        self.kind = self.n_fields = self.index = 0
        self.run: _Run | None = None
        self.part = 0
        self.ready = False  # holds a complete message not yet consumed
        self.active = False  # registered for reading sample data

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.body = bytearray()
        self.bview = memoryview(self.body)


class _Run:
    """One run in flight: its program, its connections and where its stream stands."""

    __slots__ = (
        "argv",
        "blocked0",
        "code",
        "connect_deadline",
        "conns",
        "exit_deadline",
        "first",
        "gone_busy",
        "gone_deadline",
        "held",
        "key",
        "launch_error",
        "n_parts",
        "n_ready",
        "names",
        "pid",
        "sim_id",
        "started",
        "state",
        "step",
        "stopped",
        "tail",
        "theta",
        "token",
        "what",
    )

    def __init__(self, key: int, sim_id: int, theta: np.ndarray, argv: list[str]) -> None:
        self.key, self.sim_id, self.theta, self.argv = key, sim_id, theta, argv
        self.token = secrets.token_hex(16).encode("ascii")
        self.state = _CONNECTING
        self.n_parts: int | None = None
        self.conns: dict[int, _Conn] = {}
        self.n_ready = 0
        self.step = 0
        self.names: list[str] | None = None
        self.first: list[tuple[str, tuple[int, ...]]] | None = None  # step 0's dtypes/shapes
        self.started = time.monotonic()
        self.blocked0 = 0.0
        self.connect_deadline = 0.0
        self.exit_deadline: float | None = None
        self.gone_deadline: float | None = None
        self.gone_busy: float | None = None
        self.code: int | None = None
        self.stopped = False
        self.tail = ""
        self.pid: int | None = None
        self.launch_error: str | None = None
        self.held = False
        self.what = ""  # why it failed, once it does

    def where(self, part: int) -> str:
        return f" (part {part} of {self.n_parts})" if self.n_parts and self.n_parts > 1 else ""


class _Helper:
    """The pool's end of the ``_launchd`` helper: its process and the two pipes to it."""

    def __init__(self, timeout: float) -> None:
        # This package, wherever it lies (a source checkout too), and not whatever a
        # ``lightning_online`` in the working directory would be (python -m would take that).
        root = str(Path(__file__).resolve().parents[2])
        code = (
            f"import sys; sys.path.insert(0, {root!r}); "
            "from lightning_online.external._launchd import main; main()"
        )
        # No preexec_fn: CPython then starts the helper with vfork/posix_spawn, the only safe
        # way to start a process from a threaded (MPI) process. -S: the standard library only.
        self.proc = subprocess.Popen(
            [sys.executable, "-S", "-c", code, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=mpi_free_environ(),  # the helper must not join an MPI job
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.wfd, self.rfd = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        os.set_blocking(self.wfd, False)
        os.set_blocking(self.rfd, False)
        self.reader = FrameReader()
        self.out = bytearray()  # commands not yet written (the pipe was full)
        self.pid = self.proc.pid
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                rc = self.proc.poll()
                self.close()
                raise RuntimeError(
                    "the launcher helper (lightning_online.external._launchd) "
                    + (f"exited with code {rc}" if rc is not None else "did not start")
                    + f" within {timeout:g} s"
                )
            select.select([self.rfd], [], [], min(left, 0.1))
            events = self.read()
            if events is None:
                continue
            if any(e.get("ev") == "ready" for e in events):
                break

    def send(self, obj: dict[str, Any]) -> None:
        self.out += encode_frame(obj)
        self.flush()

    def flush(self) -> None:
        while self.out:
            try:
                n = os.write(self.wfd, self.out)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except BrokenPipeError:
                self.out.clear()
                return
            del self.out[:n]

    def read(self) -> list[dict[str, Any]] | None:
        """The events waiting in the pipe; None at end of file (the helper is gone)."""
        events: list[dict[str, Any]] = []
        while True:
            try:
                data = os.read(self.rfd, 1 << 16)
            except BlockingIOError:
                return events
            except InterruptedError:
                continue
            if not data:
                return None if not events else events
            events += self.reader.feed(data)

    def close(self, timeout: float = GRACE + 7.0) -> None:
        """Ask the helper to end every group and exit; wait for it (kill it if it hangs)."""
        self.out += encode_frame({"op": "quit"})
        with contextlib.suppress(OSError):
            os.set_blocking(self.wfd, True)
            while self.out:
                del self.out[: os.write(self.wfd, self.out)]
        self.out.clear()
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                f.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("the launcher helper did not exit within %.0f s; killing it", timeout)
            self.proc.kill()
            self.proc.wait()


class _Hub:
    """Listener, connections, runs and the launcher helper of one pool (or of one direct run).

    ``deliver(run, step, fields)`` gets every complete step (arrays valid during the call) and
    returns a reason to fail the run, or None; ``finished(run, ok, reason)`` is called once per
    run, unless :meth:`close` ended it; ``has_room()`` is asked before every delivery.
    """

    def __init__(
        self,
        solver: Program,
        *,
        deliver: Callable[[_Run, int, tuple[np.ndarray, ...]], str | None],
        finished: Callable[[_Run, bool, str], None],
        has_room: Callable[[], bool],
        run_timeout: float | None = None,
    ) -> None:
        self.solver = solver
        self.deliver, self.finished, self.has_room = deliver, finished, has_room
        self.run_timeout = run_timeout
        self.runs: dict[int, _Run] = {}
        self._tokens: dict[bytes, _Run] = {}
        self._pending: dict[int, _Conn] = {}  # connections before their HELLO, by fd
        self._held: deque[_Run] = deque()  # runs with a step ready while there was no room
        self._next_key = 0
        self._ctl = selectors.DefaultSelector()
        self._data = selectors.DefaultSelector()  # sample data; nested in _ctl while reading
        self._reading = False
        self._blocked = 0.0  # seconds spent without room, in all
        self._blocked_since: float | None = None
        self._next_sweep = 0.0
        self._listener_paused = False
        self.connections = 0  # open connections of runs (after their HELLO); any thread reads it
        self.listener: socket.socket | None = None
        self.address = ""
        self.helper: _Helper | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._ctl.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self.closed = False

    # -- setting up --------------------------------------------------------------------------
    def listen(self) -> None:
        """Open the listening socket: loopback for local launchers, every interface (and this
        node's host name for the programs) for remote ones, exactly ``solver.host`` if set."""
        host = self.solver.host
        if host is None:
            if self.solver.launcher.remote:
                if socket.has_dualstack_ipv6():
                    sock = socket.create_server(
                        ("", 0), family=socket.AF_INET6, backlog=_BACKLOG, dualstack_ipv6=True
                    )
                else:
                    sock = socket.create_server(("", 0), backlog=_BACKLOG)
                told = socket.gethostname()
            else:
                sock = socket.create_server(("127.0.0.1", 0), backlog=_BACKLOG)
                told = "127.0.0.1"
        else:
            try:
                family, kind, protocol, _, addr = socket.getaddrinfo(
                    host, 0, socket.AF_UNSPEC, socket.SOCK_STREAM
                )[0]
                sock = socket.socket(family, kind, protocol)
                try:
                    sock.bind(addr)
                    sock.listen(_BACKLOG)
                except OSError:
                    sock.close()
                    raise
            except OSError as exc:
                raise OSError(f"ExternalSolver(host={host!r}): cannot listen there: {exc}") from exc
            told = socket.getnameinfo(sock.getsockname(), socket.NI_NUMERICHOST)[0]
        sock.setblocking(False)
        self.listener = sock
        self.address = format_address(told, sock.getsockname()[1])
        self._ctl.register(sock, selectors.EVENT_READ, _LISTENER)

    def start_helper(self, timeout: float = 60.0) -> None:
        """Start the launcher helper (from the thread that owns this hub: the helper hears of
        that thread's end)."""
        self.helper = _Helper(timeout)
        env = mpi_free_environ()  # the program must not join the MPI job of its launcher
        env.update(self.solver.env)
        self.helper.send({"op": "config", "env": env})
        self._ctl.register(self.helper.rfd, selectors.EVENT_READ, _HELPER)

    # -- runs --------------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Runs whose program may still be running (ending ones included)."""
        return len(self.runs)

    def buffer_bytes(self) -> int:
        """Bytes of the connections' message buffers (receiver thread; for measurements)."""
        conns = [c for r in list(self.runs.values()) for c in list(r.conns.values())]
        return sum(len(c.head) + len(c.body) for c in conns + list(self._pending.values()))

    def launch(self, sim_id: int, theta: np.ndarray) -> _Run:
        assert self.helper is not None
        theta = np.asarray(theta, dtype=np.float64).reshape(-1)
        run = _Run(self._next_key, sim_id, theta, self.solver.argv(theta))
        self._next_key += 1
        run.connect_deadline = run.started + self.solver.connect_timeout
        run.blocked0 = self._blocked_now(run.started)
        self.runs[run.key] = run
        self._tokens[run.token] = run
        env = {
            ENV_ADDRESS: self.address,
            ENV_TOKEN: run.token.decode(),
            ENV_PARAMETERS: ",".join(repr(float(v)) for v in theta),
        }
        self.helper.send(
            {
                "op": "launch",
                "run": run.key,
                "argv": run.argv,
                "env": env,
                "cwd": self.solver.cwd,
                "echo": self.solver.echo_output,
            }
        )
        self._watch_helper_writes()
        return run

    def busy(self, run: _Run, now: float) -> float:
        """Seconds the run has been in flight, less the time without room (backpressure)."""
        return now - run.started - (self._blocked_now(now) - run.blocked0)

    def _blocked_now(self, now: float) -> float:
        since = self._blocked_since
        return self._blocked + (now - since if since is not None else 0.0)

    # -- the loop ----------------------------------------------------------------------------
    def wake(self) -> None:
        """Cut the current wait short (any thread)."""
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for events and handle them."""
        now = time.monotonic()
        room = self.has_room()
        if room and self._blocked_since is not None:
            self._blocked += now - self._blocked_since
            self._blocked_since = None
        elif not room and self._blocked_since is None:
            self._blocked_since = now
        while room and self._held:
            run = self._held.popleft()
            run.held = False
            if run.state in (_CONNECTING, _STREAMING):
                self._advance(run)
            room = self.has_room()
        self._set_reading(room and not self._held)
        if now >= self._next_sweep:
            self._sweep(now)
            self._next_sweep = now + _SWEEP
        timeout = max(0.0, min(timeout, self._next_sweep - now))
        for key, mask in self._ctl.select(timeout):
            tag = key.data
            if tag is _DATA:
                for dkey, _ in self._data.select(0):
                    self._on_data(dkey.data)
            elif isinstance(tag, _Conn):
                self._on_hello(tag)
            elif tag is _LISTENER:
                self._accept()
            elif tag is _HELPER:
                if mask & selectors.EVENT_WRITE:
                    self._flush_helper()
                else:
                    self._on_helper()
            elif tag is _WAKE:
                with contextlib.suppress(OSError):
                    while self._wake_r.recv(4096):
                        pass

    def _set_reading(self, on: bool) -> None:
        if on and not self._reading:
            self._ctl.register(self._data.fileno(), selectors.EVENT_READ, _DATA)
        elif not on and self._reading:
            self._ctl.unregister(self._data.fileno())
        self._reading = on

    def _sweep(self, now: float) -> None:
        """Deadlines: connecting, exiting, run_timeout, silent connections."""
        if self._listener_paused and self.listener is not None:
            self._listener_paused = False
            self._ctl.register(self.listener, selectors.EVENT_READ, _LISTENER)
        s = self.solver
        if any(
            r.state == _CONNECTING and r.gone_deadline is not None and now >= r.gone_deadline
            for r in self.runs.values()
        ):
            self._settle()
        for run in list(self.runs.values()):
            if run.state == _CONNECTING:
                so_far = (
                    f"; {len(run.conns)} of {run.n_parts} parts connected" if run.n_parts else ""
                )
                if run.gone_deadline is not None and now >= run.gone_deadline:
                    self._fail(run, f"the program ended before it connected{so_far}")
                elif now >= run.connect_deadline:
                    self._fail(
                        run,
                        f"the program did not connect within {s.connect_timeout:g} s{so_far}",
                        0,
                    )
            elif run.state == _CLOSED and run.exit_deadline is not None:
                if now >= run.exit_deadline:
                    self._fail(
                        run, f"the program did not exit within {s.exit_timeout:g} s of closing", 0
                    )
            if run.state in (_CONNECTING, _STREAMING, _CLOSED):
                busy = self.busy(run, now)
                if self.run_timeout is not None and busy >= self.run_timeout:
                    self._fail(run, f"timed out after {self.run_timeout:g} s", 0)
                elif run.gone_busy is not None and busy >= run.gone_busy:
                    self._fail(
                        run,
                        f"the program exited, but its connection(s) stayed open "
                        f"{s.exit_timeout:g} s after it",
                    )
        for conn in list(self._pending.values()):
            if now >= conn.deadline:
                self._drop_pending(conn)

    # -- connections -------------------------------------------------------------------------
    def _settle(self) -> None:
        """Accept every waiting connection and read every HELLO already sent: before a program
        that exited is declared never connected, whatever it sent must have been looked at."""
        if self.listener is not None and not self._listener_paused:
            self._accept(limit=1 << 30)
        for conn in list(self._pending.values()):
            self._on_hello(conn)

    def _accept(self, limit: int = 256) -> None:
        assert self.listener is not None
        deadline = time.monotonic() + HELLO_SECONDS
        for _ in range(limit):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("cannot accept solver connections now: %s", exc)
                    self._ctl.unregister(self.listener)  # until the next sweep
                    self._listener_paused = True
                return
            sock.setblocking(False)
            conn = _Conn(sock, deadline)
            self._pending[sock.fileno()] = conn
            self._ctl.register(sock, selectors.EVENT_READ, conn)

    def _drop_pending(self, conn: _Conn) -> None:
        if conn.sock is not None:
            self._ctl.unregister(conn.sock)
            self._pending.pop(conn.sock.fileno(), None)
        conn.close()

    def _fill(self, conn: _Conn, limit: int, hello: bool = False) -> int:
        """Read what is there of the connection's current message: ``_COMPLETE`` (kind, index,
        and payload in ``conn.bview[:conn.need]``), ``_MORE`` or ``_EOF``. Raises
        ``ProtocolError`` for a bad header, ``OSError`` for a broken connection."""
        sock = conn.sock
        assert sock is not None
        size = proto.HEADER.size
        while True:
            try:
                if conn.hpos < size:
                    n = sock.recv_into(conn.hview[conn.hpos :], size - conn.hpos)
                    if not n:
                        return _EOF
                    conn.hpos += n
                    if conn.hpos < size:
                        continue
                    kind, n_fields, index, need = proto.decode_header(conn.head)
                    if hello and kind != proto.HELLO:
                        raise proto.ProtocolError("the first message is not a HELLO")
                    if need > limit:
                        raise proto.ProtocolError(
                            f"message of {need} bytes exceeds max_step_bytes={limit}"
                        )
                    conn.kind, conn.n_fields, conn.index, conn.need = kind, n_fields, index, need
                    conn.bpos = 0
                    if need > len(conn.body):  # grow once; never a buffer per message
                        conn.body = bytearray(need)
                        conn.bview = memoryview(conn.body)
                else:
                    n = sock.recv_into(conn.bview[conn.bpos : conn.need])
                    if not n:
                        return _EOF
                    conn.bpos += n
                if conn.hpos == size and conn.bpos == conn.need:
                    conn.hpos = 0
                    return _COMPLETE
            except (BlockingIOError, InterruptedError):
                return _MORE

    def _on_hello(self, conn: _Conn) -> None:
        if conn.sock is None:  # dropped earlier in this round of events
            return
        try:
            status = self._fill(conn, _HELLO_LIMIT, hello=True)
        except (OSError, proto.ProtocolError) as exc:
            log.debug("dropping a connection that does not say HELLO: %s", exc)
            self._drop_pending(conn)
            return
        if status == _MORE:
            return
        run, part, n_parts, token = None, 0, 0, b""
        if status == _COMPLETE:
            try:
                part, n_parts, token = proto.decode_hello(conn.bview[: conn.need])
                run = self._tokens.get(token)
            except proto.ProtocolError as exc:
                log.debug("dropping a connection with a bad HELLO: %s", exc)
        if run is None or not secrets.compare_digest(token, run.token):
            self._drop_pending(conn)  # a stray peer, a foreign token or a finished run
            return
        assert conn.sock is not None
        self._ctl.unregister(conn.sock)
        del self._pending[conn.sock.fileno()]
        if run.state != _CONNECTING or (
            run.n_parts is not None and (n_parts != run.n_parts or part in run.conns)
        ):
            conn.close()
            self._fail(run, self._duplicate_part(run, part, n_parts))
            return
        run.n_parts = n_parts
        conn.run, conn.part = run, part
        run.conns[part] = conn
        self.connections += 1
        self._resume(conn)
        if len(run.conns) == n_parts:
            run.state = _STREAMING

    def _duplicate_part(self, run: _Run, part: int, n_parts: int) -> str:
        """Why a second connection claims a part already taken: most often a run of several MPI
        ranks whose ranks each came up as a singleton (every one "rank 0 of 1")."""
        if run.conns:
            taken = f"part(s) {sorted(run.conns)} of {run.n_parts} are already connected"
        else:
            taken = f"the run's {run.n_parts} part(s) already sent their steps and closed"
        text = f"a connection says it is part {part} of {n_parts}, but {taken}"
        n_procs = self.solver.n_procs
        if n_parts != 1 or part != 0 or n_procs < 2:
            return text
        launcher = self.solver.launcher
        if hasattr(launcher, "mpi"):  # Srun
            given = launcher.mpi
            used = f"--mpi={given}" if given is not None else "the site's default --mpi"
            fix = (
                f"its steps ran with {used}, which the program's MPI does not speak; give the "
                "launcher the process-manager interface of the program's MPI: Srun(mpi='pmi2') "
                "for MPICH builds (the mpich wheel, Intel MPI, Cray MPICH), Srun(mpi='pmix') "
                "for PMIx builds (Open MPI); `srun --mpi=list` names what this SLURM offers"
            )
        else:
            fix = (
                "start the program with the mpiexec of the MPI it was compiled with "
                "(Mpiexec('/path/to/mpiexec')), or build it with the MPI whose mpiexec is used"
            )
        return (
            f"{text}: the run was started as {n_procs} MPI processes but each came up as an MPI "
            f"singleton (rank 0 of 1), so the launcher gave them no process manager they "
            f"understand; {fix} (launcher: {launcher!r})"
        )

    def _pause(self, conn: _Conn) -> None:
        if conn.active and conn.sock is not None:
            self._data.unregister(conn.sock)
            conn.active = False

    def _resume(self, conn: _Conn) -> None:
        if not conn.active and conn.sock is not None:
            self._data.register(conn.sock, selectors.EVENT_READ, conn)
            conn.active = True

    def _on_data(self, conn: _Conn) -> None:
        run = conn.run
        assert run is not None
        limit = self.solver.max_step_bytes
        for _ in range(_BUDGET):
            if not conn.active or run.state not in (_CONNECTING, _STREAMING):
                return
            where = run.where(conn.part)
            try:
                status = self._fill(conn, limit)
            except proto.ProtocolError as exc:
                self._fail(run, f"step {run.step}{where}: protocol error: {exc}")
                return
            except OSError as exc:
                self._fail(run, f"connection{where} lost after {run.step} steps: {exc}")
                return
            if status == _MORE:
                return
            if status == _EOF:
                if conn.hpos == 0 and conn.bpos == conn.need:
                    self._fail(
                        run,
                        f"the program closed the connection{where} after {run.step} steps "
                        "without lo_close/close()",
                    )
                else:
                    self._fail(run, f"the program died while sending step {run.step}{where}")
                return
            self._on_message(run, conn)

    def _on_message(self, run: _Run, conn: _Conn) -> None:
        where = run.where(conn.part)
        if conn.kind == proto.ERROR:
            text = cap_text(conn.bview[: conn.need])
            self._fail(run, f"the program reported an error{where}: {text}")
            return
        if conn.kind == proto.HELLO:
            self._fail(run, f"unexpected HELLO message{where}")
            return
        if conn.index != run.step:
            what = "closed after" if conn.kind == proto.CLOSE else "sent step"
            self._fail(run, f"the program {what} {conn.index}{where}, expected {run.step}")
            return
        conn.ready = True
        run.n_ready += 1
        if run.n_ready < (run.n_parts or 1):
            self._pause(conn)  # ahead of another part: wait, unread, for it
            return
        self._advance(run)

    def _advance(self, run: _Run) -> None:
        """Every part holds its message for the current step: close, fail or deliver it."""
        conns = [run.conns[i] for i in range(run.n_parts or 1)]
        kinds = {c.kind for c in conns}
        if kinds == {proto.CLOSE}:
            self._all_closed(run)
            return
        if proto.CLOSE in kinds:
            closed = [i for i, c in enumerate(conns) if c.kind == proto.CLOSE]
            self._fail(run, f"part(s) {closed} closed after {run.step} steps, the others did not")
            return
        if not self.has_room():  # backpressure: keep the step in the buffers, read no more
            for c in conns:
                self._pause(c)
            run.held = True
            self._held.append(run)
            self._set_reading(False)
            return
        step, names = run.step, run.names
        pieces = []
        for c in conns:
            where = run.where(c.part)
            try:
                fields = proto.decode_step(c.n_fields, c.bview[: c.need])
            except proto.ProtocolError as exc:
                self._fail(run, f"step {step}{where}: {exc}")
                return
            if names is None:
                names = run.names = self.solver.fields or list(fields)
            if sorted(fields) != sorted(names):
                self._fail(run, f"step {step}{where} has fields {list(fields)}, expected {names}")
                return
            pieces.append(fields)
        assert names is not None  # set by the first part
        try:
            sample = tuple(_join([p[n] for p in pieces], n) for n in names)
        except ValueError as exc:
            self._fail(run, f"step {step}: {exc}")
            return
        del pieces
        reason = self.deliver(run, step, sample)
        del sample  # views into the connections' buffers, which the next message overwrites
        if reason is not None:
            self._fail(run, reason)
            return
        run.step += 1
        run.n_ready = 0
        for c in conns:
            c.ready = False
            self._resume(c)

    def _all_closed(self, run: _Run) -> None:
        self._drop_conns(run)
        n = self.solver.n_steps
        if n is not None and 0 < run.step < n:  # no step at all: NO_SAMPLE, as on every path
            self._fail(run, f"the program yielded {run.step} of {n} announced time steps")
            return
        run.state = _CLOSED
        if run.code is not None:
            self._complete(run)
        else:
            run.exit_deadline = time.monotonic() + self.solver.exit_timeout
            # Until the program exits, a late connection of this run is still recognised: a rank
            # that came up as an MPI singleton after another finished alone fails the run with
            # the reason (see _duplicate_part), not as a generic failed exit.
            self._tokens[run.token] = run

    def _complete(self, run: _Run) -> None:
        if run.code == 0 and run.step == 0:  # closed cleanly without a step: nothing to train on
            self._done(run, False, NO_SAMPLE)
        elif run.code == 0:
            self._done(run, True, "")
        else:
            self._fail(run, f"the program sent {run.step} steps, then failed")

    def _drop_conns(self, run: _Run) -> None:
        for conn in run.conns.values():
            self._pause(conn)
            conn.close()
        self.connections -= len(run.conns)
        run.conns = {}
        self._tokens.pop(run.token, None)

    # -- ending runs -------------------------------------------------------------------------
    def _fail(self, run: _Run, what: str, wait: float = EXIT_GRACE) -> None:
        """Fail the run: close its connections, end its program (after ``wait`` seconds unless
        it exits by itself), then report, with how it ended and its last output."""
        if run.state in (_FAILING, _DONE):
            return
        run.state, run.what = _FAILING, what
        self._drop_conns(run)
        if run.held:
            run.held = False
            with contextlib.suppress(ValueError):
                self._held.remove(run)
        if run.code is not None or run.launch_error is not None:
            self._report(run)
        else:
            assert self.helper is not None
            self.helper.send({"op": "end", "run": run.key, "wait": wait})
            self._watch_helper_writes()

    def _report(self, run: _Run) -> None:
        if run.launch_error is not None or run.code is None:
            how = "not started"
        else:
            how = _describe_exit(run.code, run.stopped)
        lines = [f"    {line}" for line in run.tail.splitlines()] or ["    (no output)"]
        reason = (
            f"{cap_text(run.what)} ({how}); "
            f"command: {cap_text(' '.join(run.argv), 1024)}\n"
            "  last output of the program:\n" + cap_text("\n".join(lines))
        )
        self._done(run, False, reason)

    def _done(self, run: _Run, ok: bool, reason: str) -> None:
        run.state = _DONE
        self.runs.pop(run.key, None)
        self._tokens.pop(run.token, None)
        self.finished(run, ok, reason)

    # -- the helper --------------------------------------------------------------------------
    def _watch_helper_writes(self) -> None:
        assert self.helper is not None
        if self.helper.out:
            with contextlib.suppress(KeyError, ValueError):
                self._ctl.register(self.helper.wfd, selectors.EVENT_WRITE, _HELPER)

    def _flush_helper(self) -> None:
        assert self.helper is not None
        self.helper.flush()
        if not self.helper.out:
            self._ctl.unregister(self.helper.wfd)

    def _on_helper(self) -> None:
        assert self.helper is not None
        events = self.helper.read()
        if events is None:
            try:
                how = _describe_exit(self.helper.proc.wait(timeout=5.0))
            except subprocess.TimeoutExpired:
                how = "it closed its pipe"
            raise RuntimeError(
                f"the launcher helper (pid {self.helper.pid}) ended unexpectedly ({how}); "
                "the programs of the runs in flight were ended with it"
            )
        now = time.monotonic()
        for ev in events:
            run = self.runs.get(int(ev.get("run", -1)))
            if run is None:
                continue
            kind = ev.get("ev")
            if kind == "started":
                run.pid = int(ev["pid"])
            elif kind == "failed":
                run.launch_error = str(ev["reason"])
                self._fail(run, f"could not start the program: {run.launch_error}")
            elif kind == "exit":
                run.code, run.stopped, run.tail = int(ev["code"]), bool(ev["stopped"]), ev["tail"]
                if run.state == _FAILING:
                    self._report(run)
                elif run.state == _CLOSED:
                    self._complete(run)
                elif run.state == _CONNECTING:
                    run.gone_deadline = now + GONE_GRACE
                elif run.state == _STREAMING:
                    run.gone_busy = self.busy(run, now) + self.solver.exit_timeout

    # -- the end -----------------------------------------------------------------------------
    def close(self) -> None:
        """End every run in flight (no report), close every socket, stop the helper."""
        if self.closed:
            return
        self.closed = True
        helper, self.helper = self.helper, None
        if helper is not None:
            with contextlib.suppress(OSError):
                helper.send({"op": "quit"})  # the groups start ending now
        for run in list(self.runs.values()):
            self._drop_conns(run)
        self.runs.clear()
        self._held.clear()
        for conn in list(self._pending.values()):
            conn.close()
        self._pending.clear()
        if self.listener is not None:
            self.listener.close()
        for s in (self._wake_r, self._wake_w):
            s.close()
        self._ctl.close()
        self._data.close()
        if helper is not None:
            helper.close()
