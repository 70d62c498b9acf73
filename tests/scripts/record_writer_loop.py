"""A recording's writer driven directly, as the receiver thread drives it: run after run of
large samples, committed until the process is killed. Says GO after the first commit.

python record_writer_loop.py <file.h5> [--resume]

Run ``i``'s samples are known from ``i`` alone (``expected``), so a test can check every
committed run of the file bit for bit after a kill.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from lightning_online._wire.samples import encode_sample
from lightning_online.recording import Recording
from lightning_online.recording.writer import Recorder

ROWS, WIDTH = 16, 8192  # 16 samples of 32 KB a run


def expected(sim_id: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(sim_id)
    return rng.random((ROWS, WIDTH), dtype=np.float32), np.arange(ROWS, dtype=np.int64) + sim_id


def main(path: str, resume: bool) -> None:
    rec = Recorder(Recording(path, overwrite=not resume), 0, 1)
    if resume:
        rec.resume(None, set(range(100_000)), strict=True)
    fp = json.dumps({"study": "writer loop"})
    rec.open(
        {
            "fingerprint": fp,
            "space_names": ["a"],
            "space_low": np.zeros(1),
            "space_high": np.ones(1),
            "space_log": np.zeros(1, np.int8),
        }
    )
    sim = 1_000_000 if resume else 0
    said = False
    while True:
        x, y = expected(sim)
        rows = np.stack([encode_sample(sim, k, (x[k], y[k : k + 1])) for k in range(ROWS)])
        while not rec.room():
            time.sleep(0.001)
        rec.samples(sim, rows[:7])
        rec.samples(sim, rows[7:])
        rec.end(sim, np.array([sim / 1e6]), True, 0, 0.0)
        sim += 1
        if resume and sim == 1_000_003:
            rec.close()
            print("DONE", flush=True)
            return
        if not said and not resume and rec.committed:
            said = True
            print("GO", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], "--resume" in sys.argv)
