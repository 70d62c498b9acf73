"""The per-batch agreement between training ranks: what ``Study.sync`` costs at 2 and 4 ranks.

Every batch, every rank contributes one short int64 vector (its counters and agreement columns)
to one all-gather on the package's gloo group and derives the same decisions from the gathered
matrix (``_study.grant_permits``, ``serve_or_finish``). This script starts R real processes
(``torch.distributed`` with gloo over loopback, as CPU DDP does), builds a real ``Study`` on
each (FIFO buffer, Uniform sampler, no workers) and times ``sync()`` in a loop, side by side
with a bare ``all_gather`` of the same vector (the floor: the collective alone). It reports the
median time per sync and its share of a 10 ms training step (the issue's threshold: 2 %).

    python benchmarks/agreement.py [--ranks 2 4] [--syncs 2000] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save, summary, table

STEP_MS = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, size: int, port: int, syncs: int, out) -> None:  # type: ignore[no-untyped-def]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=size)
    from lightning_online import FIFO, ParameterSpace, Uniform
    from lightning_online._study.ledger import Study
    from lightning_online._util.dist import Group

    group = Group()
    study = Study(
        space=ParameterSpace([0, 0], [1, 1]),
        sampler=Uniform(seed=0),
        buffer=FIFO(1024),
        n_simulations=10**9,
        n_workers=4,
        batch_size=64,
        max_retries=1,
        max_failed_fraction=0.5,
        group=group,
    )
    vector = study._snapshot(False)
    for _ in range(50):  # warm up (and let the first grants happen)
        study.sync()
        group.all_gather(vector)
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(syncs):
        study.sync()
    t_sync = (time.perf_counter() - t0) / syncs
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(syncs):
        group.all_gather(vector)
    t_gather = (time.perf_counter() - t0) / syncs
    if rank == 0:
        out.put((t_sync, t_gather))
    dist.destroy_process_group()


def measure(size: int, syncs: int) -> tuple[float, float]:
    port = _free_port()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, size, port, syncs, out)) for r in range(size)]
    for p in procs:
        p.start()
    result = out.get(timeout=600)
    for p in procs:
        p.join(60)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    p.add_argument("--syncs", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="2 ranks, 200 syncs, 1 repeat")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    if a.quick:
        a.ranks, a.syncs, a.repeats = [2], 200, 1
    rows, result = [], {"step_ms": STEP_MS, "ranks": {}}
    for size in a.ranks:
        syncs, gathers = [], []
        for _ in range(a.repeats):
            t_sync, t_gather = measure(size, a.syncs)
            syncs.append(t_sync * 1e6)
            gathers.append(t_gather * 1e6)
        s, g = summary(syncs), summary(gathers)
        share = s["median"] / (STEP_MS * 1e3)
        result["ranks"][size] = {"sync_us": s, "all_gather_us": g, "share_of_10ms_step": share}
        rows.append(
            [
                size,
                s["median"],
                f"{s['min']:.0f}-{s['max']:.0f}",
                g["median"],
                f"{100 * share:.2f} %",
            ]
        )
    print(table(rows, ["ranks", "sync us", "spread", "bare all_gather us", "of a 10 ms step"]))
    print("threshold: agree once per k batches if a sync costs more than 2 % of a 10 ms step")
    print(f"wrote {save('agreement', result, a.out)}")


if __name__ == "__main__":
    main()
