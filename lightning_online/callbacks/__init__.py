"""The package's Lightning callbacks: :class:`ActiveSampling` (steers the launch distribution by
the training loss) and the live view (:class:`StudyMonitor`, :class:`StudyProgressBar`,
:class:`RichStudyProgressBar`, and :class:`StudyProgressLog`: plain lines where there is no
terminal).

They run on every training rank, in Lightning's hooks on the training thread, and know the
DataModule's public surface only: no MPI, no processes.
"""

from __future__ import annotations

from lightning_online.callbacks.active_sampling import ActiveSampling
from lightning_online.callbacks.monitor import (
    RichStudyProgressBar,
    StudyMonitor,
    StudyProgressBar,
)
from lightning_online.callbacks.progress import StudyProgressLog

__all__ = [
    "ActiveSampling",
    "RichStudyProgressBar",
    "StudyMonitor",
    "StudyProgressBar",
    "StudyProgressLog",
]
