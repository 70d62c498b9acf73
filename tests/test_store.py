"""The slot store: samples written once into preallocated memory, checked at the door, and
gathered into batches by one vectorised copy per field."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from lightning_online._transport.store import SlotStore
from lightning_online._wire.samples import (
    COALESCE_SAMPLES,
    all_finite,
    check_step,
    coalesce_limit,
    encode_sample,
)
from lightning_online.buffers import FIFO, FIRO, Reservoir


def blob(sim: int, step: int, *fields: np.ndarray, bare: bool = False) -> np.ndarray:
    return encode_sample(sim, step, fields, bare)


def sample(step: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full(3, step, np.float32), np.arange(6, dtype=np.float64).reshape(2, 3) + step


def test_gather_stacks_each_field_exactly():
    store = SlotStore(8)
    store.configure(blob(7, 0, *sample(0)))
    assert store.spare == coalesce_limit(store.size) and store.n_slots == 8 + store.spare
    slots = store.write(np.stack([blob(7, k, *sample(k)) for k in range(5)]))
    x, y = store.gather(np.array(slots[::-1]))
    assert x.dtype == torch.float32 and y.dtype == torch.float64 and y.shape == (5, 2, 3)
    for row, k in enumerate(range(4, -1, -1)):
        assert torch.equal(x[row], torch.from_numpy(sample(k)[0]))
        assert torch.equal(y[row], torch.from_numpy(sample(k)[1]))
    sims, steps = store.ids(np.array(slots))
    assert sims.tolist() == [7] * 5 and steps.tolist() == [0, 1, 2, 3, 4]
    # batches are copies: rewriting a slot leaves an earlier batch alone
    store.release(slots)
    store.write(np.stack([blob(7, 9, *sample(9))] * (store.n_slots - 3)))
    assert torch.equal(x[0], torch.from_numpy(sample(4)[0]))


@pytest.mark.parametrize(
    "dtype", [np.float16, np.float32, np.float64, np.complex64, np.complex128, np.int8, np.bool_]
)
def test_every_wire_dtype_and_odd_sizes(dtype):
    a = (np.arange(7) % 2).astype(dtype)  # 7 elements: padded on the wire
    b = np.arange(5, dtype=np.int64)
    store = SlotStore(4)
    store.configure(blob(1, 0, a, b))
    slots = store.write(np.stack([blob(1, 0, a, b), blob(1, 1, a, b)]))
    ga, gb = store.gather(np.array(slots))
    assert ga.numpy().tolist() == [a.tolist()] * 2 and gb.numpy().tolist() == [b.tolist()] * 2


def test_check_refuses_what_does_not_match_the_first_sample():
    store = SlotStore(4)
    store.configure(blob(1, 0, *sample(0)))
    ok = blob(1, 1, *sample(1))
    assert store.check(ok[None]) is None
    bad_shape = blob(1, 2, np.zeros(4, np.float32), sample(0)[1])
    row, reason = store.check(bad_shape[None])
    assert row == 0 and "shape or dtype changed" in reason and "float32(4,)" in reason
    bad_dtype = blob(1, 2, np.zeros(3, np.float64), sample(0)[1].astype(np.float32))
    assert "shape or dtype changed" in store.check(bad_dtype[None])[1]
    row, reason = store.check(np.stack([ok, ok, bad_shape]))
    assert row == 2
    bare = blob(1, 0, *sample(0), bare=True)
    assert "shape or dtype changed" in store.check(bare[None])[1]


def test_bare_samples_gather_to_one_tensor_field():
    store = SlotStore(2)
    store.configure(blob(0, 0, np.ones(4, np.float32), bare=True))
    assert store.bare and len(store.gather(np.array(store.write(store.mem[:0, : store.size])))) == 1


@pytest.mark.parametrize("policy", [FIFO, FIRO, Reservoir])
@pytest.mark.timeout(60)
def test_slots_recycle_under_a_concurrent_producer(policy):
    """A receiver thread writes messages of several samples while the training thread gathers:
    every batch holds whole, uncorrupted samples, and no slot is lost or double-booked."""
    cap, k = 64, 8
    buf = policy(cap, cap // 2, seed=0)
    store = SlotStore(cap)
    buf.on_release = store.release
    store.configure(blob(0, 0, np.zeros(256, np.float32)))
    stop = threading.Event()
    sent = [0]

    def produce() -> None:
        while not stop.is_set():
            if buf.free() < k or store.n_free < k:
                stop.wait(1e-4)
                continue
            base = sent[0]
            msg = np.stack(
                [blob(0, base + i, np.full(256, base + i, np.float32)) for i in range(k)]
            )
            added = buf.put_many(store.write(msg))
            assert added == k
            sent[0] += k

    t = threading.Thread(target=produce)
    t.start()
    batches = 0
    try:
        while batches < 300:
            # The steps are read with the gather, while the slots are still the batch's.
            got = buf.get(
                16,
                gather=lambda items: (
                    store.gather(np.asarray(items)),
                    store.ids(np.asarray(items))[1],
                ),
            )
            if got is None:
                continue
            (x,), steps = got
            # every row is one whole sample: constant, and equal to its step
            assert (x == x[:, :1]).all()
            np.testing.assert_array_equal(x[:, 0].numpy(), steps.astype(np.float32))
            batches += 1
    finally:
        stop.set()
        t.join()
    held = len(buf)
    assert store.n_free + held == store.n_slots  # every slot is either free or in the buffer
    assert sent[0] >= cap


def test_a_message_never_exceeds_the_spare_slots():
    assert coalesce_limit(1) == COALESCE_SAMPLES
    assert coalesce_limit(1 << 30) == 1
    assert 1 <= coalesce_limit(100_000) <= COALESCE_SAMPLES


def test_batch_memory_is_reused_only_once_nothing_refers_to_it():
    store = SlotStore(8)
    store.configure(blob(0, 0, np.zeros(4, np.float32)))
    slots = store.write(np.stack([blob(0, k, np.full(4, k, np.float32)) for k in range(8)]))
    (a,) = store.gather(np.array(slots[:2]))
    view = a[1:]  # a view keeps the batch's memory alive, as does the batch itself
    held = a.numpy().copy()
    del a
    (b,) = store.gather(np.array(slots[2:4]))
    assert b.data_ptr() != view.data_ptr() - 16
    assert view.numpy().tolist() == held[1:].tolist()  # untouched by the second gather
    ptr = b.data_ptr()
    del b
    (c,) = store.gather(np.array(slots[4:6]))
    assert c.data_ptr() == ptr  # nothing refers to b's memory: it is reused
    assert c[:, 0].tolist() == [4.0, 5.0]
    del view
    kept = [store.gather(np.array(slots[:2]))[0] for _ in range(6)]  # more alive than pooled
    assert len({t.data_ptr() for t in kept}) == 6


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.complex64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_step_with_nan_or_inf_is_refused_where_it_is_produced(dtype, bad):
    x = np.ones((2, 3), dtype)
    assert all_finite(x) and check_step((x,), 0, None) is None
    x[1, 2] = bad
    assert not all_finite(x)
    assert check_step((np.ones(2), x), 4, None) == "step 4: field 1 contains NaN or Inf"
    big = np.full(3, np.finfo(np.float32).max, np.float32)  # finite, even if a sum overflows
    assert all_finite(big) and all_finite(np.zeros(0, dtype)) and all_finite(np.arange(3))
    first = [(np.dtype(np.float64).str, (2,))]
    assert "differ from the first step" in check_step((np.ones(3),), 1, first)


def test_a_message_lands_straight_in_back_to_back_free_slots():
    store = SlotStore(8)
    store.configure(blob(0, 0, np.zeros(4, np.float32)))  # 144 bytes: a multiple of 16
    assert store.mem.shape[1] == store.size
    run = store.take_run(3)
    assert run == [0, 1, 2]
    store.release([1])  # the free list now starts 3, 4, ..., then 1: no run of 8 from its head
    assert store.take_run(len(store._free)) is None
    assert store.take_run(2) == [3, 4]
    padded = SlotStore(4)
    padded.configure(blob(0, 0, np.zeros(2, np.float32)))  # 120 bytes, slots of 128
    assert padded.take_run(2) is None and padded.take_run(1) == [0]


def test_a_sample_that_cannot_be_decoded_fails_its_run_not_the_study():
    """A malformed first message (bad header, extents that overflow or run past its end) is
    refused with the reason and its run fails; the receiver thread goes on."""
    from lightning_online import FIFO, ParameterSpace, Uniform
    from lightning_online._study.ledger import Study
    from lightning_online._util.dist import Group

    study = Study(
        space=ParameterSpace([0], [1]),
        sampler=Uniform(seed=0),
        buffer=FIFO(16),
        n_simulations=4,
        n_workers=1,
        batch_size=4,
        max_retries=0,
        max_failed_fraction=1.0,
        group=Group(),
    )
    study.sync()
    sim_id, _ = study.next_task()
    good = blob(sim_id, 0, np.zeros(3, np.float32))
    for bad_word, value in ((3, 99), (6, 2**62), (6, -1), (0, 7)):  # n_fields, shape, magic
        forged = good.copy()
        forged.view(np.int64)[bad_word] = value
        study.on_sample(forged)
    assert sim_id in study._rejected_sims and "could not be decoded" in study._rejected_sims[sim_id]
    study.on_end(sim_id, True, 1, 0.1, "")
    assert study.runs[sim_id].status == "failed"
    assert study.count.samples_rejected == 4 and not study.store.configured
