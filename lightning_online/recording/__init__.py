"""Recording a study's stream to HDF5, replaying it, and reading it as an ordinary dataset.

* :class:`Recording` (``OnlineDataModule(record=...)``): every sample a study receives, with its
  run, parameters, time step and the study's metadata, written by a writer thread
  (:mod:`~lightning_online.recording.writer`);
* :class:`Replay`: a recording as the stream of a new study (same buffer, same batches);
* :class:`RecordedDataset`: a recording as a map-style torch ``Dataset`` for offline training.

The file layout, and how to read it with h5py alone: ``docs/recording.md``. Where code runs:
each module says (the writer on a writer thread of each training rank, the replay on the
receiver thread of a replayed study, the dataset in any process). Needs ``h5py`` (``pip install
'lightning-online[record]'``); importing this package does not, nor torch (the reader and the
replay load on first use).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lightning_online.recording._h5 import files_of, repair
from lightning_online.recording.config import Recording

if TYPE_CHECKING:
    from lightning_online.recording.reader import RecordedDataset, RecordingIndex
    from lightning_online.recording.replay import Recorded, Replay

_LAZY = {
    "RecordedDataset": "lightning_online.recording.reader",
    "RecordingIndex": "lightning_online.recording.reader",
    "Recorded": "lightning_online.recording.replay",
    "Replay": "lightning_online.recording.replay",
}

__all__ = [
    "Recorded",
    "RecordedDataset",
    "Recording",
    "RecordingIndex",
    "Replay",
    "files_of",
    "repair",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lightning_online.recording' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
