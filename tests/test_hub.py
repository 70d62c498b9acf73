"""ExternalPool: external programs streaming straight into the training rank's receiver thread.

Real programs (the Python client program, a small C program on the C client, bash wrappers),
real sockets and the real launcher helper; the handler is a minimal one written here, doing what
the study does with the pool (hand out runs, take samples, record how runs end).
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
import psutil
import pytest
from _models import Regressor, quiet_trainer
from conftest import MARKER, has_ipv6_loopback, solver_processes

from lightning_online import (
    FIFO,
    ExternalRunError,
    ExternalSolver,
    OnlineDataModule,
    ParameterSpace,
)
from lightning_online._wire import tcp as proto
from lightning_online._wire.samples import decode_sample
from lightning_online.client import build, split_address
from lightning_online.external._hub import HELLO_SECONDS
from lightning_online.external._launchd import TAIL_BYTES
from lightning_online.external._pool import ExternalPool

HERE = Path(__file__).parent
PROGRAM = str(HERE / "programs" / "lo_ext_client.py")
GATE_SOURCE = HERE / "programs" / "lo_ext_gate.c"
pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_orphans")]


def program(*args: str, **kw) -> ExternalSolver:
    kw.setdefault("fields", ["x", "y"])
    kw.setdefault("launcher", "direct")
    return ExternalSolver([sys.executable, PROGRAM, *args], **kw)


class Recorder:
    """A minimal real handler (receiver thread): hands out one run per parameter vector, checks
    and counts what arrives, records how every run ended."""

    def __init__(self, thetas, room=None) -> None:
        self.tasks = deque((i, np.asarray(t, dtype=np.float64)) for i, t in enumerate(thetas))
        self.total = len(self.tasks)
        self.release = threading.Event()  # next_task hands out nothing until it is set
        self.release.set()
        self.room = room or (lambda: True)
        self.steps: dict[int, list[tuple[int, tuple[np.ndarray, ...]]]] = {}
        self.samples = 0
        self.live: set[int] = set()  # runs that sent a step and have not ended
        self.max_live = 0
        self.on_all_live = None  # called once every run is live
        self.ends: dict[int, tuple[bool, int, str]] = {}
        self.done = threading.Event()

    def next_task(self):
        if not self.release.is_set() or not self.tasks:
            return None
        return self.tasks.popleft()

    def has_room(self) -> bool:
        return self.room()

    def on_sample(self, blob: np.ndarray) -> None:
        s = decode_sample(blob)  # blob is only valid now: keep copies
        self.steps.setdefault(s.sim_id, []).append((s.step, tuple(a.copy() for a in s.fields)))
        self.samples += 1
        self.live.add(s.sim_id)
        self.max_live = max(self.max_live, len(self.live))
        if len(self.live) == self.total and self.on_all_live is not None:
            self.on_all_live()
            self.on_all_live = None

    def on_end(self, sim_id: int, ok: bool, n_steps: int, seconds: float, reason: str) -> None:
        assert sim_id not in self.ends, f"run {sim_id} ended twice"
        self.ends[sim_id] = (ok, n_steps, reason)
        self.live.discard(sim_id)
        if len(self.ends) == self.total:
            self.done.set()


def started(solver: ExternalSolver, handler: Recorder, n_workers: int = 1, **kw) -> ExternalPool:
    pool = ExternalPool(solver, n_workers, handler, **kw)
    pool.start()
    return pool


def _cmdline(p: psutil.Process) -> str:
    """A process's command line; empty once it has gone (it may end while we look)."""
    try:
        return " ".join(p.cmdline())
    except psutil.NoSuchProcess:
        return ""


def programs_left() -> list[psutil.Process]:
    """This test's programs still running (wherever they were re-parented), after a short wait
    for the ones being killed right now."""
    marker = os.environ[MARKER]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        left = [p for p in solver_processes(marker) if "lo_ext" in _cmdline(p)]
        if not left:
            return []
        time.sleep(0.05)
    return left


@pytest.fixture(scope="module")
def gate_program(tmp_path_factory) -> Path:
    """lo_ext_gate compiled with the shipped C client (plain cc: no MPI library to load)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    out = tmp_path_factory.mktemp("gate") / "lo_ext_gate"
    flags = ("-O2", "-Wall", "-Wextra", "-std=c99", "-D_POSIX_C_SOURCE=200809L")
    try:
        return build([GATE_SOURCE], out, compiler=cc, flags=flags)
    except (FileNotFoundError, RuntimeError) as exc:
        pytest.skip(f"no C compiler for the gate program: {exc}")


# -- connections ----------------------------------------------------------------------------


def test_strays_and_a_dripping_peer_neither_delay_nor_fail_a_run():
    """Silent peers and a peer that drips a HELLO byte by byte are pending at once with the
    run's own connection: the run completes as fast as alone, the strays are closed later."""
    alone = run_alone_seconds()
    handler = Recorder([[1.0, 2.0]])
    handler.release.clear()
    pool = started(program("--steps", "5", n_steps=5), handler)
    stop_drip = threading.Event()
    try:
        host, port = split_address(pool.address)
        silent = [socket.create_connection((host, port)) for _ in range(5)]
        garbage = socket.create_connection((host, port))
        garbage.sendall(b"GET / HTTP/1.0\r\n\r\n" + bytes(64))
        dripper = socket.create_connection((host, port))
        wrong = proto.encode_hello("f" * 32)  # well formed, not this run's token

        def drip() -> None:
            for b in wrong:
                if stop_drip.wait(0.25):
                    return
                try:
                    dripper.send(bytes([b]))
                except OSError:
                    return

        threading.Thread(target=drip, daemon=True).start()
        time.sleep(0.5)  # every stray is accepted and waiting for its HELLO
        t0 = time.monotonic()
        handler.release.set()
        pool.wake()
        assert handler.done.wait(30)
        elapsed = time.monotonic() - t0
        ok, n_steps, reason = handler.ends[0]
        assert ok and n_steps == 5, reason
        assert [s for s, _ in handler.steps[0]] == [0, 1, 2, 3, 4]
        # The old receiver read HELLOs one after another, each stray costing its 5 s timeout
        # (35 s here); now the run takes about as long as alone (measured on this load).
        assert elapsed < 3 * alone + HELLO_SECONDS - 1, (elapsed, alone)
        assert closed_by_peer(garbage, 5)  # a bad HELLO: closed at once
        for s in [*silent, dripper]:  # silent or too slow: closed once its HELLO time is up
            assert closed_by_peer(s, HELLO_SECONDS + 5)
        for s in [*silent, garbage, dripper]:
            s.close()
    finally:
        stop_drip.set()
        pool.stop()


def run_alone_seconds() -> float:
    """The same run as the strays test's, with nothing else connecting: from its release to
    its end, on this machine's load now."""
    handler = Recorder([[1.0, 2.0]])
    handler.release.clear()
    pool = started(program("--steps", "5", n_steps=5), handler)
    try:
        t0 = time.monotonic()
        handler.release.set()
        pool.wake()
        assert handler.done.wait(30)
        assert handler.ends[0][0], handler.ends[0]
        return time.monotonic() - t0
    finally:
        pool.stop()


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("host", [None, "127.0.0.1"])
def test_listens_on_the_loopback_only(host):
    handler = Recorder([[1.0, 2.0]])
    pool = started(program("--steps", "2", host=host), handler)
    try:
        listener = pool._hub.listener
        bound, port = listener.getsockname()[:2]
        assert listener.family == socket.AF_INET and bound == "127.0.0.1"  # not 0.0.0.0
        assert pool.address == f"127.0.0.1:{port}"
        others = [
            a.address
            for addrs in psutil.net_if_addrs().values()
            for a in addrs
            if a.family == socket.AF_INET and not a.address.startswith("127.")
        ]
        for other in others:  # another interface of this machine: nobody listens there
            with pytest.raises(OSError):
                socket.create_connection((other, port), timeout=2).close()
        assert handler.done.wait(30) and handler.ends[0][0], handler.ends
    finally:
        pool.stop()


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_with_the_python_and_the_c_client(gate_program):
    for solver in (
        program("--steps", "3", host="::1", n_steps=3),
        ExternalSolver(
            [str(gate_program), "-", "3", "4", "0"], launcher="direct", host="::1", n_steps=3
        ),
    ):
        handler = Recorder([[1.0, 2.0], [3.0, 4.0]])
        pool = started(solver, handler, n_workers=2)
        try:
            listener = pool._hub.listener
            assert listener.family == socket.AF_INET6 and listener.getsockname()[0] == "::1"
            assert pool.address == f"[::1]:{listener.getsockname()[1]}"
            assert handler.done.wait(30)
            assert all(ok for ok, _, _ in handler.ends.values()), handler.ends
            assert handler.samples == 6
        finally:
            pool.stop()


def test_a_host_that_cannot_be_listened_on_is_refused_at_start():
    pool = ExternalPool(program(host="192.0.2.1"), 1, Recorder([]))  # TEST-NET: not ours
    with pytest.raises(OSError, match=r"host='192\.0\.2\.1'"):
        pool.start()
    pool.stop()


# -- ending programs --------------------------------------------------------------------------

STALLS = "--steps 5 --stall-after 1"  # one step, then silence for 10 minutes


def wrapped(kind: str) -> ExternalSolver:
    """The program behind a shell wrapper, started by the Direct launcher: ``bash``: the shell
    waits for it; ``leader-exits``: it ignores SIGTERM and outlives the shell, which does not."""
    prog = f"{sys.executable} {PROGRAM} {STALLS}"
    script = {
        "bash": f"{prog}; true",
        "leader-exits": f"(trap '' TERM; exec {prog}) & sleep 600",
    }[kind]
    return ExternalSolver(["bash", "-c", script], fields=["x", "y"], launcher="direct")


@pytest.mark.parametrize("kind", ["bash", "leader-exits"])
def test_a_hanging_run_is_ended_with_its_group_after_run_timeout(kind):
    handler = Recorder([[1.0, 2.0]])
    pool = started(wrapped(kind), handler, run_timeout=2.0)
    try:
        assert handler.done.wait(30)
        ok, n_steps, reason = handler.ends[0]
        assert not ok and n_steps == 1 and "timed out after 2 s" in reason, reason
        assert "lo_ext_client starting with theta=[1.0, 2.0]" in reason
        assert programs_left() == []  # the run's end is reported once its group is gone
    finally:
        pool.stop()


@pytest.mark.parametrize("kind", ["bash", "leader-exits"])
def test_stop_ends_every_group(kind):
    handler = Recorder([[1.0, 2.0], [2.0, 3.0], [3.0, 4.0]])
    pool = started(wrapped(kind), handler, n_workers=3)
    try:
        deadline = time.monotonic() + 30
        while handler.samples < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert handler.samples == 3 and pool.in_flight == 3
    finally:
        pool.stop()
    assert not pool.alive and handler.ends == {}  # runs ended by stop() are not reported
    assert programs_left() == []


def test_the_programs_end_when_the_training_process_is_killed(tmp_path):
    """SIGKILL of the process holding the pool: the helper sees its pipe close and ends every
    group (here: a direct call of the solver, which runs the same machinery)."""
    script = tmp_path / "holder.py"
    script.write_text(
        "import sys, time, numpy as np\n"
        "from lightning_online import ExternalSolver\n"
        f"s = ExternalSolver([sys.executable, {PROGRAM!r}, '--steps', '5', '--stall-after', '1'],"
        " launcher='direct')\n"
        "g = s(np.array([1.0, 2.0]))\n"
        "next(g)\n"
        "print('READY', flush=True)\n"
        "time.sleep(600)\n"
    )
    with subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, start_new_session=True
    ) as holder:
        try:
            assert holder.stdout.readline().strip() == "READY"
            running = solver_processes(os.environ[MARKER])
            assert any("lo_ext_client" in " ".join(p.cmdline()) for p in running)
        finally:
            holder.kill()
            holder.wait()
    left = programs_left()
    assert left == [], [p.cmdline() for p in left]


def test_64_mib_of_output_without_a_newline_keeps_a_bounded_tail():
    # Never connects; its one line of output never ends.
    noisy = ExternalSolver(
        ["bash", "-c", "echo lo_ext first line; head -c 67108864 /dev/zero | tr '\\0' x; exit 3"],
        launcher="direct",
    )
    handler = Recorder([[1.0, 2.0]])
    pool = started(noisy, handler)
    try:
        assert handler.done.wait(60)
        ok, _, reason = handler.ends[0]
        helper = psutil.Process(pool._hub.helper.pid)
        peak = helper.memory_full_info().uss
        with open(f"/proc/{helper.pid}/status") as f:
            hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
    finally:
        pool.stop()
    assert not ok and "ended before it connected (exit code 3)" in reason, reason[:500]
    tail = reason.split("last output of the program:\n", 1)[1]
    assert len(tail.encode()) <= TAIL_BYTES + 20 * 4, len(tail)  # + the indentation of lines
    assert "lo_ext first line" in tail and tail.rstrip().endswith("x" * 100)
    assert "[...] xxxx" in tail
    assert hwm < 48 << 20 and peak < 48 << 20, (hwm, peak)  # the helper never held the line


def test_a_program_that_cannot_be_started_fails_its_run():
    solver = ExternalSolver(["./no-such-program-{0:.0f}"], launcher="direct")  # not checked
    with pytest.raises(ExternalRunError, match=r"could not start the program: FileNotFound"):
        list(solver(np.array([1.0])))


# -- backpressure ----------------------------------------------------------------------------


def test_backpressure_stops_reading_and_does_not_count_toward_run_timeout():
    """No room for 3 s: nothing is delivered meanwhile, and the run (1.5 s of run_timeout)
    survives it, because time without room is not the program's."""
    room = threading.Event()
    handler = Recorder([[1.0, 2.0]], room=room.is_set)
    pool = started(program("--steps", "40", "--size", "2048", n_steps=40), handler, run_timeout=1.5)
    try:
        time.sleep(3.0)
        assert handler.samples == 0 and handler.ends == {}
        room.set()
        assert handler.done.wait(30)
        ok, n_steps, reason = handler.ends[0]
        assert ok and n_steps == 40, reason
        assert [s for s, _ in handler.steps[0]] == list(range(40))
    finally:
        pool.stop()


# -- many runs at once ------------------------------------------------------------------------

N_RUNS = 1000
N_REF = 50  # the reference each 1,000-run test measures first, on the same load
N_STEPS = 5


def gated_solver(gate_program, tmp_path) -> tuple[int, ExternalSolver]:
    """Programs that send their first step, then wait until the test writes one byte each to
    a named pipe (the gate): the file descriptor to write to, and the solver."""
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    # Read-write, so that the programs' opens never block and the pipe never sees its end.
    gate_fd = os.open(gate, os.O_RDWR | os.O_NONBLOCK)
    solver = ExternalSolver(
        [str(gate_program), str(gate), str(N_STEPS), "4", "0"],
        fields=["x", "y"],
        launcher="direct",
        n_steps=N_STEPS,
        connect_timeout=60,
    )
    return gate_fd, solver


@pytest.mark.timeout(120)
def test_a_thousand_runs_in_flight_into_one_rank(gate_program, tmp_path):
    """1,000 C programs at once, each connected to this process: each sends step 0, then waits
    on a named pipe that the handler opens (one byte per run) only once all 1,000 have sent
    their step 0, so that every run is provably in flight at the same moment.

    Open files: 1,000 sockets here (the pool lifts its soft limit to what n_workers needs, up
    to the hard limit) and 1,000 output pipes in the launcher helper (which lifts its own)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2 * N_RUNS + 512:
        pytest.skip(f"the hard limit on open files ({hard}) is too low for {N_RUNS} runs")
    ref = in_flight_at_once(gate_program, tmp_path / "ref", N_REF)
    elapsed = in_flight_at_once(gate_program, tmp_path / "all", N_RUNS)
    # Linear in the number of runs: per run, no slower than 3 times the small reference
    # measured just before on this machine (which also carries the fixed start-up cost).
    assert elapsed / N_RUNS < 3 * ref / N_REF, (elapsed, ref)


def in_flight_at_once(gate_program, tmp_path: Path, n: int) -> float:
    """``n`` gated programs through one pool, all provably in flight at once: seconds taken."""
    tmp_path.mkdir()
    gate_fd, solver = gated_solver(gate_program, tmp_path)
    handler = Recorder([[float(i)] for i in range(n)])
    opened_at: list[float] = []
    connections: list[int] = []

    def open_gate() -> None:  # receiver thread: every run is live
        connections.append(pool.connections)
        opened_at.append(time.monotonic())
        os.write(gate_fd, b"g" * n)

    handler.on_all_live = open_gate
    t0 = time.monotonic()
    pool = started(solver, handler, n_workers=n)
    try:
        assert handler.done.wait(90), f"{len(handler.ends)} of {n} runs ended"
        elapsed = time.monotonic() - t0
    finally:
        pool.stop()
        os.close(gate_fd)
    failed = {k: v for k, v in handler.ends.items() if not v[0]}
    assert not failed, list(failed.items())[:3]
    assert handler.max_live == n and connections == [n]
    assert pool.max_in_flight == n
    assert handler.samples == n * N_STEPS
    for sim_id, steps in handler.steps.items():
        assert [s for s, _ in steps] == list(range(N_STEPS))
        for k, (x, y) in steps:
            np.testing.assert_array_equal(x, [sim_id, k])
            np.testing.assert_array_equal(y, np.full(4, sim_id + k, np.float32))
    assert programs_left() == []
    print(f"\n{n} runs: all in flight after {opened_at[0] - t0:.1f} s, done in {elapsed:.1f} s")
    return elapsed


@pytest.mark.timeout(120)
def test_a_thousand_runs_through_a_trainer(gate_program, tmp_path):
    """The same 1,000 programs at once, in a study: OnlineDataModule with n_workers=1000 and a
    Lightning Trainer. The gate opens once the rank holds 1,000 connections."""
    ref = through_a_trainer(gate_program, tmp_path / "ref", N_REF)
    elapsed = through_a_trainer(gate_program, tmp_path / "all", N_RUNS)
    # Linear in the number of runs, against the small reference measured just before.
    assert elapsed / N_RUNS < 3 * ref / N_REF, (elapsed, ref)


def through_a_trainer(gate_program, tmp_path: Path, n: int) -> float:
    """``n`` gated programs at once in a study through a Trainer: seconds taken by ``fit``."""
    tmp_path.mkdir()
    gate_fd, solver = gated_solver(gate_program, tmp_path)
    batch = 25  # divides the samples of both sizes
    dm = OnlineDataModule(
        solver,
        ParameterSpace([0.0], [1.0]),
        n_simulations=n,
        n_workers=n,
        batch_size=batch,
        buffer=FIFO(2000, watermark=batch),
    )
    peak: list[int] = []
    done = threading.Event()

    def open_gate() -> None:
        deadline = time.monotonic() + 90
        while not done.is_set() and time.monotonic() < deadline:
            pool = dm._pool
            k = pool.connections if pool is not None else 0
            if k >= n:
                peak.append(k)
                os.write(gate_fd, b"g" * n)
                return
            time.sleep(0.02)

    opener = threading.Thread(target=open_gate, daemon=True)
    trainer = quiet_trainer(accelerator="cpu")
    t0 = time.monotonic()
    opener.start()
    try:
        trainer.fit(Regressor(2, 4), dm)
    finally:
        done.set()
        opener.join()
        os.close(gate_fd)
    elapsed = time.monotonic() - t0
    assert peak == [n]
    assert dm.stats["completed"] == n and dm.stats["failed"] == 0
    assert dm.stats["samples_received"] == n * N_STEPS == dm.stats["samples_served"]
    assert trainer.global_step == n * N_STEPS // batch
    assert programs_left() == []
    print(f"\n{n} runs through a Trainer in {elapsed:.1f} s")
    return elapsed


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:5000", ("127.0.0.1", 5000)),
        ("node12-ib:80", ("node12-ib", 80)),
        ("[::1]:5000", ("::1", 5000)),
        ("::1:5000", ("::1", 5000)),
        ("[fe80::1%eth0]:7", ("fe80::1%eth0", 7)),
        ("127.0.0.1", None),
        ("[::1]", None),
        (":5000", None),
        ("host:12x", None),
        ("host:70000", None),
        ("[::1:5000", None),
    ],
)
def test_the_python_client_reads_ipv4_ipv6_and_named_addresses(address, expected):
    if expected is None:
        with pytest.raises(ValueError, match="host:port"):
            split_address(address)
    else:
        assert split_address(address) == expected


def test_echo_output_reaches_the_training_process_stderr(capfd):
    steps = list(program("--steps", "2", echo_output=True)(np.array([1.0, 2.0])))
    assert len(steps) == 2
    err = capfd.readouterr().err
    assert "lo_ext_client starting with theta=[1.0, 2.0]" in err and "lo_ext_client done" in err


def test_a_step_larger_than_max_step_bytes_fails_its_run_before_it_is_read():
    solver = program("--steps", "3", "--size", "1000", max_step_bytes=1024)  # y: 4,000 bytes
    with pytest.raises(ExternalRunError, match=r"step 0: protocol error: message of \d+ bytes"):
        list(solver(np.array([1.0, 2.0])))
