"""A real MPI worker that breaks the worker protocol on purpose (spawned by a test's WorkerPool).

Speaks ``_worker``'s protocol with the training rank, but for its i-th task it sends:
0: a sample message whose size is not a multiple of its sample count, then a sound run report;
1: a run report too short to be one;
2: a sample message smaller than a sample header, then a report naming another run;
from then on sound empty runs (report ok, no sample).
"""

from __future__ import annotations

import sys
import time

import numpy as np
from mpi4py import MPI

from lightning_online._wire.samples import (
    TAG_BYE,
    TAG_END,
    TAG_SAMPLES,
    TAG_STOP,
    TAG_TASK,
    encode_end,
)


def main() -> None:
    comm = MPI.Comm.Get_parent()
    comm.bcast(None, root=0)
    status = MPI.Status()
    i = 0
    while True:
        if not comm.Iprobe(source=0, tag=MPI.ANY_TAG, status=status):
            time.sleep(0.005)
            continue
        buf = np.empty(status.Get_count(MPI.BYTE), dtype=np.uint8)
        comm.Recv([buf, MPI.BYTE], source=0, tag=status.Get_tag())
        if status.Get_tag() == TAG_STOP:
            break
        assert status.Get_tag() == TAG_TASK
        sim_id = int(buf.view(np.float64)[0])
        if i == 0:
            comm.Send([np.zeros(100, np.uint8), MPI.BYTE], dest=0, tag=TAG_SAMPLES + 3)
            comm.Send([encode_end(sim_id, True, 3, 0.1), MPI.BYTE], dest=0, tag=TAG_END)
        elif i == 1:
            comm.Send([np.zeros(5, np.uint8), MPI.BYTE], dest=0, tag=TAG_END)
        elif i == 2:
            comm.Send([np.zeros(8, np.uint8), MPI.BYTE], dest=0, tag=TAG_SAMPLES + 1)
            comm.Send([encode_end(sim_id + 1000, True, 1, 0.1), MPI.BYTE], dest=0, tag=TAG_END)
        else:
            comm.Send([encode_end(sim_id, True, 1, 0.1), MPI.BYTE], dest=0, tag=TAG_END)
        i += 1
    comm.Send([np.zeros(0, np.uint8), MPI.BYTE], dest=0, tag=TAG_BYE)
    comm.Disconnect()


if __name__ == "__main__":
    sys.exit(main())
