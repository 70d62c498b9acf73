"""The bookkeeping of an online study on one training rank and the agreement between ranks.

* ``ledger``: the :class:`~lightning_online._study.ledger.Study` (runs, permits, queues, the
  per-step sync, checkpoint export and restore);
* ``agreement``: the counters and the decisions every rank derives from the gathered columns,
  as pure functions;
* ``runs``: one life cycle for a run (states, the transition table, ``Run.move``).

Knows counters, permits and run states; never processes or Lightning. Its code runs on the
training thread (the agreement, batches) and the receiver thread (launches, samples, run ends)
of each training rank, under one lock.
"""
