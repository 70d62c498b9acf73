"""Shared fixtures: small solvers and a check that no solver process outlives a test."""

from __future__ import annotations

import time

import psutil
import pytest


def solver_processes() -> list[psutil.Process]:
    """Our MPI workers, solver sandboxes and external programs among this process's descendants.

    (MPI's own process manager, started once per process by singleton initialisation, lives as
    long as the test process and is not ours to stop.)
    """
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
            # lo_ext*: the tests' external solver programs (tests/programs), and their mpiexec
            if "lightning_online" in cmd or "lo_ext" in cmd:
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.fixture
def no_orphans():
    yield
    deadline = time.monotonic() + 10
    while solver_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    left = solver_processes()
    assert not left, f"solver processes left behind: {[p.cmdline() for p in left]}"
