"""A solver program in the style of an external code, speaking the client protocol from Python.

Started by ExternalSolver in the tests (directly, or under mpiexec where only rank 0 connects).
``--mode`` picks a behaviour, including the faults the receiving side must survive.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

import numpy as np

from lightning_online import client
from lightning_online._wire import tcp as _protocol

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=5)
p.add_argument("--size", type=int, default=4)
p.add_argument("--mode", default="ok")
p.add_argument("--at", type=int, default=2)
p.add_argument("--fail-above", type=float, default=None)
p.add_argument("--delay", type=float, default=0.0)
p.add_argument("--stall-after", type=int, default=None)
p.add_argument("--parts", action="store_true", help="every MPI rank sends its share of y")
p.add_argument("--payload", default=None, help="raw mode: a file of bytes sent after HELLO")
args = p.parse_args()


def parts_mode(rank: int, size: int) -> None:
    """Each rank sends its share: x from rank 0 only, y split over the ranks (np.array_split)."""
    theta = client.parameters()
    n_parts = size + 1 if args.mode == "part-count" and rank == 1 else size
    odd = rank == 1
    with client.connect(part=rank, n_parts=n_parts) as run:
        for k in range(args.steps):
            if odd and k == args.at and args.mode == "part-raise":
                raise RuntimeError(f"rank 1 diverged at step {k}")
            if odd and k == args.at and args.mode == "part-short":
                break
            x = np.append(theta, k / args.steps).astype(np.float32)
            y = (np.arange(args.size) * theta.sum() * (k + 1)).astype(np.float32)
            y = np.array_split(y, size)[rank]
            if odd and args.mode == "part-dtype":
                y = y.astype(np.float64)
            run.send({"x": x if rank == 0 else x[:0], "y": y})
    sys.exit(0)


rank, size = int(os.environ.get("PMI_RANK", "0")), int(os.environ.get("PMI_SIZE", "1"))
if rank != 0 and not args.parts:  # an MPI launch: only rank 0 talks to the trainer
    sys.exit(0)
if args.parts:
    parts_mode(rank, size)

theta = client.parameters()
print(f"lo_ext_client starting with theta={theta.tolist()}", flush=True)
mode = args.mode
if args.fail_above is not None and theta[0] > args.fail_above:
    mode = "exit-before"
if mode == "exit-before":
    print("giving up before connecting", flush=True)
    sys.exit(3)
if mode == "sleep":
    time.sleep(600)
if mode == "stray":  # a foreign connection with a wrong token first; the real one follows
    host, port = os.environ["LIGHTNING_ONLINE_ADDRESS"].rsplit(":", 1)
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n" + bytes(64))
if mode == "raw":  # HELLO, then whatever bytes the test chose (fuzzing the receiving side)
    run = client.connect()
    with open(args.payload, "rb") as f:
        run._sendall([f.read()])
    time.sleep(args.delay)
    sys.exit(0)
if mode == "error-big":  # an ERROR message of 1 MiB without a newline
    run = client.connect()
    text = b"e" * (1 << 20)
    run._sendall([_protocol.encode_header(_protocol.ERROR, len(text)), text])
    sys.exit(1)
if mode == "garbage":
    run = client.connect()
    run._sendall([b"\x00" * 32])
    time.sleep(0.5)
    sys.exit(0)

with client.connect() as run:
    for k in range(args.steps):
        if args.delay:
            time.sleep(args.delay)
        if k == args.stall_after:  # computes for a long time without sending
            time.sleep(600)
        if k == args.at:
            if mode == "crash":
                os._exit(9)
            if mode == "raise":
                raise RuntimeError(f"solver diverged at step {k}")
            if mode == "truncate":  # half a message, then death
                run._sendall([_protocol.encode_header(_protocol.STEP, 4096, 1, k)])
                os._exit(0)
        x = np.append(theta, k / args.steps).astype(np.float32)
        y = (np.arange(args.size) * theta.sum() * (k + 1)).astype(np.float32)
        if mode == "nan" and k == args.at:
            y[0] = np.nan
        names = ("x", "z") if mode == "bad-names" else ("x", "y")
        run.send({names[0]: x, names[1]: y})
    if mode == "short":  # closes early, claiming fewer steps than announced
        pass
if mode == "nonzero-after-close":
    sys.exit(4)
print("lo_ext_client done", flush=True)
