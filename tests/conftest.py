"""Shared fixtures: small solvers and a check that no solver process outlives a test."""

from __future__ import annotations

import time

import psutil
import pytest


def solver_processes() -> list[psutil.Process]:
    """Our MPI workers and solver sandboxes among the descendants of this process.

    (MPI's own process manager, started once per process by singleton initialisation, lives as
    long as the test process and is not ours to stop.)
    """
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "lightning_online" in " ".join(p.cmdline()):
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
