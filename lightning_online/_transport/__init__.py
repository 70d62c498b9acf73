"""How samples travel from solver runs into a training rank (the data plane).

* ``pool``: the receiver thread of a training rank and its MPI worker pool;
* ``worker``: an MPI worker process (spawned), which runs one sandbox per run;
* ``runner``: the sandbox process that calls the user's solver and streams its steps;
* ``store``: the preallocated sample slots the receiver writes into and batches are gathered from.

Kept import-light: spawned processes import ``worker`` and ``runner`` from here.
"""
