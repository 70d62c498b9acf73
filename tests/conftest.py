"""Shared fixtures: small solvers and a check that no solver process outlives a test."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid

import psutil
import pytest

_OURS = ("lightning_online", "lo_ext")  # workers, sandboxes; the tests' external programs


def _ours(p: psutil.Process) -> bool:
    return any(mark in " ".join(p.cmdline()) for mark in _OURS)


def solver_processes(marker: str | None = None) -> list[psutil.Process]:
    """Our MPI workers, solver sandboxes and external programs: among this process's
    descendants and, with ``marker``, anywhere on the machine whose environment carries it (a
    process whose parent died is re-parented away from this process's tree).

    (MPI's own process manager, started once per process by singleton initialisation, lives as
    long as the test process and is not ours to stop.)
    """
    found = {}
    for p in psutil.Process().children(recursive=True):
        try:
            if _ours(p):
                found[p.pid] = p
        except psutil.NoSuchProcess:  # includes zombies
            pass
    if marker is not None:
        for p in psutil.process_iter():
            try:
                if p.pid not in found and p.environ().get(MARKER) == marker and _ours(p):
                    found[p.pid] = p
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
    return list(found.values())


MARKER = "LIGHTNING_ONLINE_TEST_MARKER"


@pytest.fixture(autouse=True)
def _global_seed_stays_in_its_test():
    """``seed_everything`` (a recipe run through the CLI, a test) sets ``PL_GLOBAL_SEED`` in this
    process, and samplers and buffers left at ``seed=None`` follow it: no test leaves it to the
    next."""
    before = os.environ.get("PL_GLOBAL_SEED")
    yield
    if before is None:
        os.environ.pop("PL_GLOBAL_SEED", None)
    else:
        os.environ["PL_GLOBAL_SEED"] = before


@pytest.fixture
def no_orphans(monkeypatch):
    """Fails the test if a worker, sandbox or program it started is still running 10 s after it.

    Every process the test starts inherits a marker in its environment, so that orphans are
    found even after they were re-parented."""
    marker = uuid.uuid4().hex
    monkeypatch.setenv(MARKER, marker)
    yield
    deadline = time.monotonic() + 10
    while solver_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = solver_processes(marker)
    assert not left, f"solver processes left behind: {[p.cmdline() for p in left]}"


def has_ipv6_loopback() -> bool:
    """Whether this machine can listen on ::1 (IPv6 tests skip without it)."""
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def text(self) -> str:
        return "\n".join(self.messages)


@pytest.fixture
def summary_log():
    """What Lightning's rank-zero logging shows (where ``StudyMonitor`` puts its summary table),
    whatever handlers Lightning configured: ``summary_log.text()``."""
    from lightning_utilities.core import rank_zero

    logger = rank_zero.log  # the logger rank_zero_info writes to
    handler = _Records()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)
