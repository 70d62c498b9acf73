"""``Recording``: where and how a study is recorded (``OnlineDataModule(record=...)``).

Where code runs: the training process, when the DataModule is made (its arguments are checked
there, h5py's presence included).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning_online._util.checks import check_choice, check_int
from lightning_online.recording._h5 import h5py

__all__ = ["Recording"]


class Recording:
    """Where and how a study is recorded (``OnlineDataModule(record=...)``; a path alone is
    ``Recording(path)``).

    Args:
        path: the HDF5 file; under DDP each rank writes ``<stem>.rank<r>.h5`` beside it.
        max_bytes: the size cap of each rank's file: the run that would pass it is not written,
            recording stops there with a warning that says so, and training goes on. ``None``:
            no cap.
        compression: ``None``, ``"gzip"`` or ``"lzf"`` (HDF5 filters every reader has), applied
            to the sample fields with the byte shuffle filter.
        compression_opts: the gzip level (0-9).
        overwrite: replace an existing recording when a new study starts (the default refuses:
            only a study resumed from a checkpoint appends to its recording).
        queue_bytes: samples received and not yet written above which the receiver stops taking
            samples until the writer catches up (backpressure, as a full buffer gives).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        max_bytes: int | None = 16 << 30,
        compression: str | None = None,
        compression_opts: int | None = None,
        overwrite: bool = False,
        queue_bytes: int = 64 << 20,
    ) -> None:
        if not isinstance(path, str | os.PathLike) or not str(path):
            raise TypeError(f"Recording: path must be a file path, got {path!r}")
        self.path = str(path)
        self.max_bytes = None if max_bytes is None else check_int(max_bytes, "max_bytes", 1)
        self.compression = check_choice(compression, "compression", (None, "gzip", "lzf"))
        if compression_opts is not None:
            if compression != "gzip":
                raise ValueError("compression_opts is the gzip level: only with compression='gzip'")
            compression_opts = check_int(compression_opts, "compression_opts", 0, maximum=9)
        self.compression_opts = compression_opts
        self.overwrite = check_choice(overwrite, "overwrite", (True, False))
        self.queue_bytes = check_int(queue_bytes, "queue_bytes", 1 << 16)
        parent = Path(self.path).resolve().parent
        if not parent.is_dir():
            raise FileNotFoundError(
                f"Recording: the folder {parent} of {self.path} does not exist; create it first"
            )
        h5py()  # the optional dependency is there now, not at the first completed run

    @classmethod
    def of(cls, value: Any) -> Recording | None:
        """``OnlineDataModule(record=...)``: None, a path or a Recording."""
        if value is None or isinstance(value, Recording):
            return value
        if isinstance(value, str | os.PathLike):
            return cls(value)
        raise TypeError(f"record must be a file path or a Recording, got {type(value).__name__}")

    def __repr__(self) -> str:
        return (
            f"Recording({self.path!r}, max_bytes={self.max_bytes}, "
            f"compression={self.compression!r})"
        )
