"""Solvers that attack the machinery around them (tests): they write into their sandbox's pipe
to the worker, or fail with enormous messages. Healthy for theta[0] >= 0.5."""

from __future__ import annotations

import os
import struct
import sys
import time

import numpy as np

FRAME = struct.Struct("<QB")  # _runner's frame header: length, kind


class Hostile:
    def __init__(self, kind: str, n_steps: int = 4) -> None:
        self.kind, self.n_steps = kind, n_steps

    def __call__(self, theta: np.ndarray):
        hostile = theta[0] < 0.5
        for k in range(self.n_steps):
            if hostile and k == 2:
                pipe = int(sys.argv[2])  # the sandbox's frames to its worker
                if self.kind == "huge_frame":  # announces 4 EiB, then ends
                    os.write(pipe, FRAME.pack(1 << 62, ord("S")))
                    os._exit(0)
                if self.kind == "bad_ref":  # a sample reference of the wrong size
                    os.write(pipe, FRAME.pack(5, ord("R")) + b"12345")
                    time.sleep(60)
                if self.kind == "outside_ring":  # a reference far outside the ring
                    os.write(pipe, FRAME.pack(24, ord("R")) + struct.pack("<QQQ", 1 << 40, 64, 64))
                    time.sleep(60)
                if self.kind == "unknown_kind":
                    os.write(pipe, FRAME.pack(2, ord("Z")) + b"hi")
                    time.sleep(60)
                if self.kind == "half_frame":  # a frame begun, then silence
                    os.write(pipe, FRAME.pack(100, ord("S")) + b"x" * 10)
                    time.sleep(3600)
                if self.kind == "huge_error":  # 64 MiB of exception message
                    raise RuntimeError("x" * (64 << 20))
            x = np.array([theta[0], k / self.n_steps], dtype=np.float32)
            yield x, np.array([np.sin(3 * theta[0])], dtype=np.float32)


class SlowStart:
    """Healthy, but loading it takes 1.5 s (heavy imports): its sandbox's start-up is no part of
    a run's compute, so a run_timeout below it fails no run."""

    def __init__(self) -> None:
        self.n_steps = 3

    def __setstate__(self, state: dict) -> None:
        time.sleep(1.5)
        self.__dict__.update(state)

    def __call__(self, theta: np.ndarray):
        if theta[0] < 0.3:  # a crash: the next run of this worker starts a new sandbox
            os.kill(os.getpid(), 9)
        for k in range(self.n_steps):
            yield np.array([theta[0], k], dtype=np.float32), np.ones(1, np.float32)
