"""The package's Lightning callbacks: :class:`ActiveSampling` (steers the launch distribution by
the training loss) and the live view (:class:`StudyMonitor`, :class:`StudyProgressBar`,
:class:`RichStudyProgressBar`).

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

__all__ = ["ActiveSampling", "RichStudyProgressBar", "StudyMonitor", "StudyProgressBar"]
