"""Rank detection and the few collectives the data path needs, in one place.

The data path synchronises through a dedicated gloo process group on the CPU: its messages are a
handful of integers per step, and keeping them off NCCL avoids a device synchronisation per batch
and any interference with the gradient all-reduce. Without ``torch.distributed`` (one process)
every collective degenerates to the identity.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["Group"]


class Group:
    """The training ranks of this job, as seen by the data path."""

    def __init__(self) -> None:
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.size = dist.get_world_size() if self.distributed else 1
        self._pg: Any = None
        if self.distributed:
            # new_group is collective: every rank constructs its Group at the same point (setup).
            # A group of its own even when the Trainer's is gloo too: the data path's
            # collectives never mix with the Trainer's, whatever its backend.
            self._pg = dist.new_group(backend="gloo")

    def all_gather(self, values: np.ndarray) -> np.ndarray:
        """Gather one int64 vector per rank into a (size, len) array, identical on every rank."""
        local = torch.as_tensor(np.asarray(values, dtype=np.int64))
        if not self.distributed:
            return local.numpy()[None, :]
        out = [torch.empty_like(local) for _ in range(self.size)]
        dist.all_gather(out, local, group=self._pg)
        return torch.stack(out).numpy()

    def all_reduce(self, values: np.ndarray, op: str = "sum") -> np.ndarray:
        """Element-wise sum or max of one float64 array per rank, identical on every rank."""
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
        if op not in ops:
            raise ValueError(f"op must be 'sum' or 'max', got {op!r}")
        local = torch.tensor(np.asarray(values, dtype=np.float64))
        if self.distributed:
            dist.all_reduce(local, op=ops[op], group=self._pg)
        return local.numpy()

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj, group=self._pg)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src, group=self._pg)
        return box[0]
