"""The launcher helper of one training rank: starts the external programs of its runs, drains
their output, reaps them and ends their process groups.

Where this runs: one plain (non-MPI, single-threaded) Python process per ``ExternalPool`` (and
per direct ``ExternalSolver(...)(theta)`` call), started by the receiver thread with
``python -S -c "...from lightning_online.external._launchd import main; main()" PARENT_PID`` (the same as
``python -m lightning_online.external._launchd PARENT_PID``, with this package's directory first on the
path) and no ``preexec_fn``, so that CPython starts it with vfork/posix_spawn: forking a threaded
MPI process is unsafe, forking this small single-threaded one is not. It imports the standard
library only.

It talks to its parent over its stdin (commands) and stdout (events), in frames of
``<uint32 length><UTF-8 JSON>`` (:func:`encode_frame`, :class:`FrameReader`)::

    parent -> launchd   {"op": "config", "env": {...}}
                                                the programs' environment (first frame)
                        {"op": "launch", "run": k, "argv": [...], "env": {...}, "cwd": ...,
                         "echo": bool}          start run k (env: added to the configured one)
                        {"op": "end", "run": k, "wait": s}
                                                end run k's process group: SIGTERM once it has
                                                not exited by itself within s seconds, SIGKILL
                                                3 s later
                        {"op": "quit"}          end every group, then exit
    launchd -> parent   {"ev": "ready", "pid": p}
                        {"ev": "started", "run": k, "pid": p}
                        {"ev": "failed", "run": k, "reason": "..."}   could not start it
                        {"ev": "exit", "run": k, "code": c, "stopped": bool, "tail": "..."}
                                                its leader exited (code as subprocess reports
                                                it; stopped: after a signal from here); the
                                                last lines of its merged stdout/stderr

Every program runs in a session and process group of its own (``start_new_session``), with
``PR_SET_PDEATHSIG(SIGTERM)`` so that it hears of this process's death. Once a program's leader
has exited, its whole group gets a final SIGKILL: a program behind a wrapper (``bash -c "prog;
true"``, a launcher that exits early) never outlives its run. When the command pipe reaches end
of file (the training process died, even by SIGKILL), on ``quit`` or on SIGTERM, every group is
ended (SIGTERM, SIGKILL after 3 s, a final SIGKILL) and the helper exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import selectors
import signal
import subprocess
import sys
import time
from collections import deque
from typing import Any

from lightning_online._wire.frames import FrameReader, encode_frame

__all__ = ["main"]

GRACE = 3.0  # seconds between SIGTERM and SIGKILL of a group
TAIL_LINES = 20  # output kept per run for failure reports...
TAIL_BYTES = 8192  # ...and at most this many bytes of it
_CHUNK = 65536
_PR_SET_PDEATHSIG = 1


class Tail:
    """The last lines of a program's output, bounded whatever the program writes: at most
    ``TAIL_LINES`` lines and ``TAIL_BYTES`` bytes in all; a longer line keeps its last
    ``TAIL_BYTES // 2`` bytes (a 64 MiB line without a newline costs no more than a short one)."""

    __slots__ = ("cut", "lines", "partial", "size")
    LINE = TAIL_BYTES // 2
    MARK = b"[...] "

    def __init__(self) -> None:
        self.lines: deque[bytes] = deque()
        self.size = 0  # bytes in lines, a newline each included
        self.partial = b""  # the line being written (its last LINE bytes)
        self.cut = False  # the partial line lost its start

    def _clip(self, line: bytes, cut: bool) -> bytes:
        return self.MARK + line[-self.LINE :] if cut or len(line) > self.LINE else line

    def _push(self, line: bytes) -> None:
        self.lines.append(line)
        self.size += len(line) + 1
        while len(self.lines) > TAIL_LINES or self.size > TAIL_BYTES:
            self.size -= len(self.lines.popleft()) + 1

    def feed(self, data: bytes) -> None:
        parts = data.split(b"\n")
        rest = parts.pop()
        if parts:
            if len(parts) > TAIL_LINES:  # only the last lines can stay
                parts = parts[-TAIL_LINES:]
            else:
                parts[0] = self._clip(self.partial + parts[0], self.cut)
            for line in parts:
                self._push(self._clip(line, False))
            self.partial, self.cut = b"", False
        partial = self.partial + rest
        if len(partial) > self.LINE:
            partial, self.cut = partial[-self.LINE :], True
        self.partial = partial

    def text(self) -> str:
        """The tail as text (at most ``TAIL_BYTES`` bytes of the output)."""
        lines = list(self.lines)
        if self.partial:
            lines.append(self._clip(self.partial, self.cut))
        size = sum(len(line) + 1 for line in lines)
        while len(lines) > TAIL_LINES or (len(lines) > 1 and size > TAIL_BYTES):
            size -= len(lines.pop(0)) + 1
        return b"\n".join(lines).decode("utf-8", "replace")


class _Run:
    __slots__ = ("echo", "fd", "key", "kill_at", "out", "pid", "proc", "stopped", "tail", "term_at")

    def __init__(self, key: int, proc: subprocess.Popen[bytes], echo: bool) -> None:
        self.key, self.proc, self.pid, self.echo = key, proc, proc.pid, echo
        assert proc.stdout is not None
        self.out = proc.stdout
        self.fd: int | None = proc.stdout.fileno()
        self.tail = Tail()
        self.term_at: float | None = None
        self.kill_at: float | None = None
        self.stopped = False


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class Launchd:
    """The helper's state and loop (in the helper process)."""

    def __init__(self, cmd_fd: int, ev_fd: int) -> None:
        self.cmd_fd, self.ev_fd = cmd_fd, ev_fd
        self.sel = selectors.DefaultSelector()
        self.reader = FrameReader()
        self.runs: dict[int, _Run] = {}  # by key
        self.by_pid: dict[int, _Run] = {}
        self.quit = False
        self.env: dict[str, str] = dict(os.environ)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        os.set_blocking(cmd_fd, False)
        self.sel.register(cmd_fd, selectors.EVENT_READ, "cmd")
        self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the loop (wakeup fd)
        signal.signal(signal.SIGTERM, self._on_term)
        # The training process decides when runs stop: Ctrl-C reaches the whole foreground
        # group, this helper included. A no-op handler, not SIG_IGN, so programs do not inherit
        # an ignored SIGINT through exec.
        signal.signal(signal.SIGINT, lambda *_: None)
        # Resolved now, not in the forked child (no imports or symbol lookups after fork).
        self._prctl = ctypes.CDLL(None, use_errno=True).prctl
        self._nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
        soft, hard = self._nofile
        # One pipe per run in flight: lift the soft limit; the programs get the original back.
        if hard == resource.RLIM_INFINITY or soft < hard:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def _on_term(self, *_: Any) -> None:
        self.quit = True

    def _child_setup(self) -> None:
        # In the forked child, before exec: no import, no allocation worth mentioning.
        self._prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
        resource.setrlimit(resource.RLIMIT_NOFILE, self._nofile)

    # -- events to the parent ----------------------------------------------------------------
    def send(self, obj: dict[str, Any]) -> None:
        data = memoryview(encode_frame(obj))
        while data:
            try:
                n = os.write(self.ev_fd, data)
            except InterruptedError:
                continue
            except BrokenPipeError:
                self.quit = True
                return
            data = data[n:]

    # -- commands ----------------------------------------------------------------------------
    def _command(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "launch":
            self._launch(msg)
        elif op == "config":
            self.env = {str(k): str(v) for k, v in msg["env"].items()}
        elif op == "end":
            run = self.runs.get(int(msg["run"]))
            if run is not None and run.term_at is None:
                run.term_at = time.monotonic() + max(0.0, float(msg.get("wait", 0.0)))
                run.kill_at = run.term_at + GRACE
        elif op == "quit":
            self.quit = True

    def _launch(self, msg: dict[str, Any]) -> None:
        key = int(msg["run"])
        try:
            proc = subprocess.Popen(
                msg["argv"],
                env={**self.env, **msg.get("env", {})},
                cwd=msg.get("cwd") or None,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, ended as a whole
                preexec_fn=self._child_setup,  # this process is single-threaded
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            self.send({"ev": "failed", "run": key, "reason": f"{type(exc).__name__}: {exc}"})
            return
        run = _Run(key, proc, bool(msg.get("echo")))
        os.set_blocking(run.out.fileno(), False)
        self.runs[key] = run
        self.by_pid[run.pid] = run
        self.sel.register(run.out.fileno(), selectors.EVENT_READ, run)
        self.send({"ev": "started", "run": key, "pid": run.pid})

    # -- programs ----------------------------------------------------------------------------
    def _drain(self, run: _Run, limit: int = _CHUNK) -> None:
        """Read what the program wrote (up to ``limit`` bytes now); close at end of file."""
        got = 0
        while run.fd is not None and got < limit:
            try:
                data = os.read(run.fd, _CHUNK)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError:
                data = b""
            if not data:
                self._close_output(run)
                return
            got += len(data)
            run.tail.feed(data)
            if run.echo:
                with contextlib.suppress(OSError):
                    os.write(2, data)

    def _close_output(self, run: _Run) -> None:
        if run.fd is not None:
            self.sel.unregister(run.fd)
            run.out.close()
            run.fd = None

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            run = self.by_pid.pop(pid, None)
            if run is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            run.proc.returncode = code  # reaped here, not by Popen
            # The leader is gone: nothing of its group may outlive it. (Its pid stays reserved
            # while any member of the group lives, so this cannot hit a stranger.)
            _killpg(pid, signal.SIGKILL)
            self._drain(run, limit=1 << 20)
            self._close_output(run)
            del self.runs[run.key]
            self.send(
                {
                    "ev": "exit",
                    "run": run.key,
                    "code": code,
                    "stopped": run.stopped,
                    "tail": run.tail.text(),
                }
            )

    def _timers(self, now: float) -> float | None:
        """Send the signals that are due; seconds until the next one (None: none pending)."""
        nearest: float | None = None
        for run in self.runs.values():
            if run.term_at is None:
                continue
            if not run.stopped and now >= run.term_at:
                run.stopped = True
                _killpg(run.pid, signal.SIGTERM)
            if run.kill_at is not None and now >= run.kill_at:
                _killpg(run.pid, signal.SIGKILL)
                run.kill_at = None
            for t in (run.term_at if not run.stopped else None, run.kill_at):
                if t is not None:
                    nearest = t - now if nearest is None else min(nearest, t - now)
        return nearest

    # -- loop --------------------------------------------------------------------------------
    def serve(self) -> None:
        self.send({"ev": "ready", "pid": os.getpid()})
        while not self.quit:
            timeout = self._timers(time.monotonic())
            for key, _ in self.sel.select(timeout):
                if key.data == "cmd":
                    self._read_commands()
                elif key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self._wake_r, 512):
                            pass
                elif isinstance(key.data, _Run):
                    self._drain(key.data)
            self._reap()
        self.shutdown()

    def _read_commands(self) -> None:
        while True:
            try:
                data = os.read(self.cmd_fd, _CHUNK)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            if not data:  # the training process is gone (or closed the pipe): end everything
                self.quit = True
                return
            for msg in self.reader.feed(data):
                self._command(msg)

    def shutdown(self) -> None:
        """End every group: SIGTERM, SIGKILL after the grace period, a final SIGKILL."""
        groups = list(self.by_pid)
        for pid in groups:
            _killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACE
        while self.by_pid and time.monotonic() < deadline:
            self._reap_quietly()
            if self.by_pid:
                self.sel.select(0.05)
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 512):
                        pass
        for pid in groups:
            _killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while self.by_pid and time.monotonic() < deadline:
            self._reap_quietly()
            time.sleep(0.01)
        for run in list(self.runs.values()):
            self._close_output(run)

    def _reap_quietly(self) -> None:
        while self.by_pid:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.by_pid.clear()
                return
            if pid == 0:
                return
            run = self.by_pid.pop(pid, None)
            if run is not None:
                run.proc.returncode = os.waitstatus_to_exitcode(status)
                _killpg(pid, signal.SIGKILL)


def _die_with(parent: int) -> bool:
    """SIGTERM to this process when the thread that started it ends (the pool's receiver
    thread); False if the parent is already gone."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    return os.getppid() == parent


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    parent = int(args[0]) if args else os.getppid()
    # Private copies of the pipes; 0 and 1 become /dev/null, so that nothing printed by
    # accident can corrupt the event stream.
    cmd_fd, ev_fd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    daemon = Launchd(cmd_fd, ev_fd)
    if not _die_with(parent):
        return
    try:
        daemon.serve()
    except BaseException:
        daemon.shutdown()
        raise


if __name__ == "__main__":
    main()
