"""Preallocated sample memory of one training rank: fixed-size slots, written once, gathered into
batches with one vectorised copy per field.

Where code runs: :meth:`SlotStore.configure`, :meth:`SlotStore.check` and :meth:`SlotStore.write`
in the receiver thread (``_transport`` / ``_hub``); :meth:`SlotStore.gather` in the training
thread, inside the buffer's lock (``Buffer.get(n, gather=...)``), so that a slot is never
rewritten while it is read; :meth:`SlotStore.release` from whichever thread's buffer call let a
slot go.

A slot holds one sample exactly as it travels (the ``_wire`` format: an int64 header, then each
field's raw bytes), so a message lands with one ``memcpy`` and the header keeps the sample's run
and time step for the steering callback. All samples of a study share one signature (field count,
dtypes, shapes: checked at the door), so the slot size is fixed by the first sample and every
field sits at the same offset in every slot: field *i* of all slots is one strided array, and a
batch is ``torch.index_select`` of that array along its first axis, written straight into the
batch tensor (pinned, when batches go to a GPU). Nothing is allocated per sample, and the memory
is allocated once, by one thread, so it neither grows nor fragments over a long stream.
"""

from __future__ import annotations

import ctypes
import weakref
from collections import deque
from collections.abc import Callable

import numpy as np
import torch

from lightning_online._wire.samples import (
    HEADER_BYTES,
    MAGIC_BARE,
    coalesce_limit,
    decode_sample,
    describe,
    read_header,
    record_ids,
    signature,
)

__all__ = ["SlotStore", "fields_of"]


def _pad(n: int, k: int = 16) -> int:
    return -(-n // k) * k


def _malloc_trim() -> Callable[[], object] | None:
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim  # glibc
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


_TRIM = _malloc_trim()
TRIM_EVERY = 64  # batches


def trim_heap() -> None:
    """Give free heap memory back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    A stream makes the allocator's free memory creep where a fixed data set does not: batches
    and messages are made and freed by two threads, in an order that leaves holes, and glibc
    keeps the holes resident. Measured (benchmarks/memory.py, 40 buffer capacities streamed):
    RSS grew by 44-102 % of the buffer's size; trimming every 256 batches brought the growth
    to -16..-9 % with peaks up to 33 %, so it trims every 64 (~1 ms per trim, ~15 us per
    batch)."""
    if _TRIM is not None:
        _TRIM()


class _BatchPool:
    """Memory for one field's batches, reused once the batch handed out in it is gone.

    Ownership is explicit, whatever the interpreter (no reference counts are read, which
    CPython 3.14 and the free-threaded build report differently): each batch is made with
    ``torch.from_numpy`` over a fresh ndarray *view* of a pool array, and a finaliser on that
    view gives the array back to the pool when the view dies. The batch's storage holds the
    view; every tensor view of the batch, ``.numpy()`` of it or a copy that aliases it holds the
    storage; so the array comes back only once nothing anywhere can read the batch any more,
    and a batch someone still holds is never overwritten. Reuse saves the page faults of fresh
    memory for every batch (measured: 27 of the 32 ms it took to gather 64 samples of 1 MB).
    The finaliser runs in whichever thread drops the last reference; it only appends to a
    deque (atomic).
    """

    KEEP = 4  # arrays per pool; more batches alive at once get memory of their own

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype
        self.arrays: list[np.ndarray] = []  # owned by the pool, lent or free
        self._free: deque[int] = deque()  # indices into ``arrays`` nobody holds

    def empty(self, shape: tuple[int, ...]) -> torch.Tensor:
        arr = None
        for _ in range(len(self._free)):
            i = self._free.popleft()
            if self.arrays[i].shape == shape:
                arr = i
                break
            self._free.append(i)  # another shape: stays free
        if arr is None:
            if len(self.arrays) >= self.KEEP:
                return torch.from_numpy(np.empty(shape, dtype=self.dtype))  # not pooled
            self.arrays.append(np.empty(shape, dtype=self.dtype))
            arr = len(self.arrays) - 1
        view = self.arrays[arr].view()
        weakref.finalize(view, self._free.append, arr)
        return torch.from_numpy(view)


def fields_of(rows: np.ndarray) -> tuple[list[torch.Tensor], tuple[np.ndarray, np.ndarray], bool]:
    """A batch made from ``(k, size)`` samples in the ``_wire`` format, all of one signature:
    each field stacked (fresh memory), their simulation ids and steps, and whether the samples
    are bare (one field, served as a tensor rather than a list)."""
    header, fields = read_header(rows[0])
    out = [
        torch.from_numpy(
            np.ascontiguousarray(rows[:, f.offset : f.offset + f.nbytes])
            .view(f.dtype)
            .reshape(len(rows), *f.shape)
        )
        for f in fields
    ]
    return out, record_ids(rows), bool(header[0] == MAGIC_BARE)


class SlotStore:
    """Slots for ``capacity`` samples of the size of the first one, plus ``spare`` slots for one
    message's worth beyond the buffer's room, and a free list of slot indices."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.n_slots = self.spare = 0  # fixed by the first sample
        self.size = 0  # bytes of one sample, fixed by the first
        self.bare = False
        self.signature: tuple[int, ...] | None = None
        self.mem: np.ndarray | None = None
        self._template: np.ndarray | None = None  # the header words that must match
        self._views: list[torch.Tensor] = []  # field i of every slot: (n_slots, *shape)
        self._pools: list[_BatchPool] = []
        self._free: deque[int] = deque()  # append/popleft are atomic: no lock needed

    # ------------------------------------------------------------------ receiver thread
    @property
    def configured(self) -> bool:
        return self.mem is not None

    def configure(self, blob: np.ndarray) -> None:
        """Fix the layout from the study's first sample and allocate the memory (once);
        ``ValueError`` if the sample is not whole and sound."""
        header, fields = read_header(blob)
        size = int(blob.nbytes)
        self.spare = coalesce_limit(size)
        self.n_slots = self.capacity + self.spare
        stride = _pad(size)  # a multiple of every itemsize (complex128 included)
        try:
            mem = np.empty((self.n_slots, stride), dtype=np.uint8)
            # Resident now, not page by page as the stream first fills it: the memory a study
            # needs is taken (or refused) at its first sample, not hours into it, and does not
            # show up later as growth.
            mem.fill(0)
        except MemoryError as exc:
            raise MemoryError(
                f"cannot allocate {self.n_slots} sample slots of {size} bytes "
                f"({self.n_slots * stride / 2**30:.1f} GiB): lower the buffer's capacity"
            ) from exc
        self._views = [
            torch.from_numpy(
                mem[:, f.offset : f.offset + f.nbytes].view(f.dtype).reshape(self.n_slots, *f.shape)
            )
            for f in fields
        ]
        self._template = header.copy()
        self._pools = [_BatchPool(f.dtype) for f in fields]
        self.bare = bool(header[0] == MAGIC_BARE)
        self.signature = (self.bare, *signature(header))
        self.size = size
        self._free = deque(range(self.n_slots))
        self.mem = mem

    def check(self, blobs: np.ndarray) -> tuple[int, str] | None:
        """``(row, reason)`` of the first of ``blobs`` (``(k, size)`` uint8, one run's samples in
        step order) whose size, dtypes or shapes differ from the study's first sample, or None.
        (Each step's values were checked where it was produced: ``_wire.check_step``.)"""
        assert self._template is not None
        if blobs.shape[1] != self.size:
            return 0, self._mismatch(blobs[0])
        t = self._template
        head = blobs[:, : t.nbytes].view(np.int64)
        bad = (head[:, 0] != t[0]) | (head[:, 3:] != t[3:]).any(axis=1)
        if bad.any():
            row = int(np.argmax(bad))
            return row, self._mismatch(blobs[row])
        return None

    def _mismatch(self, blob: np.ndarray) -> str:
        assert self.signature is not None
        try:
            s = decode_sample(blob)
            got, step = describe(s.signature), s.step
        except ValueError as exc:
            return f"a sample could not be decoded ({exc})"
        return (
            f"step {step} yielded {got}, but the study's samples are "
            f"{describe(self.signature)} (shape or dtype changed)"
        )

    @property
    def n_free(self) -> int:
        return len(self._free)

    def take_free(self) -> int:
        """A free slot, now owned by the caller (give it back with :meth:`release`)."""
        return self._free.popleft()

    def take_run(self, k: int) -> list[int] | None:
        """k free slots that lie back to back in memory with nothing between them (so that a
        message of k samples can be received straight into them), now owned by the caller; or
        None (the next free slots are not consecutive, or slots are padded)."""
        free = self._free
        if len(free) < k or (k > 1 and self.mem is not None and self.mem.shape[1] != self.size):
            return None
        first = free[0]
        for j in range(1, k):
            if free[j] != first + j:
                return None
        return [free.popleft() for _ in range(k)]

    def write(self, blobs: np.ndarray) -> list[int]:
        """Copy ``(k, size)`` samples into k free slots (one vectorised copy); their indices."""
        assert self.mem is not None
        k = len(blobs)
        pop = self._free.popleft
        idx = [pop() for _ in range(k)]
        if k == 1:
            self.mem[idx[0], : self.size] = blobs[0]
        else:
            self.mem[idx, : self.size] = blobs
        return idx

    # ------------------------------------------------------------------ either thread
    def release(self, idx: list[int]) -> None:
        """These slots hold nothing anyone will read again."""
        self._free.extend(idx)

    # ------------------------------------------------------------------ training thread
    def rows(self, idx: list[int]) -> np.ndarray:
        """A copy of the samples in slots ``idx``, ``(len(idx), size)`` uint8 in the ``_wire``
        format (what a checkpoint saves of the buffer)."""
        if self.mem is None or not idx:
            return np.zeros((0, self.size), dtype=np.uint8)
        return self.mem[np.asarray(idx, dtype=np.int64), : self.size].copy()

    def ids(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Simulation ids and time steps of the samples in slots ``idx``."""
        assert self.mem is not None
        # Only the headers: ``self.mem[idx]`` would copy the whole samples (a second copy of
        # every batch, as large as the batch, for 16 bytes a sample).
        return record_ids(self.mem[np.asarray(idx, dtype=np.int64), :HEADER_BYTES])

    def gather(self, idx: np.ndarray, pin: bool = False) -> list[torch.Tensor]:
        """A batch: field i of slots ``idx``, stacked, one tensor per field (pinned if asked)."""
        index = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        out = []
        for i, view in enumerate(self._views):
            shape = (len(index), *view.shape[1:])
            if pin:  # CUDA's caching host allocator recycles page-locked memory by itself
                dst = torch.empty(shape, dtype=view.dtype, pin_memory=True)
            else:
                dst = self._pools[i].empty(shape)
            torch.index_select(view, 0, index, out=dst)
            out.append(dst)
        return out
