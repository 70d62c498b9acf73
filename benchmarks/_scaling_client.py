"""The solver program of benchmarks/scaling.py: one run of an "external code" per launch.

Started by ``ExternalSolver`` (directly or under ``mpiexec``); streams ``--steps`` steps of
``--floats`` float32 values, one every ``--step-ms`` milliseconds, through the Python client.
Under ``mpiexec -n k`` only rank 0 connects, as an MPI program would after gathering its field.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from lightning_online import client

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=20)
p.add_argument("--floats", type=int, default=16384)
p.add_argument("--step-ms", type=float, default=0.0)
args = p.parse_args()

if os.environ.get("PMI_RANK", "0") != "0":
    sys.exit(0)

theta = client.parameters()
y = np.random.default_rng(int(abs(theta[0]) * 1e9)).random(args.floats, dtype=np.float32)
with client.connect() as run:
    t = time.perf_counter()
    for _ in range(args.steps):
        if args.step_ms:
            t += args.step_ms / 1e3
            pause = t - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
        run.send({"y": y})
