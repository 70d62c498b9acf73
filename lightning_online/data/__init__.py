"""``OnlineDataModule``: a LightningDataModule whose training data streams from live solver runs.

* ``module``: :class:`OnlineDataModule` (Lightning's hooks; delegates to ``_study`` and
  ``_transport``) and the :data:`Solver` contract;
* ``validation``: the validation runs, their loader and the per-run report.

Where code runs: on every training rank (see ``module``).
"""

from __future__ import annotations

from lightning_online.data.module import OnlineDataModule, Solver

__all__ = ["OnlineDataModule", "Solver"]
