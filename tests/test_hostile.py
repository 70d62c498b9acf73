"""Hostile bytes: every length from a peer, a worker or a sandbox is checked against the bytes
present, with Python integers; a bad message fails its run (with the reason), never the study;
reasons and output are capped. Property-based fuzzing (hypothesis) of the ``_wire`` and
``_wire.tcp`` decoders and of the HELLO handshake over real sockets; real MPI workers, sandboxes
and programs for the rest (docs/fault-tolerance.md, "what is guaranteed").
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _hostile import Hostile
from _models import fit_study
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_online import FIFO, ExternalSolver, ParameterSpace, Uniform
from lightning_online._study.ledger import MAX_FAILURES, Study
from lightning_online._transport.pool import WorkerPool
from lightning_online._util.dist import Group
from lightning_online._wire import tcp as proto
from lightning_online._wire.samples import (
    DTYPES,
    MAX_REASON,
    NO_SAMPLE,
    cap_text,
    decode_end,
    decode_sample,
    encode_end,
    encode_sample,
)
from lightning_online.client import split_address

HERE = Path(__file__).parent
PROGRAM = str(HERE / "programs" / "lo_ext_client.py")
BAD_WORKER = HERE / "programs" / "lo_bad_worker.py"
pytestmark = [pytest.mark.timeout(180)]

# The short variant runs in CI (the same examples every time); a long local one:
# LIGHTNING_ONLINE_FUZZ_EXAMPLES=20000 pytest tests/test_hostile.py -k decode
EXAMPLES = int(os.environ.get("LIGHTNING_ONLINE_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- the decoders, pure ---------------------------------------------------------------------


def _sample() -> np.ndarray:
    return encode_sample(3, 1, (np.arange(6, dtype=np.float32), np.ones((2, 2), np.int64)))


@FUZZ
@given(st.binary(max_size=600))
def test_decode_sample_of_random_bytes_is_a_sample_or_a_value_error(data):
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        s = decode_sample(buf)
    except ValueError:
        return
    for a in s.fields:  # views inside the message: nothing allocated from announced sizes
        assert a.base is not None and a.nbytes <= len(data)


@FUZZ
@given(st.integers(0, 4 + 10 * 2 - 1), st.integers(-(2**63), 2**63 - 1), st.integers(0, 200))
def test_a_forged_header_word_or_a_truncation_never_escapes_value_error(word, value, cut):
    buf = _sample().copy()
    buf.view(np.int64)[word] = value
    buf = buf[: len(buf) - cut]
    try:
        s = decode_sample(buf)
    except ValueError:
        return
    assert sum(a.nbytes for a in s.fields) <= len(buf)


def test_extents_whose_product_wraps_int64_are_refused():
    buf = _sample().copy()
    words = buf.view(np.int64)
    words[4 + 1], words[4 + 2], words[4 + 3], words[4 + 4] = 3, 2**32, 2**32, 4  # 2**66 items
    with pytest.raises(ValueError, match="runs past the end"):
        decode_sample(buf)


@FUZZ
@given(st.binary(max_size=200))
def test_decode_end_of_random_bytes(data):
    try:
        _sim_id, ok, n_steps, _seconds, reason = decode_end(np.frombuffer(data, dtype=np.uint8))
    except ValueError:
        return
    assert isinstance(ok, bool) and n_steps >= 0 and len(reason.encode()) <= MAX_REASON


def test_a_run_report_of_gigabytes_of_reason_is_capped():
    big = encode_end(1, False, 0, 1.0, "first line\n" + "y" * (8 << 20))
    *_, reason = decode_end(big)
    assert len(reason.encode()) <= MAX_REASON and reason.startswith("first line")
    assert "bytes in all, cut" in reason
    raw = np.concatenate([encode_end(1, False, 0, 1.0), np.full(1 << 24, 0xFF, np.uint8)])
    assert len(decode_end(raw)[4].encode()) <= MAX_REASON  # undecodable bytes too


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.one_of(st.text(max_size=20_000), st.binary(max_size=20_000)), st.integers(64, 9000))
def test_cap_text_keeps_at_most_limit_bytes(text, limit):
    out = cap_text(text, limit)
    assert len(out.encode()) <= limit
    if isinstance(text, str) and len(text.encode()) <= limit:
        assert out == text


@FUZZ
@given(st.binary(min_size=0, max_size=64))
def test_decode_header_raises_protocol_error_only(data):
    try:
        kind, _n_fields, _step, payload = proto.decode_header(data)
    except proto.ProtocolError:
        return
    assert kind in proto.KINDS and payload >= 0


@FUZZ
@given(st.binary(max_size=1200))
def test_decode_hello_raises_protocol_error_only(data):
    try:
        part, n_parts, token = proto.decode_hello(data)
    except proto.ProtocolError:
        return
    assert 0 <= part < n_parts <= proto.MAX_PARTS and isinstance(token, bytes)


def _descriptor(name: bytes, code: int, ndim: int, shape: list[int], nbytes: int) -> bytes:
    d = np.zeros(1, dtype=proto.DESCRIPTOR)
    d[0]["name"], d[0]["dtype"], d[0]["ndim"] = name, code, ndim
    d[0]["shape"][: len(shape)] = shape
    d[0]["nbytes"] = nbytes
    return d.tobytes()


@FUZZ
@given(
    st.integers(-3, 20),
    st.lists(
        st.tuples(
            st.binary(min_size=0, max_size=48),
            st.integers(-2, len(DTYPES) + 1),
            st.integers(-1, 9),
            st.lists(st.integers(-1, 2**63 - 1) | st.integers(0, 8), max_size=8),
            st.integers(0, 2**64 - 1) | st.integers(0, 64),
        ),
        max_size=4,
    ),
    st.binary(max_size=300),
)
def test_decode_step_of_forged_descriptors_raises_protocol_error_only(n_fields, descs, tail):
    payload = bytearray(b"".join(_descriptor(*d) for d in descs) + tail)
    try:
        fields = proto.decode_step(n_fields, payload)
    except proto.ProtocolError:
        return
    assert sum(a.nbytes for a in fields.values()) <= len(payload)


def test_a_step_whose_extents_wrap_int64_is_a_protocol_error():
    # 2**32 * 2**32 * 4 float32 items: np.prod(dtype=int64) wrapped it to 0 bytes, accepted
    payload = bytearray(_descriptor(b"y", 0, 3, [2**32, 2**32, 4], 0))
    with pytest.raises(proto.ProtocolError, match="nbytes 0 does not match"):
        proto.decode_step(1, payload)


def test_a_short_header_is_a_protocol_error_not_a_struct_error():
    with pytest.raises(proto.ProtocolError, match="header is 32 bytes"):
        proto.decode_header(b"LON1")


# -- over real sockets: the HELLO handshake and what follows it -------------------------------


@pytest.mark.usefixtures("no_orphans")
def test_random_bytes_at_the_door_never_disturb_a_run():
    """Random peers (random bytes, truncated or forged HELLOs) connect while a run waits; they
    are closed, the pool's receiver thread never fails, the run completes."""
    from test_hub import Recorder, started

    handler = Recorder([[1.0, 2.0]])
    handler.release.clear()
    solver = ExternalSolver(
        [sys.executable, PROGRAM, "--steps", "3"], fields=["x", "y"], launcher="direct"
    )
    pool = started(solver, handler)
    host, port = split_address(pool.address)
    peers: list[socket.socket] = []
    hello = proto.encode_hello("a" * 32)

    @settings(max_examples=150, deadline=None, derandomize=True)
    @given(
        st.one_of(
            st.binary(max_size=2000),
            st.integers(0, len(hello)).map(lambda n: hello[:n]),  # truncated
            st.binary(min_size=8, max_size=8).map(  # forged part / n_parts, any token
                lambda b: proto.encode_header(proto.HELLO, 8 + 4) + b + b"abcd"
            ),
            st.integers(0, 2**64 - 1).map(  # a HELLO announcing any payload size
                lambda n: struct.pack("<IHHIIqQ", proto.MAGIC, proto.VERSION, 1, 0, 0, 0, n)
            ),
        )
    )
    def peer(data: bytes) -> None:
        s = socket.create_connection((host, port))
        if data:
            s.sendall(data)
        peers.append(s)
        assert pool.error is None and pool.alive

    try:
        peer()
        handler.release.set()
        pool.wake()
        assert handler.done.wait(60)
        ok, n_steps, reason = handler.ends[0]
        assert ok and n_steps == 3, reason
        assert pool.error is None and pool.alive
        assert pool._hub is not None and pool._hub.buffer_bytes() < 1 << 20
    finally:
        for s in peers:
            s.close()
        pool.stop()


@pytest.mark.usefixtures("no_orphans")
def test_random_messages_after_a_good_hello_fail_the_run_never_the_pool(tmp_path):
    """A program that says HELLO, then sends random messages (headers with any kind, counts
    and sizes, random payloads): its run fails with a protocol error or ends; never a crash, a
    hang or an allocation from an announced size."""
    from test_hub import Recorder, started

    payload = tmp_path / "payload"
    header = st.builds(
        lambda kind, n, step, size, extra: (
            struct.pack("<IHHIIqQ", proto.MAGIC, proto.VERSION, kind, n, 0, step, size) + extra
        ),
        st.integers(0, 5),
        st.integers(0, 17),
        st.integers(-2, 3),
        st.integers(0, 2**64 - 1) | st.integers(0, 600),
        st.binary(max_size=600),
    )
    results: list[tuple[bool, str]] = []

    @settings(max_examples=25, deadline=None, derandomize=True)
    @given(st.lists(header, min_size=1, max_size=3) | st.binary(max_size=300).map(lambda b: [b]))
    def run(messages: list[bytes]) -> None:
        payload.write_bytes(b"".join(messages))
        solver = ExternalSolver(
            [sys.executable, PROGRAM, "--mode", "raw", "--payload", str(payload)],
            launcher="direct",
            max_step_bytes=1 << 16,
            exit_timeout=2.0,
        )
        handler = Recorder([[1.0, 2.0]])
        pool = started(solver, handler)
        try:
            assert handler.done.wait(30)
            assert pool.error is None and pool.alive
            assert pool._hub is not None and pool._hub.buffer_bytes() < 1 << 17
        finally:
            pool.stop()
        ok, _, reason = handler.ends[0]
        assert len(reason.encode()) <= 2 * MAX_REASON + 1024
        results.append((ok, reason))

    run()
    assert any("protocol error" in r for ok, r in results if not ok)


def test_an_error_message_of_a_mebibyte_is_capped():
    solver = ExternalSolver(
        [sys.executable, PROGRAM, "--mode", "error-big"], fields=["x", "y"], launcher="direct"
    )
    with pytest.raises(Exception, match="reported an error") as info:
        list(solver(np.array([1.0, 2.0])))
    assert len(str(info.value).encode()) < 2 * MAX_REASON + 2048


# -- the worker path: sandboxes that corrupt their pipe, a worker that breaks its protocol ----


def fit_hostile(kind: str, **kw):
    opts = dict(
        n_simulations=4,
        sampler=Uniform(seed=11),
        run_timeout=10.0,
        max_retries=0,
        max_failed_fraction=0.95,
    )
    return fit_study(Hostile(kind), **{**opts, **kw})[0]


@pytest.mark.usefixtures("no_orphans")
@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("huge_frame", "exited with code 0"),  # announced 4 EiB: nothing allocated from it
        ("bad_ref", "malformed frame: a sample reference of 5 bytes"),
        ("outside_ring", "malformed frame: a sample reference outside the ring"),
        ("unknown_kind", "a frame of unknown kind"),
        ("huge_error", "RuntimeError: xxxx"),
        ("half_frame", "stopped for 2 s in the middle of a frame"),  # never held the worker
    ],
)
def test_a_sandbox_that_corrupts_its_pipe_fails_its_run_not_the_study(kind, reason):
    dm = fit_hostile(kind, run_timeout=2.0)
    assert dm.stats["completed"] == 4
    failed = [r for r in dm.runs.values() if r.status == "failed"]
    assert failed and dm.stats["failed"] == len(failed)
    for r in failed:
        assert reason in r.reason, r.reason[:400]
        assert len(r.reason.encode()) <= 2 * MAX_REASON


class _BadWorkerPool(WorkerPool):
    """A WorkerPool whose spawned MPI worker is ``programs/lo_bad_worker.py``."""

    def _spawn(self):  # type: ignore[no-untyped-def]
        from mpi4py import MPI

        comm = MPI.COMM_SELF.Spawn(sys.executable, [str(BAD_WORKER)], maxprocs=self.n_workers)
        comm.bcast({}, root=MPI.ROOT)
        return MPI, comm


def _study(n: int, **kw) -> Study:
    opts = dict(
        space=ParameterSpace([0], [1]),
        sampler=Uniform(seed=0),
        buffer=FIFO(16),
        n_simulations=n,
        n_workers=1,
        batch_size=4,
        max_retries=0,
        max_failed_fraction=1.0,
        group=Group(),
    )
    opts.update(kw)
    return Study(**opts)


def test_a_worker_that_breaks_its_protocol_fails_its_runs_not_the_receiver():
    """Messages whose size is not k samples, shorter than a header, a truncated run report, a
    report naming another run: each fails the run with the reason; the receiver goes on."""
    study = _study(4)
    study.sync()
    pool = _BadWorkerPool(b"", 1, study, poll_interval=1e-3)
    pool.start()
    study.pool = pool
    try:
        pool.wake()
        deadline = time.monotonic() + 60
        while study.count.completed + study.count.failed < 4 and time.monotonic() < deadline:
            study.sync()
            time.sleep(0.01)
        assert pool.error is None and pool.alive
    finally:
        pool.stop()
    reasons = {r.sim_id: r.reason for r in study.runs.values() if r.status == "failed"}
    assert len(reasons) == 4, reasons
    text = "\n".join(reasons.values())
    assert "a message of 100 bytes cannot hold 3 samples" in text
    assert "malformed run report: run report of 5 bytes" in text
    assert "a message of 8 bytes cannot hold 1 samples" in text
    # the last run reports a step it never sent: without a sample it fails, as on every path
    assert NO_SAMPLE in text
    assert study.count.completed == 0


def test_failures_kept_and_their_reasons_are_bounded():
    study = _study(10_000, max_retries=0)
    study.sync()
    study.permits = 2000
    for _ in range(2000):
        study._pending.append((np.array([0.5]), False))
        sim_id, _ = study.next_task()
        study.on_end(sim_id, False, 0, 0.1, "boom " * 100_000)
    assert study.count.failed == 2000
    assert len(study.failures) == MAX_FAILURES
    assert all(len(r.reason.encode()) <= 2 * MAX_REASON for r in study.runs.values())
    state = study.export()
    assert len(state["failures"]) == MAX_FAILURES
