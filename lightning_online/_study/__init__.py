"""The bookkeeping of an online study on one training rank and the agreement between ranks.

* ``ledger``: the :class:`~lightning_online._study.ledger.Study` (runs, permits, counters, the
  per-step agreement, checkpoint export and restore).

Knows counters, permits and run states; never processes or Lightning. Its code runs on the
training thread (the agreement, batches) and the receiver thread (launches, samples, run ends)
of each training rank, under one lock.
"""
