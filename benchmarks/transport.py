"""Transport: bytes per second through the package's MPI path versus raw mpi4py Send/Recv.

Both sides run in this one script, alternating, with the same message size between a training
process and one spawned MPI process:

(a) raw: a spawned process ``Send``s N preallocated messages; this process ``Recv``s them;
(b) package: ``WorkerPool`` runs a solver that yields N arrays of the same size; samples go
    runner -> pipe -> worker -> ``Issend`` (several samples a message when they queue up) ->
    receiver thread -> checked and copied into preallocated slots, as a study does.

Reports the median ratio package/raw per message size (target >= 0.8) and the maximum message
rate one receiving rank sustains (small messages).

    python benchmarks/transport.py [--sizes 1024 65536 1048576] [--messages 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import cloudpickle
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save, save_bars, summary, table

RAW_CHILD = """
import sys
import numpy as np
from mpi4py import MPI
comm = MPI.Comm.Get_parent()
size, n = int(sys.argv[1]), int(sys.argv[2])
buf = np.ones(size, dtype=np.uint8)
comm.Barrier()
for _ in range(n):
    comm.Send([buf, MPI.BYTE], dest=0, tag=1)
comm.Barrier()
comm.Disconnect()
"""


def raw(size: int, n: int) -> float:
    from mpi4py import MPI

    # (a file, not -c: the process manager's spawn command cannot carry newlines)
    script = Path(tempfile.gettempdir()) / "lightning_online_raw_sender.py"
    script.write_text(RAW_CHILD)
    comm = MPI.COMM_SELF.Spawn(sys.executable, [str(script), str(size), str(n)], maxprocs=1)
    buf = np.empty(size, dtype=np.uint8)
    comm.Barrier()
    t0 = time.perf_counter()
    for _ in range(n):
        comm.Recv([buf, MPI.BYTE], source=0, tag=1)
    dt = time.perf_counter() - t0
    comm.Barrier()
    comm.Disconnect()
    return size * n / dt


class Blocks:
    """A solver that yields ``n`` arrays of ``size`` bytes as fast as it can."""

    def __init__(self, size: int, n: int) -> None:
        self.size, self.n = size, n

    def __call__(self, theta):
        block = np.ones(self.size, dtype=np.uint8)
        for _ in range(self.n):
            yield (block,)


class Sink:
    """The pool's handler: decodes every sample and counts bytes; always has room."""

    def __init__(self, n: int) -> None:
        self.n, self.bytes, self.count, self.t_first = n, 0, 0, 0.0
        self.header = 8 * (4 + 10)  # the wire header of a one-field sample
        self.done = threading.Event()
        self.task_given = False

    def next_task(self):
        if self.task_given:
            return None
        self.task_given = True
        return 0, np.zeros(1)

    def has_room(self) -> bool:
        return True

    def on_sample(self, blob) -> None:
        self.on_samples(blob.reshape(1, -1))

    def on_samples(self, blobs) -> None:
        # What a study does with them: checked, then copied into preallocated slots.
        from lightning_online._transport.store import SlotStore

        if self.count == 0:
            self.t_first = time.perf_counter()
            self.store = SlotStore(64)  # steady state: slots reused
            self.store.configure(blobs[0])
        assert self.store.check(blobs) is None
        self.store.release(self.store.write(blobs))
        self.count += len(blobs)
        self.bytes += len(blobs) * (blobs.shape[1] - self.header)

    def slots_for(self, k: int, nbytes: int):
        if self.count == 0 or nbytes != self.store.size:
            return None
        slots = self.store.take_run(k)
        return None if slots is None else (slots, self.store.mem[slots[0] : slots[0] + k, :nbytes])

    def on_slots(self, slots) -> None:
        rows = self.store.mem[slots[0] : slots[0] + len(slots), : self.store.size]
        assert self.store.check(rows) is None
        self.store.release(slots)
        self.count += len(slots)
        self.bytes += len(slots) * (self.store.size - self.header)

    def on_end(self, *args) -> None:
        self.t_end = time.perf_counter()
        self.done.set()


def package(size: int, n: int) -> float:
    from lightning_online._transport.pool import WorkerPool

    sink = Sink(n)
    pool = WorkerPool(cloudpickle.dumps(Blocks(size, n + 1)), 1, sink)
    pool.start()
    sink.done.wait(600)
    pool.stop()
    # time from the first sample to the end: excludes process start-up, as the raw side does
    return sink.bytes * (n / (n + 1)) / (sink.t_end - sink.t_first)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 65536, 1048576])
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    rows, result = [], {"sizes": {}}
    for size in a.sizes:
        n = max(50, min(a.messages, int(2e9 // size)))
        ratios, raws, pkgs = [], [], []
        for _ in range(a.repeats):
            r = raw(size, n)
            k = package(size, n)
            raws.append(r)
            pkgs.append(k)
            ratios.append(k / r)
        s = summary(ratios)
        result["sizes"][size] = {
            "raw_MBps": summary([x / 1e6 for x in raws]),
            "package_MBps": summary([x / 1e6 for x in pkgs]),
            "ratio": s,
            "package_msgs_per_s": summary([x / size for x in pkgs]),
        }
        rows.append(
            [
                size,
                np.median(raws) / 1e6,
                np.median(pkgs) / 1e6,
                s["median"],
                f"{s['min']:.3f}-{s['max']:.3f}",
                np.median(pkgs) / size,
            ]
        )
    print(
        table(rows, ["bytes/msg", "raw MB/s", "package MB/s", "ratio", "spread", "package msg/s"])
    )
    print("target: ratio >= 0.8")
    print(f"wrote {save('transport', result, a.out)}")
    save_bars(
        "transport",
        [f"{r[0]} B" for r in rows],
        [float(r[3]) for r in rows],
        "package / raw mpi4py (bytes/s)",
        a.out,
        "transport ratio by message size (target >= 0.8)",
    )


if __name__ == "__main__":
    main()
