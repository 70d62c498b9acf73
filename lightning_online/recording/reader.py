"""Reading a recording: its index of runs, and a map-style torch ``Dataset`` over its samples.

Where code runs: any thread or process that reads a recording (the training process, a
DataLoader worker process: each process opens the files itself, on first use).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lightning_online.recording._h5 import (
    FORMAT,
    STATUS_NAMES,
    committed_runs,
    files_of,
    open_read,
    read_json,
)
from lightning_online.sampling.samplers import ParameterSpace

__all__ = ["RecordedDataset", "RecordingIndex"]

_STATUS = {name: code for code, name in STATUS_NAMES.items()}


class RecordingIndex:
    """The runs of a recording (every rank's file), read once: which file, which rows.

    Args:
        path: the recording (``OnlineDataModule(record=path)``); under DDP the per-rank files
            beside it are found from it. A list of files works too.
        status: which runs to take: ``"completed"`` (default) and/or ``"failed"``.
    """

    def __init__(
        self,
        path: str | os.PathLike | list[str | os.PathLike],
        status: tuple[str, ...] = ("completed",),
    ) -> None:
        if isinstance(status, str):
            status = (status,)
        bad = [s for s in status if s not in _STATUS]
        if bad or not status:
            raise ValueError(f"status must name some of {sorted(_STATUS)}, got {status!r}")
        codes = [_STATUS[s] for s in status]
        self.files = files_of(path)
        runs, which = [], []
        self.meta: dict[str, Any] = {}
        for i, p in enumerate(self.files):
            with open_read(p) as f:
                if f.attrs.get("format") != FORMAT:
                    raise ValueError(f"{p} is not a lightning_online recording")
                if i == 0:
                    self.meta = {k: f.attrs[k] for k in f.attrs}
                    self.bare = bool(f.attrs["bare"])
                    self.n_fields = int(f.attrs["n_fields"])
                    self.shapes = [f[f"fields/{k}"].shape[1:] for k in range(self.n_fields)]
                    self.dtypes = [f[f"fields/{k}"].dtype for k in range(self.n_fields)]
                    self.space = ParameterSpace(
                        np.asarray(f.attrs["space_low"]),
                        np.asarray(f.attrs["space_high"]),
                        [str(n) for n in f.attrs["space_names"]],
                        log=np.asarray(f.attrs["space_log"]).astype(bool).tolist(),
                    )
                    self.fingerprint = read_json(f, "fingerprint")
                r = committed_runs(f)
                r = r[np.isin(r["status"], codes)]
            runs.append(r)
            which.append(np.full(len(r), i, dtype=np.int64))
        #: the runs taken, a structured array (fields: see ``_h5.runs_dtype``)
        self.runs: Any = np.concatenate(runs)
        self.file_of_run = np.concatenate(which)
        if len(self.files) > 1:  # several ranks: in the order runs were launched
            order = np.lexsort((self.runs["sim_id"], self.runs["session"]))
            self.runs, self.file_of_run = self.runs[order], self.file_of_run[order]
        self.offsets = np.concatenate([[0], np.cumsum(self.runs["count"])]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.runs)

    @property
    def n_samples(self) -> int:
        return int(self.offsets[-1])

    def read(self, run: int, f: Any) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """``(sim_ids, steps, fields)`` of the ``run``-th run, read from its open file ``f``."""
        r = self.runs[run]
        lo, hi = int(r["start"]), int(r["start"] + r["count"])
        fields = [f[f"fields/{k}"][lo:hi] for k in range(self.n_fields)]
        return f["sim_id"][lo:hi], f["step"][lo:hi], fields


class RecordedDataset(Dataset):
    """A recording as an ordinary map-style dataset: item ``i`` is the i-th recorded sample
    (the runs in the order they ended, each run's time steps in order), as the tuple of tensors
    the solver yielded (a bare tensor for a solver that yields one array). Works with
    ``DataLoader(shuffle=True)``, ``DistributedSampler`` and worker processes (each opens the
    files itself).

    Args:
        path: the recording (its per-rank files are found from it) or a list of files.
        status: which runs: ``"completed"`` (default), ``"failed"`` or both.
        in_memory: read every sample into memory now (fast random access; the recording must
            fit in memory); else each item is read from the file when asked.

    ``dataset.runs`` is the table of runs (``sim_id``, ``theta``, ``start``, ``count``,
    ``status``, ...), ``dataset.space`` the study's parameter space, ``run_of(i)`` the run of
    item i.
    """

    def __init__(
        self,
        path: str | os.PathLike | list[str | os.PathLike],
        *,
        status: tuple[str, ...] | str = ("completed",),
        in_memory: bool = False,
    ) -> None:
        self.index = RecordingIndex(path, status if not isinstance(status, str) else (status,))
        self.runs = self.index.runs
        self.space = self.index.space
        self._files: dict[int, Any] = {}
        self._pid = -1
        self._memory: list[np.ndarray] | None = None
        if in_memory:
            parts: list[list[np.ndarray]] = [[] for _ in range(self.index.n_fields)]
            for run in range(len(self.index)):
                _, _, fields = self.index.read(run, self._file(int(self.index.file_of_run[run])))
                for k, a in enumerate(fields):
                    parts[k].append(a)
            self._memory = [
                np.concatenate(p) if p else np.zeros((0, *s), dtype=d)
                for p, s, d in zip(parts, self.index.shapes, self.index.dtypes, strict=True)
            ]
            self.close()

    def __len__(self) -> int:
        return self.index.n_samples

    def run_of(self, i: int) -> int:
        """Which row of :attr:`runs` item ``i`` belongs to."""
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} of a recording of {len(self)} samples")
        return int(np.searchsorted(self.index.offsets, i, side="right") - 1)

    def __getitem__(self, i: int) -> torch.Tensor | tuple[torch.Tensor, ...]:
        i = int(i)
        if i < 0:
            i += len(self)
        if self._memory is not None:
            if not 0 <= i < len(self):
                raise IndexError(f"item {i} of a recording of {len(self)} samples")
            arrays = [m[i] for m in self._memory]
        else:
            run = self.run_of(i)
            row = int(self.index.runs[run]["start"]) + i - int(self.index.offsets[run])
            f = self._file(int(self.index.file_of_run[run]))
            arrays = [f[f"fields/{k}"][row] for k in range(self.index.n_fields)]
        tensors = tuple(torch.from_numpy(np.array(a)) for a in arrays)
        return tensors[0] if self.index.bare else tensors

    def _file(self, k: int) -> Any:
        if self._pid != os.getpid():  # a forked DataLoader worker opens its own
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(k)
        if f is None:
            f = self._files[k] = open_read(self.index.files[k])
        return f

    def close(self) -> None:
        if self._pid == os.getpid():
            for f in self._files.values():
                f.close()
        self._files = {}

    def __getstate__(self) -> dict[str, Any]:  # open files do not travel to other processes
        state = dict(self.__dict__)
        state["_files"], state["_pid"] = {}, -1
        return state
