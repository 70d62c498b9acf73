"""Bounded, thread-safe sample buffers for online training (after Melissa's buffers).

(Over 400 lines: three policies and their shared base, each with the checkpoint of what it
holds; a new policy is one subclass here.)

One receiver thread (producer) calls :meth:`Buffer.put` / :meth:`Buffer.has_room`; the
training loop (consumer) calls :meth:`Buffer.ready` / :meth:`Buffer.wait_ready` /
:meth:`Buffer.get`. Memory is bounded by ``capacity``: when there is no room the producer
blocks, which stops it receiving and so back-pressures the solver runs. No policy drops a
sample that was never served: only a :class:`Reservoir` evicts, and only served samples, to make
room for new ones (``stats()["evicted"]`` counts them; 0 for FIFO and FIRO, whose samples leave
by being served).

In a study the items are small integers, the indices of preallocated sample *slots*
(``lightning_online._transport.store``): a policy decides which slots to serve, never copies a sample.
Two hooks let the owner of the slots recycle them: ``get(n, gather=...)`` runs ``gather`` on the
chosen items while the lock is held (a concurrent ``put`` cannot overwrite a slot being read),
and ``on_release(items)`` (an attribute, ``None`` by default) is called with every item that
left the buffer (served by a consuming policy, or overwritten in a reservoir) once nobody reads
it any more.
"""

from __future__ import annotations

import abc
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from lightning_online._util.checks import check_int, check_optional_int
from lightning_online._util.seeds import derived_seed

__all__ = ["FIFO", "FIRO", "Buffer", "Reservoir"]


def _sample(rng: np.random.Generator, m: int, k: int) -> list[int]:
    """k distinct indices from range(m) in uniformly random order, in O(k) (sparse Fisher-Yates)."""
    k = min(k, m)
    if k <= 0:
        return []
    swapped: dict[int, int] = {}
    out = []
    for i, j in enumerate(rng.integers(np.arange(k), m).tolist()):  # j in [i, m)
        out.append(swapped.get(j, j))
        swapped[j] = swapped.get(i, i)
    return out


class Buffer(abc.ABC):
    """Base class: locking, watermark gating, end-of-stream and statistics.

    Subclasses implement storage and the policy in the ``_``-prefixed hooks, which are
    always called with the lock held.
    """

    #: Whether served items stay in the buffer (and may be overwritten by a put at any time).
    _keeps_served = True

    def __init__(self, capacity: int, watermark: int | None = None, seed: int | None = None):
        owner = type(self).__name__
        self.capacity = check_int(capacity, "capacity", 1, owner)
        if watermark is None:
            watermark = max(1, self.capacity // 4)
        self.watermark = check_int(
            watermark, "watermark", 1, owner, maximum=self.capacity, maximum_name="capacity"
        )
        self.seed = check_optional_int(seed, "seed", 0, owner)
        self._rng = np.random.default_rng(seed if seed is not None else derived_seed("buffer", 0))
        self._cond = threading.Condition()
        self._closed = False
        self._received = self._served = self._evicted = self._unique = 0
        #: Called (without the lock) with a list of items that left the buffer for good.
        self.on_release: Callable[[list[Any]], None] | None = None
        self._leaving: list[Any] = []

    def fresh(self, rank: int = 0) -> Buffer:
        """An empty buffer of the same kind, capacity, watermark and seed, for a new study on
        training rank ``rank`` (training thread). Left at ``seed=None``, its random source is
        derived from Lightning's global seed and the rank (``seed_everything``), else from OS
        entropy. A policy whose constructor takes other arguments overrides it."""
        buffer = type(self)(self.capacity, self.watermark, self.seed)
        if self.seed is None:
            buffer._rng = np.random.default_rng(derived_seed("buffer", rank))
        return buffer

    # --- policy hooks (lock held) -------------------------------------------------
    @abc.abstractmethod
    def _size(self) -> int: ...

    @abc.abstractmethod
    def _room(self) -> bool: ...

    @abc.abstractmethod
    def _n_unserved(self) -> int: ...

    @abc.abstractmethod
    def _add(self, item: Any) -> None: ...

    @abc.abstractmethod
    def _take(self, n: int) -> tuple[list[Any], int]:
        """Serve up to n items; return them and how many were served for the first time."""

    @abc.abstractmethod
    def _counts(self) -> list[int]: ...

    def _unserved_items(self) -> list[Any]:
        """Held items never served (lock held); policies override it (the default: none known,
        which makes a resumed study rerun no completed run for its unserved samples)."""
        return []

    def _contents(self) -> tuple[list[Any], list[int]]:
        """Every held item in the policy's order and how often each was served (lock held);
        the default, for a policy that does not say: its never-served items."""
        items = list(self._unserved_items())
        return items, [0] * len(items)

    def _restore(self, item: Any, count: int) -> None:
        """Put back ``item`` as a checkpoint held it, served ``count`` times (lock held, there
        is room); policies that keep served items override it to keep the count."""
        self._add(item)

    def _free(self) -> int:
        """How many puts would succeed now (lock held); policies override it when they know."""
        return 1 if self._room() else 0

    def _ready_batches(self, n: int, limit: int) -> int:
        """How many gets of n in a row would serve now, without puts (lock held), at most
        ``limit``; policies override it when they know (the default is safe: 0 or 1)."""
        return 1 if self._ready(n) else 0

    def _release(self, item: Any) -> None:
        """Policy hook (lock held): ``item`` left the buffer and will not be served again."""
        self._leaving.append(item)

    def _pop_released(self) -> list[Any]:
        # Lock held, at the end of a put or get (after its gather): nobody reads these any more.
        leaving, self._leaving = self._leaving, []
        return leaving

    def _notify_released(self, leaving: list[Any]) -> None:
        # Without the lock, by the thread whose put or get released the items.
        if leaving and self.on_release is not None:
            self.on_release(leaving)

    # --- producer side (receiver thread) ---------------------------------------------
    def put(self, item: Any, timeout: float | None = None) -> bool:
        """Add ``item``, blocking while there is no room (backpressure).

        Returns False if ``timeout`` seconds passed without room; raises RuntimeError if the
        buffer is (or gets) closed, since nothing is accepted after the end of the stream.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self._room(), timeout)
            added, leaving = self._extend([item])
        self._notify_released(leaving)
        return added == 1

    def put_many(self, items: list[Any]) -> int:
        """Add as many of ``items`` (in order) as there is room for now, without blocking;
        returns how many were added. Raises RuntimeError if the buffer is closed."""
        with self._cond:
            added, leaving = self._extend(items)
        self._notify_released(leaving)
        return added

    def _extend(self, items: list[Any]) -> tuple[int, list[Any]]:
        # Lock held: add items while there is room; how many, and what left the buffer.
        if self._closed:
            raise RuntimeError(f"put on a closed {type(self).__name__} buffer")
        added = 0
        for item in items:
            if not self._room():
                break
            self._add(item)
            added += 1
        if added:
            self._received += added
            self._cond.notify_all()
        return added, self._pop_released()

    def has_room(self) -> bool:
        """Whether a put would succeed now; the receiver stops receiving while False."""
        with self._cond:
            return not self._closed and self._room()

    def free(self) -> int:
        """How many puts in a row would succeed now (0 once closed)."""
        with self._cond:
            return 0 if self._closed else self._free()

    def close(self) -> None:
        """End of stream: refuse further puts, wake a blocked producer, let consumers drain."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # --- consumer side (training thread) ---------------------------------------------
    def _check_n(self, n: int) -> int:
        # n > capacity could never be ready before close: refuse it instead of deadlocking.
        return check_int(
            n, "n", 1, type(self).__name__, maximum=self.capacity, maximum_name="capacity"
        )

    def _ready(self, n: int) -> bool:
        if self._closed:
            return self._n_unserved() > 0
        return self._size() >= max(self.watermark, n)

    def ready(self, n: int = 1) -> bool:
        """Whether get(n) serves now: watermark and a full batch before close, leftovers after."""
        n = self._check_n(n)
        with self._cond:
            return self._ready(n)

    def ready_batches(self, n: int, limit: int) -> int:
        """How many ``get(n)`` in a row would serve now even if nothing is put meanwhile (at
        most ``limit``): what a rank can promise the others for the next ``limit`` batches."""
        n = self._check_n(n)
        with self._cond:
            return max(0, min(limit, self._ready_batches(n, limit)))

    def wait_ready(self, n: int, timeout: float) -> bool:
        """Sleep until ready(n), close() or timeout, so the consumer does not poll."""
        n = self._check_n(n)
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self._ready(n), timeout)
            return self._ready(n)

    def get(self, n: int, gather: Callable[[list[Any]], Any] | None = None) -> Any:
        """Non-blocking: up to n items per policy, or [] if not ready(n).

        With ``gather``, returns ``gather(items)``, or None if not ready(n). What the items refer
        to cannot be reused meanwhile: a policy that keeps served items (``_keeps_served``)
        gathers while the lock is held; otherwise the items have left the buffer and their
        release (``on_release``) waits for the gather, which runs without the lock, so the
        producer is not held up by it.
        """
        n = self._check_n(n)
        with self._cond:
            if not self._ready(n):
                return [] if gather is None else None
            items, first = self._take(n)
            self._served += len(items)
            self._unique += first
            out: Any = items
            if gather is not None and self._keeps_served:
                out = gather(items)
            self._cond.notify_all()  # room may have appeared for a blocked producer
            leaving = self._pop_released()
        try:
            if gather is not None and not self._keeps_served:
                out = gather(items)
        finally:
            self._notify_released(leaving)
        return out

    # --- introspection ---------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def exhausted(self) -> bool:
        """Closed and nothing left that was never served: the consumer may stop."""
        with self._cond:
            return self._closed and self._n_unserved() == 0

    @property
    def unserved(self) -> int:
        with self._cond:
            return self._n_unserved()

    def __len__(self) -> int:
        with self._cond:
            return self._size()

    def stats(self) -> dict[str, int | float]:
        with self._cond:
            size = self._size()
            return {
                "received": self._received,
                "served": self._served,
                "evicted": self._evicted,
                "fill": size / self.capacity,
                "size": size,
                "unique_served": self._unique,
                "mean_reuse": self._served / self._unique if self._unique else 0.0,
            }

    def unserved_items(self) -> list[Any]:
        """The held items never served yet (a snapshot; order unspecified)."""
        with self._cond:
            return list(self._unserved_items())

    def contents(self) -> tuple[list[Any], list[int]]:
        """Every held item, in the policy's order (FIFO: arrival order), and how often each was
        served: what a checkpoint saves of the buffer (training thread)."""
        with self._cond:
            items, counts = self._contents()
            return list(items), list(counts)

    def restore(self, items: list[Any], counts: list[int]) -> int:
        """Put back what :meth:`contents` returned, in order, with the served counts, as far as
        the capacity allows (no item is overwritten); returns how many were put back (training
        thread, before the stream of a resumed study starts)."""
        with self._cond:
            added = 0
            for item, count in zip(items, counts, strict=True):
                if self._size() >= self.capacity:
                    break
                self._restore(item, int(count))
                added += 1
            self._received += added
            self._cond.notify_all()
            return added

    def served_counts(self) -> np.ndarray:
        """Served counter of each held item (order unspecified)."""
        with self._cond:
            return np.asarray(self._counts(), dtype=np.int64)

    def __repr__(self) -> str:
        with self._cond:
            return (
                f"{type(self).__name__}(capacity={self.capacity}, watermark={self.watermark}, "
                f"size={self._size()}, unserved={self._n_unserved()}, closed={self._closed})"
            )


class _Consuming(Buffer):
    """Policies whose get removes items: a held item's served counter is always 0."""

    _keeps_served = False

    _items: deque[Any] | list[Any]

    def _size(self) -> int:
        return len(self._items)

    def _room(self) -> bool:
        return len(self._items) < self.capacity

    def _n_unserved(self) -> int:
        return len(self._items)

    def _free(self) -> int:
        return self.capacity - len(self._items)

    def _ready_batches(self, n: int, limit: int) -> int:
        size = len(self._items)
        if self._closed:
            return -(-size // n)
        gate = max(self.watermark, n)
        return (size - gate) // n + 1 if size >= gate else 0

    def _add(self, item: Any) -> None:
        self._items.append(item)

    def _counts(self) -> list[int]:
        return [0] * len(self._items)

    def _contents(self) -> tuple[list[Any], list[int]]:
        return list(self._items), [0] * len(self._items)

    def _unserved_items(self) -> list[Any]:
        return list(self._items)


class FIFO(_Consuming):
    """First in, first out: get pops the oldest items in arrival order."""

    def __init__(self, capacity: int, watermark: int | None = None, seed: int | None = None):
        super().__init__(capacity, watermark, seed)
        self._items: deque[Any] = deque()

    def _take(self, n: int) -> tuple[list[Any], int]:
        out = [self._items.popleft() for _ in range(min(n, len(self._items)))]
        self._leaving.extend(out)
        return out, len(out)


class FIRO(_Consuming):
    """First in, random out: get pops n held items chosen uniformly without replacement."""

    def __init__(self, capacity: int, watermark: int | None = None, seed: int | None = None):
        super().__init__(capacity, watermark, seed)
        self._items: list[Any] = []

    def _take(self, n: int) -> tuple[list[Any], int]:
        items = self._items
        picks = _sample(self._rng, len(items), n)
        out = [items[p] for p in picks]
        for p in sorted(picks, reverse=True):  # swap-with-last; higher picks go first
            items[p] = items[-1]
            items.pop()
        self._leaving.extend(out)
        return out, len(out)


class Reservoir(Buffer):
    """Random distinct items served without removal, so samples may be seen several times.

    When full, a put overwrites a random already-served item; with none served there is no
    room and the producer blocks, so no sample leaves unseen. After close, get serves the
    never-served items first, then exhaustion is reached. Positions are split into an
    ``unserved`` and a ``served`` index list (``_slot`` maps a position to its index in its
    list) so that get and put cost O(n) and O(1), not O(capacity).
    """

    def __init__(self, capacity: int, watermark: int | None = None, seed: int | None = None):
        super().__init__(capacity, watermark, seed)
        self._items: list[Any] = []
        self._count: list[int] = []
        self._slot: list[int] = []
        self._fresh: list[int] = []  # positions never served
        self._seen: list[int] = []  # positions served at least once

    def _move(self, pos: int, src: list[int], dst: list[int]) -> None:
        i, last = self._slot[pos], src.pop()
        if last != pos:
            src[i] = last
            self._slot[last] = i
        self._slot[pos] = len(dst)
        dst.append(pos)

    def _size(self) -> int:
        return len(self._items)

    def _room(self) -> bool:
        return len(self._items) < self.capacity or bool(self._seen)

    def _free(self) -> int:
        return self.capacity - len(self._items) + len(self._seen)

    def _ready_batches(self, n: int, limit: int) -> int:
        if self._closed:  # every get serves up to n never-served items until none is left
            return -(-len(self._fresh) // n)
        return limit if self._ready(n) else 0  # items stay: once ready, ready for good

    def _n_unserved(self) -> int:
        return len(self._fresh)

    def _add(self, item: Any) -> None:
        if len(self._items) < self.capacity:
            self._slot.append(len(self._fresh))
            self._fresh.append(len(self._items))
            self._items.append(item)
            self._count.append(0)
            return
        pos = self._seen[int(self._rng.integers(len(self._seen)))]  # already served: no loss
        self._evicted += 1
        self._release(self._items[pos])
        self._items[pos], self._count[pos] = item, 0
        self._move(pos, self._seen, self._fresh)

    def _take(self, n: int) -> tuple[list[Any], int]:
        if self._closed:  # drain: unserved first, topped up with distinct served ones
            picks = [self._fresh[i] for i in _sample(self._rng, len(self._fresh), n)]
            picks += [self._seen[i] for i in _sample(self._rng, len(self._seen), n - len(picks))]
        else:
            picks = _sample(self._rng, len(self._items), n)
        first = 0
        for p in picks:
            if self._count[p] == 0:
                self._move(p, self._fresh, self._seen)
                first += 1
            self._count[p] += 1
        return [self._items[p] for p in picks], first

    def _counts(self) -> list[int]:
        return list(self._count)

    def _contents(self) -> tuple[list[Any], list[int]]:
        return list(self._items), list(self._count)

    def _restore(self, item: Any, count: int) -> None:
        self._add(item)  # room left: appended, never served
        if count > 0:
            pos = len(self._items) - 1
            self._count[pos] = count
            self._move(pos, self._fresh, self._seen)
            self._served += count
            self._unique += 1

    def _unserved_items(self) -> list[Any]:
        return [self._items[p] for p in self._fresh]
