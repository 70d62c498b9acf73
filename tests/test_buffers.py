"""Tests for lightning_online.buffers: policies, watermark, backpressure, drain, stats."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from lightning_online.buffers import FIFO, FIRO, Buffer, Reservoir

POLICIES = [FIFO, FIRO, Reservoir]


def fill(buf: Buffer, items) -> None:
    for x in items:
        assert buf.put(x, timeout=1.0)


def drain(buf: Buffer, n: int) -> list:
    """Get batches until exhausted (buffer must be closed)."""
    out = []
    while not buf.exhausted:
        batch = buf.get(n)
        assert batch, "a closed, non-exhausted buffer must serve"
        out += batch
    assert buf.get(n) == []
    return out


def test_fifo_order():
    buf = FIFO(10, watermark=1)
    fill(buf, range(7))
    assert buf.get(3) == [0, 1, 2]
    fill(buf, [7, 8])
    assert buf.get(6) == [3, 4, 5, 6, 7, 8]
    assert len(buf) == 0


def test_firo_every_item_once_random_order():
    buf = FIRO(100, watermark=100, seed=0)
    fill(buf, range(100))
    buf.close()
    out = drain(buf, 7)
    assert sorted(out) == list(range(100))
    assert out != list(range(100))
    assert buf.stats()["served"] == 100 and buf.stats()["unique_served"] == 100


@pytest.mark.parametrize("cls", [FIRO, Reservoir])
def test_seed_determinism(cls):
    def run(seed):
        buf = cls(50, watermark=10, seed=seed)
        fill(buf, range(50))
        return [buf.get(5) for _ in range(5)]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_reservoir_repeats_and_counts():
    buf = Reservoir(10, watermark=10, seed=1)
    fill(buf, range(10))
    seen = []
    for _ in range(20):
        batch = buf.get(4)
        assert len(batch) == len(set(batch)) == 4
        seen += batch
    assert len(buf) == 10  # nothing removed
    assert len(set(seen)) < len(seen)  # repeats
    counts = buf.served_counts()
    assert counts.sum() == 80 and counts.shape == (10,)
    s = buf.stats()
    assert s["served"] == 80 and s["unique_served"] == (counts > 0).sum()
    assert s["mean_reuse"] == pytest.approx(80 / s["unique_served"])
    assert buf.unserved == (counts == 0).sum()


def test_reservoir_blocks_when_full_of_unserved():
    buf = Reservoir(5, watermark=5, seed=0)
    fill(buf, range(5))
    assert not buf.has_room()
    assert buf.put(99, timeout=0.05) is False
    assert buf.stats()["received"] == 5


def test_reservoir_evicts_only_served():
    buf = Reservoir(6, watermark=6, seed=2)
    fill(buf, range(6))
    served = set(buf.get(2))
    assert buf.has_room()
    fill(buf, [100, 101])  # replaces exactly the two served ones
    assert not buf.has_room()
    assert buf.unserved == 6
    buf.close()
    left = set(drain(buf, 6))
    assert left == (set(range(6)) - served) | {100, 101}
    assert buf.stats()["evicted"] == 2  # the two served ones, replaced


def test_reservoir_random_replacement_keeps_unserved():
    # Stream 200 items through a reservoir of 8: every item must be served before eviction.
    buf = Reservoir(8, watermark=4, seed=5)
    served = set()
    for x in range(200):
        while not buf.has_room():
            served.update(buf.get(2))
        assert buf.put(x, timeout=0)
    buf.close()
    served.update(drain(buf, 3))
    assert served == set(range(200))
    assert buf.stats()["unique_served"] == 200 and buf.stats()["evicted"] == 200 - 8


def test_reservoir_drain_tops_up_with_served():
    buf = Reservoir(10, watermark=10, seed=0)
    fill(buf, range(10))
    first = buf.get(3)
    assert buf.unserved == 7
    buf.close()
    batch = buf.get(5)  # only never-served items while there are enough
    assert not set(batch) & set(first) and buf.unserved == 2
    batch2 = buf.get(5)  # 2 unserved, topped up with 3 distinct served ones
    assert len(batch2) == len(set(batch2)) == 5
    assert set(first) | set(batch) | set(batch2) == set(range(10))
    assert buf.exhausted and buf.get(1) == [] and not buf.ready()
    assert (buf.served_counts() > 0).all() and buf.stats()["served"] == 13


@pytest.mark.parametrize("cls", POLICIES)
def test_watermark_gates_first_get(cls):
    buf = cls(20, watermark=5, seed=0)
    fill(buf, range(4))
    assert not buf.ready() and buf.get(1) == []
    fill(buf, [4])
    assert buf.ready() and len(buf.get(1)) == 1


@pytest.mark.parametrize("cls", POLICIES)
def test_get_waits_for_full_batch_before_close(cls):
    buf = cls(20, watermark=1, seed=0)
    fill(buf, range(3))
    assert not buf.ready(4) and buf.get(4) == []
    assert buf.wait_ready(4, timeout=0.02) is False
    fill(buf, [3])
    assert buf.ready(4) and len(buf.get(4)) == 4


@pytest.mark.parametrize("cls", [FIFO, FIRO])
def test_drain_after_close_consuming(cls):
    buf = cls(10, watermark=8, seed=0)
    fill(buf, range(5))
    assert not buf.ready(4)
    buf.close()
    assert buf.closed and not buf.exhausted and buf.ready(4)
    out = drain(buf, 4)
    assert sorted(out) == list(range(5))
    assert buf.exhausted and len(buf) == 0
    buf.close()  # idempotent
    with pytest.raises(RuntimeError):
        buf.put(1)


def test_reservoir_drain_serves_all_unserved():
    buf = Reservoir(10, watermark=2, seed=0)
    fill(buf, range(3))
    buf.close()
    out = drain(buf, 2)  # 2 unserved, then 1 unserved topped up with 1 served
    assert set(out) == {0, 1, 2} and len(out) == 4
    assert buf.exhausted and len(buf) == 3


@pytest.mark.parametrize("cls", POLICIES)
def test_stats(cls):
    buf = cls(8, watermark=2, seed=0)
    s = buf.stats()
    assert set(s) == {
        "received",
        "served",
        "evicted",
        "fill",
        "size",
        "unique_served",
        "mean_reuse",
    }
    assert s["mean_reuse"] == 0.0 and s["served"] == 0
    fill(buf, range(4))
    buf.get(2)
    buf.get(2)
    s = buf.stats()
    assert s["received"] == 4 and s["served"] == 4 and s["evicted"] == 0
    assert s["size"] == len(buf) and s["fill"] == pytest.approx(len(buf) / 8)
    assert s["mean_reuse"] == pytest.approx(4 / s["unique_served"])
    if cls is Reservoir:
        assert s["size"] == 4 and s["unique_served"] <= 4
    else:
        assert s["size"] == 0 and s["unique_served"] == 4 and s["mean_reuse"] == 1.0
        assert buf.served_counts().shape == (0,)
    assert repr(buf).startswith(cls.__name__ + "(capacity=8")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"capacity": 0}, "capacity"),
        ({"capacity": -3}, "capacity"),
        ({"capacity": True}, "capacity"),
        ({"capacity": 2.5}, "capacity"),
        ({"capacity": 500, "watermark": 600}, "watermark"),
        ({"capacity": 5, "watermark": 0}, "watermark"),
        ({"capacity": 5, "watermark": False}, "watermark"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        FIFO(**kwargs)


def test_bad_argument_message_and_defaults():
    with pytest.raises(
        ValueError,
        match=r"Reservoir: watermark must be an integer between 1 and capacity \(500\), got 600",
    ):
        Reservoir(500, watermark=600)
    with pytest.raises(
        ValueError, match=r"n must be an integer between 1 and capacity \(4\), got 0"
    ):
        FIFO(4).get(0)
    with pytest.raises(
        ValueError, match=r"n must be an integer between 1 and capacity \(4\), got 5"
    ):
        FIFO(4).ready(5)
    assert FIFO(500).watermark == 125 and FIFO(3).watermark == 1 and FIFO(np.int64(8)).capacity == 8


@pytest.mark.timeout(20)
def test_backpressure_full_fifo():
    buf = FIFO(4)
    fill(buf, range(4))
    assert not buf.has_room()
    t0 = time.monotonic()
    assert buf.put(4, timeout=0.1) is False
    assert time.monotonic() - t0 >= 0.09
    assert len(buf) == 4 and buf.stats()["received"] == 4


@pytest.mark.timeout(20)
@pytest.mark.parametrize("cls", POLICIES)
def test_blocked_put_wakes_on_close(cls):
    buf = cls(3, seed=0)
    fill(buf, range(3))
    errors = []

    def producer():
        try:
            buf.put(3)
        except RuntimeError as e:
            errors.append(e)

    t = threading.Thread(target=producer)
    t.start()
    time.sleep(0.05)
    assert t.is_alive()  # blocked: no room
    buf.close()
    t.join(5)
    assert not t.is_alive() and len(errors) == 1


@pytest.mark.timeout(20)
def test_blocked_put_wakes_on_get():
    buf = FIFO(2, watermark=1)
    fill(buf, range(2))
    t = threading.Thread(target=lambda: buf.put(2))
    t.start()
    time.sleep(0.02)
    assert buf.get(1) == [0]
    t.join(5)
    assert not t.is_alive() and len(buf) == 2


@pytest.mark.timeout(20)
@pytest.mark.parametrize("cls", POLICIES)
def test_capacity_bounded_under_producer_thread(cls):
    cap, total = 16, 160
    buf = cls(cap, watermark=4, seed=0)
    max_len = 0
    stop = threading.Event()

    def producer():
        for x in range(total):
            buf.put(x)
        buf.close()

    def watcher():
        nonlocal max_len
        while not stop.is_set():
            max_len = max(max_len, len(buf))

    threads = [threading.Thread(target=producer), threading.Thread(target=watcher)]
    for t in threads:
        t.start()
    served = []
    while not buf.exhausted:
        if buf.wait_ready(4, timeout=0.5):
            batch = buf.get(4)
            served += batch
            max_len = max(max_len, len(buf))
            time.sleep(0.001)  # slow consumer
    stop.set()
    for t in threads:
        t.join(5)
    assert max_len <= cap
    assert set(served) == set(range(total))  # nothing lost, for every policy
    s = buf.stats()
    assert s["received"] == total and s["unique_served"] == total
    # only a reservoir evicts (served samples, for room): every sample not still held
    assert s["evicted"] == (total - s["size"] if cls is Reservoir else 0)
    if cls is not Reservoir:
        assert sorted(served) == list(range(total))
    if cls is FIFO:
        assert served == list(range(total))


@pytest.mark.parametrize("cls", POLICIES)
@pytest.mark.parametrize("closed", [False, True])
def test_ready_batches_is_what_gets_in_a_row_serve(cls, closed):
    """The promise a rank makes to the others: that many get(n) in a row serve, without puts."""
    for size in range(0, 40, 3):
        for n in (1, 4, 7):
            probe = cls(40, watermark=10, seed=1)
            fill(probe, range(size))
            if closed:
                probe.close()
            promised = probe.ready_batches(n, limit=5)
            for _ in range(promised):
                assert probe.get(n), (cls.__name__, size, n, promised)
            if promised < 5:  # a consuming policy promises all it can; a reservoir up to limit
                assert not probe.get(n) or (cls is Reservoir and not closed)
    assert cls(10, 2).ready_batches(1, limit=3) == 0
