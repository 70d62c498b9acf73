"""Every exception a user of ``lightning_online`` can catch, in one place.

Where code runs: nothing here runs by itself; the classes are raised on the training rank (the
study, the DataModule) or in the process that calls an :class:`~lightning_online.ExternalSolver`
directly.
"""

from __future__ import annotations

__all__ = ["ExternalRunError", "StudyError"]


class StudyError(RuntimeError):
    """The study cannot go on (too many failed runs, a worker failure); the message says why."""


class ExternalRunError(RuntimeError):
    """One run of an external program failed; the message says how, with its last output."""
