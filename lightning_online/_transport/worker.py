"""A long-lived MPI worker, spawned by a training rank, that runs solver calls it is given.

The worker never runs solver code itself: it keeps one sandbox process (``_runner``) per worker,
sends it one parameter set at a time and forwards every yielded sample to the training rank with
synchronous sends (``Issend``, a few in flight), so a full buffer on the training side blocks the
worker, the pipe and then the solver (backpressure end to end). When the sandbox crashes, hangs past ``run_timeout`` or
reports an error, the worker tells the training rank how the run ended and starts a new sandbox for
the next run. Only this module and ``_transport`` talk MPI.

Tags (trainer <-> worker, all on the spawn intercommunicator):
``TASK`` float64 [sim_id, *theta]; ``STOP`` empty; ``SAMPLES + k`` k wire blobs (see ``_wire``)
of equal size back to back (samples that queued up travel together, at most
``_wire.coalesce_limit(size)``); ``END`` run report (see ``_wire.encode_end``); ``BYE`` the worker
is leaving; ``FATAL`` worker error.

Samples are sent straight from the ring of shared memory the sandbox wrote them into
(``_runner.Ring``): no copy in this process.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections import deque
from typing import Any

import numpy as np

from lightning_online._transport.runner import Ring, mpi_free_environ, signal_name
from lightning_online._wire.frames import REF, read_frame, write_frame
from lightning_online._wire.samples import (
    TAG_BYE,
    TAG_END,
    TAG_FATAL,
    TAG_SAMPLES,
    TAG_STOP,
    cap_text,
    coalesce_limit,
    encode_end,
)

_WINDOW = 16  # synchronous sends in flight per worker
STARTUP_SECONDS = 300.0  # a new sandbox must have loaded the solver by then
MID_FRAME_SECONDS = 30.0  # a sandbox silent this long in the middle of a frame fails its run
_NOTHING = object()  # no frame read ahead


class _BadFrame(Exception):
    """The sandbox wrote something that is not a frame of its protocol (solver code runs there
    and may write to any of its descriptors): the run fails, the worker goes on."""


def _ref(payload: bytearray, ring: Ring) -> tuple[int, int, int]:
    """The checked ``(offset, bytes, end)`` of an ``R`` frame: the sample lies in the ring."""
    if len(payload) != REF.size:
        raise _BadFrame(f"a sample reference of {len(payload)} bytes (expected {REF.size})")
    off, size, end = REF.unpack(payload)
    if not (0 < size <= ring.size and off + size <= ring.size and end >= size):
        raise _BadFrame(f"a sample reference outside the ring ({off=}, {size=}, {end=})")
    return off, size, end


def describe_exit(code: int) -> str:
    if code < 0:
        return f"the solver process was killed by {signal_name(code)}"
    return f"the solver process exited with code {code} before finishing the run"


def _widen(fd: int) -> None:
    """Give the sample pipe the largest capacity allowed (Linux: 1 MiB by default instead of
    64 KiB): a large sample then crosses in one write instead of many context switches."""
    try:
        import fcntl

        with open("/proc/sys/fs/pipe-max-size") as f:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, int(f.read()))
    except (OSError, ValueError, AttributeError, ImportError):  # not Linux, or not allowed
        pass


class _Sandbox:
    """The solver's process and the two pipes to it."""

    def __init__(self, solver: bytes, python_path: list[str]) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        _widen(self._from_child)
        ring_fd = Ring.create()
        self.ring = Ring(ring_fd)
        env = mpi_free_environ()  # a solver that imports mpi4py must not join this MPI job
        env["PYTHONPATH"] = os.pathsep.join(python_path)
        fds = (to_child_r, from_child_w, ring_fd)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lightning_online._transport.runner", *map(str, fds)],
                pass_fds=fds,
                env=env,
            )
        except BaseException:
            for fd in (*fds, self._to_child, self._from_child):
                os.close(fd)
            raise
        os.close(to_child_r)
        os.close(from_child_w)
        os.close(ring_fd)
        self.out = os.fdopen(self._to_child, "wb")
        # Unbuffered, so that select() on the descriptor tells the truth about pending frames.
        self.inp = os.fdopen(self._from_child, "rb", buffering=0)
        write_frame(self.out, b"P", solver)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.out, self.inp):
            try:
                f.close()
            except OSError:
                pass


class Worker:
    def __init__(self, comm: Any, config: dict[str, Any]) -> None:
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = comm
        self.solver: bytes = config["solver"]
        self.python_path: list[str] = config["python_path"]
        self.run_timeout: float | None = config["run_timeout"]
        self.poll: float = config.get("poll_interval", 1e-3)
        self.sandbox: _Sandbox | None = None
        self._trainer = (config.get("host"), config.get("pid"))
        self._next_alive_check = 0.0
        # Sends in flight: (request, what it sends from, ring to release and up to where).
        self._inflight: deque[tuple[Any, Any, Ring | None, int]] = deque()

    def _check_trainer(self) -> None:
        """Exit if the training process is gone (e.g. killed with SIGKILL).

        The MPI process manager does not always take spawned processes down with a dead parent;
        a worker left behind would wait (or spin in MPI progress) forever.
        """
        now = time.monotonic()
        if now < self._next_alive_check:
            return
        self._next_alive_check = now + 1.0
        host, pid = self._trainer
        if pid is None or host != socket.gethostname():
            return
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            self.close()
            os._exit(1)
        except PermissionError:
            pass

    def _send(self, data: np.ndarray, k: int, ring: Ring | None = None, end: int = 0) -> None:
        """Synchronous sends, a few in flight: a send completes only once the trainer receives it,
        so at most ``_WINDOW`` messages per worker are ahead of the trainer's buffer
        (backpressure), while the window keeps the pipe full when there is room."""
        MPI = self.MPI
        req = self.comm.Issend([data, MPI.BYTE], 0, TAG_SAMPLES + k)
        self._inflight.append((req, data, ring, end))
        self._reap()
        if len(self._inflight) > _WINDOW:
            self._wait(self._inflight[0][0])
            self._pop()

    def _pop(self) -> None:
        _, _, ring, end = self._inflight.popleft()
        if ring is not None:
            ring.release(end)  # the sandbox may write there again

    def _reap(self) -> None:
        while self._inflight and self._inflight[0][0].Test():
            self._pop()

    def _flush(self) -> None:
        while self._inflight:
            self._wait(self._inflight[0][0])
            self._pop()

    def _wait(self, req: Any) -> None:
        """Poll a request without spinning a core in MPI progress (a full buffer can hold it for
        minutes), and exit if the trainer is gone meanwhile."""
        for _ in range(50):  # the receiver usually answers within microseconds
            if req.Test():
                return
        t0 = time.monotonic()
        while not req.Test():
            waited = time.monotonic() - t0
            time.sleep(5e-5 if waited < 0.01 else self.poll)
            if waited > 0.01:
                self._check_trainer()

    def _ring_backpressure(self, box: _Sandbox) -> bool:
        """Whether the solver may be waiting for ring space the trainer has not freed yet."""
        if not self._inflight or self._inflight[-1][2] is None:
            return False
        return box.ring.used(self._inflight[-1][3]) > box.ring.size // 2

    def _forward(self, box: _Sandbox, frame: tuple[bytes, bytearray]) -> tuple[int, Any]:
        """Send sample frames (``R``/``S``) to the trainer, several per message when more are
        already waiting in the pipe; returns (samples sent, the next frame read ahead or
        ``_NOTHING``)."""
        fd, ring = box.inp.fileno(), box.ring
        sent = 0
        nxt: Any = frame
        while nxt is not None and nxt is not _NOTHING and nxt[0] in (b"R", b"S"):
            kind, payload = nxt
            if kind == b"R":
                off, size, end = _ref(payload, ring)
                limit, k, nxt = coalesce_limit(size), 1, _NOTHING
                while k < limit and select.select([fd], [], [], 0)[0]:
                    more = read_frame(box.inp, self._mid_frame)
                    if more is not None and more[0] == b"R":
                        o, n, e = _ref(more[1], ring)
                        if n == size and o == off + k * size:  # next to the previous one
                            k, end = k + 1, e
                            continue
                    nxt = more
                    break
                self._send(ring.data[off : off + k * size], k, ring, end)
            else:
                if not payload:
                    raise _BadFrame("an empty sample")
                batch, size = [payload], len(payload)
                limit, nxt = coalesce_limit(size), _NOTHING
                while len(batch) < limit and select.select([fd], [], [], 0)[0]:
                    more = read_frame(box.inp, self._mid_frame)
                    if more is None or more[0] != b"S" or len(more[1]) != size:
                        nxt = more
                        break
                    batch.append(more[1])
                data = batch[0] if len(batch) == 1 else b"".join(batch)
                k = len(batch)
                self._send(np.frombuffer(data, dtype=np.uint8), k)
            sent += k
        return sent, nxt

    def _mid_frame(self, waited: float) -> None:
        """Called while a frame is half read and the sandbox says nothing (``read_exact``'s
        ``idle``): solver code may write a frame header into its pipe and then hang, which must
        fail the run (within ``run_timeout``, at most ``MID_FRAME_SECONDS``), not hold the
        worker forever."""
        self._check_trainer()
        limit = MID_FRAME_SECONDS
        if self.run_timeout is not None:
            limit = min(limit, self.run_timeout)
        if waited > limit:
            raise _BadFrame(f"the solver process stopped for {limit:g} s in the middle of a frame")

    def _stop_requested(self) -> bool:
        return bool(self.comm.Iprobe(source=0, tag=TAG_STOP))

    def serve(self) -> None:
        MPI, comm = self.MPI, self.comm
        status = MPI.Status()
        idle = 0
        while True:
            if not comm.Iprobe(source=0, tag=MPI.ANY_TAG, status=status):
                self._check_trainer()
                idle += 1
                time.sleep(self.poll if idle < 1000 else 10 * self.poll)
                continue
            idle = 0
            buf = np.empty(status.Get_count(MPI.BYTE), dtype=np.uint8)
            comm.Recv([buf, MPI.BYTE], source=0, tag=status.Get_tag())
            if status.Get_tag() == TAG_STOP:
                return
            task = buf.view(np.float64)
            sim_id = int(task[0])
            report = self.run(sim_id, task[1:].tobytes())
            self._flush()  # every sample of the run is received before its report
            if report is None:  # stopped mid-run; the STOP message is still queued
                continue
            comm.Send([report, MPI.BYTE], dest=0, tag=TAG_END)

    def _await_ready(self, box: _Sandbox) -> bool | None:
        """Wait for a new sandbox to have loaded the solver (its ``K`` frame): True; False if it
        ended (or said something else) first, or took more than ``STARTUP_SECONDS``; None if
        STOP came meanwhile. A Python start-up and the solver's imports (a second or more on a
        loaded node) are not the run's compute: they do not count toward ``run_timeout``."""
        fd = box.inp.fileno()
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.05)[0]:
                try:
                    frame = read_frame(box.inp, self._mid_frame)
                except _BadFrame:
                    return False
                return frame is not None and frame[0] == b"K"
            self._check_trainer()
            if self._stop_requested():
                return None
        return False

    def run(self, sim_id: int, task_theta: bytes) -> np.ndarray | None:
        if self.sandbox is None or self.sandbox.proc.poll() is not None:
            if self.sandbox is not None:
                self.sandbox.kill()
            self.sandbox = _Sandbox(self.solver, self.python_path)
            ready = self._await_ready(self.sandbox)
            if ready is None:  # stopped; the STOP message is still queued
                self.sandbox.kill()
                self.sandbox = None
                return None
            if not ready:
                if self.sandbox.proc.poll() is None:
                    self.sandbox.kill()
                    self.sandbox = None
                    return encode_end(
                        sim_id,
                        False,
                        0,
                        0.0,
                        f"the solver process did not start within {STARTUP_SECONDS:g} s",
                    )
                return self._crashed(sim_id, 0, 0.0)
        box = self.sandbox
        task = np.float64(sim_id).tobytes() + task_theta
        try:
            write_frame(box.out, b"T", task)
        except (BrokenPipeError, OSError):
            return self._crashed(sim_id, 0, 0.0)
        steps, busy = 0, 0.0
        fd = box.inp.fileno()
        next_stop_check = time.monotonic() + 0.05
        while True:
            # A solver that streams without pause never lets select() time out: look for STOP
            # on a clock, not only when idle.
            if time.monotonic() >= next_stop_check:
                next_stop_check = time.monotonic() + 0.05
                self._check_trainer()
                if self._stop_requested():
                    box.kill()
                    self.sandbox = None
                    return None
            # Only time spent waiting for the solver counts toward the timeout: time blocked in
            # a synchronous send is backpressure from a full buffer, not a slow solver.
            wait = 0.05
            if self._inflight:  # hand ring space back promptly: the solver may wait for it
                self._reap()
                wait = 1e-3 if self._inflight else wait
            if self.run_timeout is not None:
                wait = max(0.0, min(wait, self.run_timeout - busy))
            t0 = time.monotonic()
            readable = bool(select.select([fd], [], [], wait)[0])
            if not self._ring_backpressure(box):
                busy += time.monotonic() - t0
            if not readable:
                if self.run_timeout is not None and busy >= self.run_timeout:
                    box.kill()
                    self.sandbox = None
                    return encode_end(
                        sim_id, False, steps, busy, f"timed out after {self.run_timeout:g} s"
                    )
                if self._stop_requested():
                    box.kill()
                    self.sandbox = None
                    return None
                continue
            try:
                frame: Any = read_frame(box.inp, self._mid_frame)
                if frame is not None and frame[0] in (b"R", b"S"):
                    sent, frame = self._forward(box, frame)
                    steps += sent
            except _BadFrame as exc:
                self._flush()  # what was sent before it stands; the run fails
                box.kill()
                self.sandbox = None
                return encode_end(
                    sim_id, False, steps, busy, f"the solver process sent a malformed frame: {exc}"
                )
            if frame is _NOTHING:  # everything read was sent: back to waiting
                continue
            if frame is None:
                return self._crashed(sim_id, steps, busy)
            kind, payload = frame
            if kind == b"D":
                return encode_end(sim_id, True, steps, busy)
            if kind == b"E":
                return encode_end(sim_id, False, steps, busy, cap_text(payload))
            box.kill()
            self.sandbox = None
            return encode_end(
                sim_id,
                False,
                steps,
                busy,
                f"the solver process sent a frame of unknown kind {kind!r}",
            )

    def _crashed(self, sim_id: int, steps: int, busy: float) -> np.ndarray:
        assert self.sandbox is not None
        code = self.sandbox.proc.wait()
        self.sandbox.kill()
        self.sandbox = None
        return encode_end(sim_id, False, steps, busy, describe_exit(code))

    def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.kill()
            self.sandbox = None


def main() -> None:
    # Ctrl-C reaches the whole process group; the training process decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from mpi4py import MPI

    comm = MPI.Comm.Get_parent()
    if comm == MPI.COMM_NULL:
        raise SystemExit(
            "lightning_online._transport.worker is started by OnlineDataModule, not by hand"
        )
    config = comm.bcast(None, root=0)
    worker = Worker(comm, config)
    try:
        worker.serve()
    except Exception:
        msg = np.frombuffer(traceback.format_exc().encode(), dtype=np.uint8)
        comm.Send([msg, MPI.BYTE], dest=0, tag=TAG_FATAL)
        # wait for STOP so the trainer's shutdown handshake still completes
        while not comm.Iprobe(source=0, tag=TAG_STOP):
            worker._check_trainer()
            time.sleep(0.01)
        comm.Recv([np.zeros(0, np.uint8), MPI.BYTE], source=0, tag=TAG_STOP)
    finally:
        worker.close()
    worker._flush()
    comm.Send([np.zeros(0, np.uint8), MPI.BYTE], dest=0, tag=TAG_BYE)
    comm.Disconnect()


if __name__ == "__main__":
    main()
