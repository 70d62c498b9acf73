"""``OnlineDataModule``: a LightningDataModule whose training data streams from live solver runs.

(Over 400 lines: one class, the DataModule's Lightning hooks for a whole study: its arguments and
their checks, setup and teardown, the loaders, checkpoints and resume. What it drives lives in
``_study`` and ``_transport``; its validation runs in ``validation``.)

Where code runs: the DataModule lives on every training rank. ``setup`` (every rank) spawns that
rank's MPI workers and starts its receiver thread; the training loop pulls batches in the main
thread of each rank through an ``IterableDataset`` (``num_workers=0``: no DataLoader processes are
forked from an MPI process). Batches are exactly what the solver yielded, stacked per field, so a
LightningModule written for an ordinary ``(x, y)`` DataLoader trains unchanged. The per-run
validation report (``_ValidationReport``) runs in that main thread too, inside Lightning's
validation and test loops, without any callback on the Trainer.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import pickle
import re
import time
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import cloudpickle
import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, IterableDataset

from lightning_online._study.agreement import STATS_KEYS
from lightning_online._study.ledger import Study, StudyError
from lightning_online._study.runs import Run
from lightning_online._transport.pool import ReceiverPool, WorkerPool
from lightning_online._util.capture import (
    LossFn,
    elementwise,
)
from lightning_online._util.checks import (
    check_choice,
    check_int,
    check_optional_real,
    check_real,
)
from lightning_online._util.dist import Group
from lightning_online._util.mpienv import check_mpi
from lightning_online.buffers import Buffer, Reservoir
from lightning_online.data.validation import (
    _ValidationBatches,
    _ValidationReport,
    _ValidationSet,
)
from lightning_online.external.solver import ExternalSolver
from lightning_online.recording.config import Recording
from lightning_online.recording.replay import Recorded, Replay, ReplayPool
from lightning_online.recording.writer import Recorder
from lightning_online.sampling.samplers import ParameterSpace, Sampler, Uniform, validation_points

log = logging.getLogger("lightning_online")

__all__ = ["OnlineDataModule", "Solver"]

Solver = Callable[[np.ndarray], Iterable[tuple[np.ndarray, ...]]]
"""A solver: ``solver(theta)`` yields one training sample (a tuple of arrays) per time step."""


class _Batches(IterableDataset):
    """Yields ready-made batches; every rank yields the same number (see ``Study.sync``)."""

    def __init__(self, dm: OnlineDataModule) -> None:
        self.dm = dm

    def __iter__(self) -> Iterator[torch.Tensor | list[torch.Tensor]]:
        return self.dm._batches()


class _OnlyWithValidationRuns:
    """``OnlineDataModule.val_dataloader``: the method itself with validation runs; without
    them, a wrapper of it that Lightning's ``is_overridden`` (which follows ``__wrapped__``)
    takes for ``LightningDataModule.val_dataloader``, i.e. no validation loader at all."""

    def __init__(self, fn: Callable[[OnlineDataModule], DataLoader]) -> None:
        self.fn = fn
        self.__doc__ = fn.__doc__

    def __get__(self, dm: OnlineDataModule | None, owner: type) -> Any:
        if dm is None:
            return self
        bound = types.MethodType(self.fn, dm)
        if dm.val_parameters is not None:
            return bound

        @functools.wraps(self.fn)
        def val_dataloader() -> DataLoader:
            return bound()

        val_dataloader.__wrapped__ = pl.LightningDataModule.val_dataloader
        return val_dataloader


class OnlineDataModule(pl.LightningDataModule):
    """Stream training data from solver runs launched as MPI processes while the model trains.

    Args:
        solver: a picklable callable, ``solver(theta) -> iterable of tuples of numpy arrays``, one
            tuple per time step (e.g. ``(x, y)``), yielded as the solver advances. It is serialised
            by value with cloudpickle, so a function defined in a script or notebook works.
        space: the box of solver parameters runs are drawn from.
        n_simulations: the budget: how many runs must *complete* (over all ranks together).
        sampler: draws the parameters of each new run (``Uniform()`` by default). A loss-driven
            sampler is updated by the ``ActiveSampling`` callback.
        buffer: the bounded store between the stream and training on each rank (``FIFO``,
            ``FIRO`` or ``Reservoir``; default ``Reservoir(capacity=max(1024, 8 * batch_size))``).
        batch_size: samples per training batch.
        n_workers: solver runs in flight at a time, per training rank.
        val_parameters: an int n (n points of the box from a low-discrepancy sequence that no
            sampler draws, :func:`~lightning_online.sampling.validation_points`, so that no
            validation run is a training run) or an ``(n, d)`` array; these runs are simulated
            once before training and held in memory for validation.
        val_batch_size: batch size of the validation loader (default ``batch_size``).
        val_loss_fn: elementwise loss ``(pred, target) -> tensor`` used for the per-simulation
            validation report (default: squared error).
        run_timeout: seconds of solver compute one run may take before it is killed and counted
            as failed (``None``: no limit). Time blocked by a full buffer does not count.
        max_retries: how often the parameters of a failed run are retried before being redrawn.
        max_failed_fraction: share of failed runs above which the study stops with an error that
            lists the failures, once at least ``MIN_FAILED_TO_STOP`` (3, in
            ``lightning_online._study.ledger``) runs have failed over all ranks.
        poll_interval: longest sleep (seconds) of the receiver thread between two looks for
            messages; it polls faster while samples flow. Each wake costs the training thread
            the GIL, so shorter is not better.
        pin_memory: gather batches into page-locked (pinned) memory, so that Lightning's
            ``non_blocking`` copy to the GPU overlaps compute. ``None`` (default): pin when
            CUDA is available.
        resume: what ``fit(..., ckpt_path=...)`` accepts of a checkpoint of another study:
            ``"strict"`` (default) refuses a checkpoint whose study differs from this one
            (parameter space, budget, sampler, buffer, solver), naming each difference, before
            any run starts; ``"relaxed"`` resumes anyway and logs the differences (the saved
            sampler state then replaces this one's; a sampler of another kind starts afresh, and
            the saved sampler state and the parameters it had drawn are dropped, as logged).
        checkpoint_buffer: whether checkpoints carry what each rank's buffer still holds and the
            batches Lightning had fetched but not trained on (at most the buffer's capacity plus
            a few batches of samples per rank), so that a resumed study serves them and runs no
            completed run again. ``False`` keeps checkpoints small: a completed run with samples
            training had not seen is then recorded as unfinished and simulated again, whole, on
            resume (nothing is lost, but its compute is spent twice). See
            docs/fault-tolerance.md for what it costs in checkpoint size.
        dtype: what batches hold of the solver's floating-point fields. ``"auto"`` (default):
            they are cast, as batches are gathered, to the floating dtype of the model's
            parameters (torch's default dtype, ``float32``, when it has none or several), so a
            solver that yields ``float64`` (numpy's default, ``scipy.integrate.solve_ivp``'s)
            trains a ``float32`` model; a one-time notice says so (yield ``float32`` to save
            the conversion and half the memory per sample). ``"keep"``: as yielded; a first
            batch whose floating dtype is not the model's is refused with an error that names
            the fix. A torch floating dtype (``torch.float64``, or its name ``"float64"``):
            cast to it. Integer, boolean and complex fields are never cast. Validation batches
            are treated alike.
        warn_after_silence: seconds without any new sample after which a warning names the
            runs in flight and how long each has run (repeated after twice as long, and so
            on, until samples flow again); ``None``: never. A solver that hangs is ended only
            by ``run_timeout``.
        stop_on_deterministic_failure: a run that fails on retry with the same error as its
            previous attempt (same parameters) is called deterministic in its warning; with
            ``True`` the study then stops at once with that error, rather than redrawing the
            parameters and going on.
        record: record the study: a file path (``"study.h5"``) or a
            :class:`~lightning_online.recording.Recording` (size cap, compression). Every sample
            each rank receives is written to HDF5 with its run, parameters and time step and the
            study's metadata, off the training thread; under DDP each rank writes its own file
            (``study.rank<r>.h5``). A study resumed from a checkpoint appends to its recording.
            Replay it with ``OnlineDataModule(Replay(path), ...)``, read it with
            :class:`~lightning_online.recording.RecordedDataset` or h5py alone:
            docs/recording.md. Needs h5py (``pip install 'lightning-online[record]'``).
    """

    def __init__(
        self,
        solver: Solver,
        space: ParameterSpace,
        *,
        n_simulations: int,
        sampler: Sampler | None = None,
        buffer: Buffer | None = None,
        batch_size: int = 32,
        n_workers: int = 2,
        val_parameters: int | list[list[float]] | np.ndarray | None = None,
        val_batch_size: int | None = None,
        val_loss_fn: LossFn | None = None,
        run_timeout: float | None = None,
        max_retries: int = 1,
        max_failed_fraction: float = 0.5,
        poll_interval: float = 5e-3,
        pin_memory: bool | None = None,
        resume: str = "strict",
        checkpoint_buffer: bool = True,
        dtype: str | torch.dtype = "auto",
        warn_after_silence: float | None = 120.0,
        stop_on_deterministic_failure: bool = False,
        record: str | Recording | None = None,
    ) -> None:
        super().__init__()
        if not callable(solver):
            raise TypeError(f"solver must be callable, got {type(solver).__name__}")
        try:
            self._solver_bytes = cloudpickle.dumps(solver)  # its digest: see fingerprint()
            # What the workers get: the same, with the source files of the solver's code kept
            # (cloudpickle writes "<dynamic-code>"), so a traceback names the user's file and line
            self._solver_payload = _dumps_keeping_files(solver)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise ValueError(
                f"the solver {solver!r} cannot be pickled ({exc}); solver runs happen in other "
                "processes, so the solver and everything it refers to must be picklable "
                "(no open files, locks or live MPI communicators)"
            ) from exc
        if not isinstance(space, ParameterSpace):
            raise TypeError(f"space must be a ParameterSpace, got {type(space).__name__}")
        from lightning_online.external.solver import ExternalSolver

        if not isinstance(solver, ExternalSolver | Replay):
            check_mpi()  # no MPI to start workers with: say how to get one now, not abort later
        if isinstance(solver, Replay):
            sampler = _check_replay(solver, space, n_simulations, sampler, val_parameters)
        self.record = Recording.of(record)
        self.solver = solver
        self.space = space
        self.n_simulations = check_int(n_simulations, "n_simulations", 1)
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.n_workers = check_int(n_workers, "n_workers", 1)
        self.sampler = sampler if sampler is not None else Uniform()
        if not isinstance(self.sampler, Sampler):
            raise TypeError(f"sampler must be a Sampler, got {type(self.sampler).__name__}")
        self.buffer = (
            buffer if buffer is not None else Reservoir(capacity=max(1024, 8 * self.batch_size))
        )
        if not isinstance(self.buffer, Buffer):
            raise TypeError(f"buffer must be a Buffer, got {type(self.buffer).__name__}")
        if self.batch_size > self.buffer.capacity:
            raise ValueError(
                f"batch_size ({self.batch_size}) is larger than the buffer's capacity "
                f"({self.buffer.capacity}): a batch could never be formed; lower batch_size or "
                "raise the buffer's capacity"
            )
        self.val_parameters = self._check_val(val_parameters)
        self.val_batch_size = (
            self.batch_size
            if val_batch_size is None
            else check_int(val_batch_size, "val_batch_size", 1)
        )
        self.val_loss_fn = elementwise(val_loss_fn)
        self.run_timeout = check_optional_real(run_timeout, "run_timeout", positive=True)
        self.max_retries = check_int(max_retries, "max_retries", 0)
        self.max_failed_fraction = check_real(
            max_failed_fraction, "max_failed_fraction", positive=True, maximum=1.0
        )
        # The receiver's longest sleep: 0 would spin a core, a minute would stall the stream.
        self.poll_interval = check_real(poll_interval, "poll_interval", minimum=1e-5, maximum=1.0)
        self.pin_memory = check_choice(pin_memory, "pin_memory", (True, False, None))
        self.resume = check_choice(resume, "resume", ("strict", "relaxed"))
        self.checkpoint_buffer = check_choice(checkpoint_buffer, "checkpoint_buffer", (True, False))
        self.dtype = _check_dtype(dtype)
        self.warn_after_silence = check_optional_real(
            warn_after_silence, "warn_after_silence", positive=True
        )
        self.stop_on_deterministic_failure = check_choice(
            stop_on_deterministic_failure, "stop_on_deterministic_failure", (True, False)
        )
        if isinstance(solver, ExternalSolver):
            solver.check_dim(space.dim)

        self._study: Study | None = None
        self._pool: ReceiverPool | None = None
        self._recorder: Recorder | None = None
        self._final_recording: list[int] | None = None
        self._last_recording: Recorder | None = None  # the last fit's, for recording_stats
        self._group: Group | None = None
        self._val_set: _ValidationSet | None = None
        self._val_thetas: np.ndarray | None = None
        self._stats: dict[str, float] = dict.fromkeys(STATS_KEYS, 0)
        self._launched: np.ndarray = np.zeros((0, space.dim))
        self._runs: dict[int, Run] = {}
        self.val_report: dict[str, np.ndarray] | None = None
        self._report: _ValidationReport | None = None  # makes val_report (no callback)
        self._stopped: pl.Trainer | None = None  # should_stop was set by the end of the study
        # What loggers record about the study (a summary: solvers need not be loggable).
        # (The arguments themselves are left out: Lightning would compare them with the summary.)
        self.save_hyperparameters({"study": _study_hparams(self)}, ignore=_init_names(type(self)))
        # The study's state when fit ended, for a checkpoint saved afterwards (or why none).
        self._final: dict[str, Any] | None = None
        self._final_missing = ""
        # The Trainer's count of processed batches when the stream was first served.
        self._batch_base: int | None = None
        # What a person is told, once: casts made, failures by reason, silences.
        self._cast_to: dict[torch.dtype, torch.dtype] | None = None
        self._cast_noticed = False
        self._failures_seen = 0
        self._failure_keys: set[str] = set()
        self._quiet_mark: tuple[int, float] = (-1, 0.0)
        self._silence_warnings = 0

    def _check_val(
        self, val: int | list[list[float]] | np.ndarray | None
    ) -> int | np.ndarray | None:
        if val is None:
            return None
        if isinstance(val, int | np.integer) and not isinstance(val, bool):
            n = check_int(val, "val_parameters", 1)
            if n > self.n_simulations:  # allowed: validation runs are not in the budget
                log.info(
                    "%d validation runs for a budget of %d training runs (validation runs are "
                    "simulated once, before training, and do not count toward n_simulations)",
                    n,
                    self.n_simulations,
                )
            return n
        arr = np.asarray(val, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != self.space.dim or len(arr) == 0:
            raise ValueError(
                f"val_parameters must be an int or an (n, {self.space.dim}) array, "
                f"got shape {arr.shape}"
            )
        outside = np.flatnonzero(~self.space.contains(arr))
        if len(outside):
            raise ValueError(
                f"val_parameters rows {outside.tolist()[:10]} lie outside the parameter space "
                f"{self.space}"
            )
        return arr

    # ------------------------------------------------------------------ public surface
    @property
    def stats(self) -> Mapping[str, float]:
        """Counters of the whole study (all ranks): launched, completed, failed, running,
        samples_received, samples_served, buffer_fill, ... Updated at every batch; identical on
        every rank once ``fit`` returns."""
        return MappingProxyType(dict(self._stats))

    @property
    def launched_parameters(self) -> np.ndarray:
        """``(n, d)``: every theta launched so far (retries included), in launch order."""
        if self._study is not None:
            entries = sorted(self._study.launched_parameters(), key=lambda e: e[0])
            if entries:
                return np.stack([t for _, t in entries])
        return self._launched.copy()

    @property
    def runs(self) -> Mapping[int, Run]:
        """The runs launched by this rank, by simulation id (parameters, status, failure reason)."""
        return MappingProxyType(self._study.runs if self._study is not None else self._runs)

    def pop_batch_info(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Simulation ids and time steps of the oldest served batch not yet popped.

        Batches are popped in the order they were served; a callback pops one per training step
        to attribute per-sample losses to the runs (and so the parameters) they came from.
        """
        if self._study is None or not self._study.batch_info:
            return None
        return self._study.batch_info.popleft()

    def refresh_parameters(self) -> None:
        """The sampler changed: runs launched from now on use new draws (call on every rank).

        Steered draws not launched yet are dropped (exploration draws are kept); runs in flight
        are not touched.
        """
        if self._study is not None:
            self._study.refresh()

    def all_reduce(self, values: np.ndarray, op: str = "sum") -> np.ndarray:
        """``values`` (a host-side array, the same shape on every rank) summed (``op="sum"``)
        or maximised (``"max"``) over the training ranks, as float64.

        Collective: every rank calls it at the same point. It runs on the package's own gloo
        process group on the CPU, never on the Trainer's (under NCCL every collective there
        needs CUDA tensors), so callbacks can reduce statistics they keep on the host.
        """
        return self._require_group().all_reduce(np.asarray(values), op)

    def all_gather_object(self, obj: Any) -> list[Any]:
        """One picklable object from every training rank, in rank order, on every rank
        (collective, on the package's gloo group: see :meth:`all_reduce`)."""
        return self._require_group().all_gather_object(obj)

    def _require_group(self) -> Group:
        if self._group is None:
            raise RuntimeError("the training ranks are known from OnlineDataModule.setup() on")
        return self._group

    def theta_of(self, sim_ids: np.ndarray) -> np.ndarray:
        """Parameters of the given runs of this rank, ``(len(sim_ids), d)``."""
        assert self._study is not None
        runs, restored = self._study.runs, self._study.restored_thetas
        # a run of an earlier session, whose samples a checkpoint carried, is known by its theta
        return np.stack(
            [runs[int(i)].theta if int(i) in runs else restored[int(i)] for i in sim_ids]
        )

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str) -> None:
        if self._group is None:
            self._group = Group()
        if stage == "fit" and self._study is None:
            self._start()
            if self.record is not None and self._study is not None:
                group = self._group
                self._recorder = Recorder(self.record, group.rank, group.size)
                self._study.recorder = self._recorder
        if self.val_parameters is not None and self._val_set is None and stage != "fit":
            self._simulate_validation()
        # fit: the validation runs are simulated once Lightning has restored a checkpoint (after
        # setup), so that a checkpoint of another study is refused before any run starts

    def _start(self) -> None:
        group = self._group
        assert group is not None
        if self.n_simulations < group.size:
            raise ValueError(
                f"n_simulations ({self.n_simulations}) is smaller than the number of training "
                f"ranks ({group.size}); every rank needs at least one run"
            )
        self._final = None
        self._final_missing = ""
        self._batch_base = None
        # Identical sampler state on every rank: parameters are drawn redundantly and sliced.
        self.sampler.load_state_dict(group.broadcast_object(self.sampler.state_dict()))
        # A new, empty buffer of the same kind and seed for every study (a used one would keep
        # the last study's samples); left at seed=None, seeded from seed_everything and the rank
        buffer = self.buffer = self.buffer.fresh(group.rank)
        self._study = Study(
            space=self.space,
            sampler=self.sampler,
            buffer=buffer,
            n_simulations=self.n_simulations,
            n_workers=self.n_workers,
            batch_size=self.batch_size,
            max_retries=self.max_retries,
            max_failed_fraction=self.max_failed_fraction,
            group=group,
        )
        pin = torch.cuda.is_available() if self.pin_memory is None else self.pin_memory
        if pin and not torch.cuda.is_available():
            raise RuntimeError(
                "pin_memory=True needs CUDA (page-locked memory is a CUDA feature); "
                "leave pin_memory=None to pin only when a GPU is there"
            )
        self._study.pin_memory = pin
        self._study.keep_buffer = self.checkpoint_buffer
        pool: type[ReceiverPool]
        what: Any
        if isinstance(self.solver, ExternalSolver):
            from lightning_online.external._pool import ExternalPool

            # The programs connect straight to this rank: no worker, no sandbox per run.
            pool, what = ExternalPool, self.solver
        elif isinstance(self.solver, Replay):  # the recording streams: no process at all
            pool, what = ReplayPool, self.solver
        else:
            pool, what = WorkerPool, self._solver_payload
        self._pool = pool(
            what,
            self.n_workers,
            self._study,
            run_timeout=self.run_timeout,
            poll_interval=self.poll_interval,
        )
        self._pool.start()
        self._study.pool = self._pool

    def _simulate_validation(self) -> None:
        group = self._group
        assert group is not None
        started_here = self._study is None
        if started_here:
            self._start()
        study, pool = self._study, self._pool
        assert study is not None and pool is not None
        if isinstance(self.val_parameters, int):
            thetas = validation_points(self.space, self.val_parameters)
        else:
            thetas = np.asarray(self.val_parameters)
        ids = study.queue_validation(thetas)
        pool.wake()
        attempts = dict.fromkeys(ids, 0)
        problem = ""
        self._quiet_mark, self._silence_warnings = (-1, 0.0), 0
        while True:
            # Ranks decide together (one small all-gather per round): a rank that gives up alone
            # would leave the others waiting in a collective.
            self._watch_silence(sum(len(v) for v in study.val_samples.values()), "validation ")
            if not problem and pool.error is not None:
                problem = f"the solver workers failed during validation: {pool.error}"
            runs = [study.runs.get(i) for i in ids]
            for i, r in zip(ids, runs, strict=True):
                if problem or r is None or r.status != "failed":
                    continue
                attempts[i] += 1
                if attempts[i] > self.max_retries:
                    problem = (
                        f"validation run {-i - 1} (theta={r.theta}) failed {attempts[i]} times: "
                        f"{r.reason.strip()}"
                    )
                else:
                    study.requeue_validation(i)
                    pool.wake()
            done = all(r is not None and r.status == "completed" for r in runs)
            status = group.all_gather(np.array([bool(problem), done]))
            if status[:, 0].any():
                bad = np.flatnonzero(status[:, 0]).tolist()
                raise StudyError(problem or f"validation runs failed on rank(s) {bad}")
            if status[:, 1].all():
                break
            time.sleep(0.01)
        local = {-i - 1: study.val_samples[i] for i in ids}
        merged: dict[int, list[Any]] = {}
        for part in group.all_gather_object(local):
            merged.update(part)
        samples, sim_index = [], []
        for k in range(len(thetas)):
            samples.extend(merged[k])
            sim_index.extend([k] * len(merged[k]))
        self._val_thetas = thetas
        self._val_set = _ValidationSet(samples, np.asarray(sim_index))
        if started_here:
            self._stop()

    def train_dataloader(self) -> DataLoader:
        if self._study is None:
            raise RuntimeError("OnlineDataModule.setup('fit') must run before train_dataloader()")
        # Hand out the first permits now, so runs start while Lightning finishes setting up
        # (sanity check). Not earlier: a checkpoint, restored after setup(), may say how much of
        # the budget is already done. Lightning calls this on every rank at the same point.
        self._ensure_validation()
        self._open_recording()
        self._study.sync()
        # The batches themselves, not a DataLoader around them: they are made by the stream
        # (no worker processes may be forked from an MPI process), so Lightning has nothing to
        # say about "few workers" and no filter of the user's warnings is touched.
        return _Batches(self)  # type: ignore[return-value]

    def _ensure_validation(self) -> None:
        """Simulate the validation runs if they are not yet (every rank, at the same point)."""
        if self.val_parameters is not None and self._val_set is None:
            self._simulate_validation()

    def _val_dataloader(self) -> DataLoader:
        """The validation runs' batches (this rank's share); an empty list without them."""
        self._ensure_validation()
        if self._val_set is None:
            return []  # type: ignore[return-value]
        group = self._group
        rank, size = (group.rank, group.size) if group is not None else (0, 1)
        # This rank's share of the validation batches, as Lightning's DistributedSampler would
        # give (padded: every rank the same number); an iterable, not a DataLoader (see
        # train_dataloader). Iterated by Lightning, it makes the per-run report (val_report).
        if self._report is None:
            self._report = _ValidationReport(self)
        batches = _ValidationBatches(self._val_set, self.val_batch_size, rank, size)
        batches.report = self._report
        batches.cast = self._cast
        return batches  # type: ignore[return-value]

    #: Lightning decides whether there is a validation loop, and whether to warn "You passed in
    #: a val_dataloader but have no validation_step", by whether ``val_dataloader`` is
    #: overridden: without validation runs it is not (no loop, no warning, no change to
    #: ``trainer.limit_val_batches``); calling it still returns an empty list.
    val_dataloader = _OnlyWithValidationRuns(_val_dataloader)

    def test_dataloader(self) -> DataLoader:
        return self._val_dataloader()

    def teardown(self, stage: str) -> None:
        self._return_trainer()
        if self._report is not None:
            self._report.stop()
        if stage == "fit":
            self._finish(collective=True)

    def on_exception(self, exception: BaseException) -> None:
        self._return_trainer()
        if self._report is not None:
            self._report.stop()
        self._finish(collective=False)

    def _return_trainer(self) -> None:
        """Put back ``should_stop`` if the end of the study set it (see :meth:`_batches`;
        idempotent). Nothing else of the Trainer is ever changed: the per-run validation
        report needs no callback (see :class:`_ValidationReport`)."""
        stop, self._stopped = self._stopped, None
        if stop is not None and stop.should_stop:
            stop.should_stop = False

    def state_dict(self) -> dict[str, Any]:
        """Sampler state, the study's progress and its fingerprint, saved in Lightning
        checkpoints, during ``fit`` and after it returns (``trainer.save_checkpoint``).

        Collective under DDP while ``fit`` runs (every rank calls it when Lightning saves a
        checkpoint): the state describes the whole study and is identical on every rank, since
        only rank 0 writes it. The buffer's contents are not saved: a completed run with
        samples never served is recorded as unfinished and runs again on resume.
        """
        state: dict[str, Any] = {
            "sampler": self.sampler.state_dict(),
            "stats": dict(self._stats),
            "fingerprint": self.fingerprint(),
        }
        if self._study is None:
            if self._final is not None:
                state["study"] = self._final
                if self._final_recording is not None:
                    state["recording"] = self._final_recording
            elif self._final_missing:
                state["study_missing"] = self._final_missing
            return state
        interrupted = self.trainer is not None and self.trainer.interrupted
        if interrupted and self._group is not None and self._group.size > 1:
            # A checkpoint saved from an exception handler may run on one rank only; a
            # collective here could hang. Such a checkpoint keeps the sampler, not the study,
            # and says so: a resume from it is refused unless resume="relaxed".
            why = "it was saved from an exception handler under DDP"
            rank_zero_warn(
                f"this checkpoint holds no study progress ({why}); resume from a periodic "
                "checkpoint to continue the study exactly"
            )
            state["study_missing"] = why
            return state
        state["study"] = self._study.export(self._trained_batches())
        if self._recorder is not None and self._group is not None:
            # after the export: a run ended since is in the recording and runs again on resume
            # (marked superseded then); what the checkpoint calls completed is recorded
            state["recording"] = self._group.all_gather_object(self._recorder.flush())
        return state

    def fingerprint(self) -> dict[str, Any]:
        """What defines this study, compared when a checkpoint is resumed: the parameter space
        (names, bounds, log flags), the budget, the sampler's kind and configuration, the
        buffer's kind and capacity and the solver (an external program's command and fields,
        a Python solver's kind and a digest of its pickled bytes)."""
        from lightning_online.external.solver import ExternalSolver

        solver: dict[str, Any] = {"kind": type(self.solver).__qualname__}
        if isinstance(self.solver, ExternalSolver):
            solver.update(command=self.solver.command, fields=self.solver.fields)
        else:
            solver["digest"] = hashlib.sha256(self._solver_bytes).hexdigest()[:16]
        return {
            "space": {
                "names": list(self.space.names),
                "low": self.space.low.tolist(),
                "high": self.space.high.tolist(),
                "log": self.space.log.tolist(),
            },
            "n_simulations": self.n_simulations,
            "sampler": {"kind": type(self.sampler).__name__, **self.sampler.config()},
            "buffer": {"kind": type(self.buffer).__name__, "capacity": self.buffer.capacity},
            "solver": solver,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the checkpoint's study: refused (``resume="strict"``, the default) when
        the checkpoint is of another study or holds no study progress, before any run starts;
        with ``resume="relaxed"`` the differences are logged and the saved state is taken."""
        if self._study is not None:  # fit: a study is about to start from this checkpoint
            self._check_resume(state_dict)
        saved = state_dict["sampler"]
        other_kind = saved.get("kind") != type(self.sampler).__name__
        if other_kind and self.resume == "relaxed":
            pending = len(state_dict.get("study", {}).get("pending", []))
            log.warning(
                "resume='relaxed' with a sampler of another kind: the saved %s sampler state is "
                "dropped, and so are the %d parameters it had drawn and not launched; this %s "
                "sampler draws the study's new runs",
                saved.get("kind"),
                pending,
                type(self.sampler).__name__,
            )
        else:
            self.sampler.load_state_dict(saved)
        self.refresh_parameters()
        if "study" in state_dict and self._study is not None:
            study = self._fit_state(state_dict["study"])
            if other_kind:
                study["pending"] = []
            self._study.restore(study)
            if self._recorder is not None:
                self._recorder.resume(
                    state_dict.get("recording"),
                    {int(i) for i, _ in state_dict["study"]["completed"]},
                    strict=self.resume == "strict",
                )

    def _check_resume(self, state: dict[str, Any]) -> None:
        relaxed = self.resume == "relaxed"
        override = (
            "To resume it anyway (its sampler state and progress replace this study's), pass "
            'OnlineDataModule(..., resume="relaxed").'
        )
        if "study" not in state:
            why = state.get("study_missing") or "it was saved by a version that kept none"
            msg = (
                f"the checkpoint holds no study progress ({why}): resuming from it would start "
                "the study over and run its whole budget again. Resume from a periodic "
                "checkpoint (ModelCheckpoint) to continue the study exactly. " + override
            )
            if not relaxed:
                raise ValueError(msg)
            log.warning(msg)
        saved = state.get("fingerprint")
        if saved is None:
            log.warning(
                "the checkpoint has no study fingerprint (saved by an older version): it is "
                "resumed without checking that it is of this study"
            )
            return
        diffs = _differences(saved, self.fingerprint())
        if not diffs:
            return
        lines = "\n".join(f"  {key}: checkpoint {a!r}, now {b!r}" for key, a, b in diffs)
        msg = f"the checkpoint is of another study; it differs in:\n{lines}\n"
        if not relaxed:
            raise ValueError(msg + override)
        log.warning("%sresume='relaxed': resuming it anyway", msg)

    def _fit_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """The saved study, less parameters that this study's space cannot take (a relaxed
        resume of a checkpoint of another space)."""

        def fits(theta: Any) -> bool:
            arr = np.asarray(theta, dtype=np.float64)
            return arr.shape == (self.space.dim,) and bool(self.space.contains(arr)[0])

        out = dict(state)
        out["unfinished"] = [(t, a) for t, a in state["unfinished"] if fits(t)]
        out["pending"] = [(t, s) for t, s in state.get("pending", []) if fits(t)]
        out["launched"] = [(ts, t) for ts, t in state["launched"] if fits(t)]
        dropped = sum(len(state.get(k, [])) - len(out[k]) for k in ("unfinished", "pending"))
        if dropped:
            log.warning(
                "%d saved run(s) have parameters outside this study's space: not run", dropped
            )
        return out

    @property
    def recording_stats(self) -> Mapping[str, Any]:
        """What recording did and cost on this rank (``record=...``; empty without): runs and
        samples written, seconds the receiver thread spent handing samples over (total and
        the longest call), seconds the writer spent committing, and why it stopped early."""
        rec = self._recorder or self._last_recording
        if rec is None:
            return MappingProxyType({})
        out: dict[str, Any] = dict(vars(rec.stats))
        out.update(path=str(rec.path), runs_in_file=rec.committed, stopped=rec.stopped_why)
        return MappingProxyType(out)

    def _open_recording(self) -> None:
        """Start recording (every rank at once, after a checkpoint is restored): a rank that
        cannot record stops every rank, with its reason."""
        recorder, group = self._recorder, self._group
        if recorder is None or recorder._thread is not None or group is None:
            return
        problem: BaseException | None = None
        try:
            recorder.open(self._recording_meta())
        except (OSError, ValueError) as exc:
            problem = exc
        bad = group.all_gather(np.array([problem is not None]))[:, 0]
        if problem is not None:
            raise problem
        if bad.any():
            raise StudyError(f"rank(s) {np.flatnonzero(bad).tolist()} cannot record the study")

    def _recording_meta(self) -> dict[str, Any]:
        """The study's metadata for the recording's attributes (plain values and JSON)."""
        import json
        import os

        from lightning_online import __version__

        def plain(obj: Any) -> Any:
            if isinstance(obj, np.ndarray):
                return obj.tolist()
            if isinstance(obj, np.generic):
                return obj.item()
            return repr(obj)

        sampler = {
            "kind": type(self.sampler).__name__,
            "config": self.sampler.config(),
            "state": self.sampler.state_dict(),
        }
        seed = os.environ.get("PL_GLOBAL_SEED")
        return {
            "package_version": __version__,
            "solver": _describe(self.solver),
            "study": json.dumps(_study_hparams(self), default=plain),
            "fingerprint": json.dumps(self.fingerprint(), default=plain),
            "sampler": json.dumps(sampler, default=plain),
            "seeds": json.dumps(
                {
                    "global": int(seed) if seed and seed.lstrip("-").isdigit() else None,
                    "sampler": getattr(self.sampler, "_effective_seed", None),
                },
                default=plain,
            ),
            "space_names": [str(n) for n in self.space.names],
            "space_low": self.space.low,
            "space_high": self.space.high,
            "space_log": self.space.log.astype(np.int8),
        }

    # ------------------------------------------------------------------ internals
    def _batches(self) -> Iterator[torch.Tensor | list[torch.Tensor]]:
        study, pool, group = self._study, self._pool, self._group
        assert study is not None and pool is not None and group is not None
        wait = 0.02 if group.size > 1 else 0.1
        study.start_serving()
        self._batch_base = self._processed()
        self._cast_to = None  # decided again at the first batch (the model may have changed)
        self._quiet_mark, self._silence_warnings = (-1, 0.0), 0
        while True:
            stop = self._surface_failures()
            try:
                decision = study.sync(error=pool.error is not None or not pool.alive or bool(stop))
            except StudyError:
                if stop:  # this rank's deterministic failure, told as it is
                    raise StudyError(stop) from None
                raise
            self._stats = decision.stats
            self._watch_silence(int(decision.stats.get("samples_received", 0)), "")
            if decision.finish:
                # An exhausted iterable ends the epoch, not fit: Lightning would start another
                # epoch (max_epochs is unbounded when max_steps is set) whose iterator yields
                # nothing, forever. Its supported way to end fit from outside the loop is
                # trainer.should_stop (as EarlyStopping does); it is set here, after the last
                # batch, only when nobody set it, and put back to False at teardown, so the
                # user's Trainer reads as they left it before, during and after fit.
                trainer = self.trainer
                if trainer is not None and not trainer.should_stop:
                    trainer.should_stop = True
                    self._stopped = trainer
                return
            if decision.batches:  # every rank serves as many before the next agreement
                for _ in range(decision.batches):
                    study.consumed(self._trained_batches())
                    yield self._cast(study.take())
            else:
                study.buffer.wait_ready(min(self.batch_size, study.buffer.capacity), wait)

    # ------------------------------------------------------------------ what a person is told
    def _cast(self, batch: Any) -> Any:
        """``batch`` (a tensor or a list of tensors) with its floating fields in the dtype that
        ``dtype`` asks (training thread; decided at the first batch of each pass)."""
        tensors = [batch] if isinstance(batch, torch.Tensor) else batch
        if self._cast_to is None:
            self._cast_to = self._decide_cast(tensors)
        if not self._cast_to:
            return batch
        pin = self._study is not None and self._study.pin_memory
        out = []
        for t in tensors:
            to = self._cast_to.get(t.dtype)
            if to is not None:
                t = t.to(to).pin_memory() if pin else t.to(to)
            out.append(t)
        return out[0] if isinstance(batch, torch.Tensor) else type(batch)(out)

    def _decide_cast(self, tensors: list[torch.Tensor]) -> dict[torch.dtype, torch.dtype]:
        floating = sorted({t.dtype for t in tensors if t.is_floating_point()}, key=str)
        module = self.trainer.lightning_module if self.trainer is not None else None
        params = (
            {p.dtype for p in module.parameters() if p.is_floating_point()}
            if module is not None
            else set()
        )
        model = next(iter(params)) if len(params) == 1 else None
        names = ", ".join(_dtype_name(d) for d in floating)
        if self.dtype == "keep":
            other = [d for d in floating if model is not None and d != model]
            if other:
                raise TypeError(
                    f"the solver yields {names} samples and OnlineDataModule(dtype='keep') "
                    f"keeps them, but the model's parameters are {_dtype_name(model)}: its "
                    "first layer would fail on them. Leave dtype='auto' (samples are cast to "
                    "the model's dtype), yield "
                    f"{_dtype_name(model)} from the solver (e.g. .astype(np.{_dtype_name(model)})), "
                    "or make the model use the samples' dtype (e.g. model.double())"
                )
            return {}
        target = self.dtype if isinstance(self.dtype, torch.dtype) else None
        if target is None:
            target = model if model is not None else torch.get_default_dtype()
        cast = {d: target for d in floating if d != target}
        if cast and not self._cast_noticed:
            self._cast_noticed = True
            why = (
                f"OnlineDataModule(dtype={self.dtype!r})"
                if target is self.dtype
                else "the model's parameters"
                if model is not None
                else "torch's default dtype"
            )
            rank_zero_info(
                f"OnlineDataModule: the solver yields {', '.join(map(_dtype_name, cast))} "
                f"samples; batches hold them as {_dtype_name(target)} ({why}). Yield "
                f"{_dtype_name(target)} from the solver to save the conversion and memory, or "
                "pass dtype='keep' to train on them as they are."
            )
        return cast

    def _surface_failures(self) -> str:
        """Show this rank's new failed runs as warnings, once per distinct error (shown without
        any logging set-up), calling a retry that fails with its previous attempt's error
        deterministic. Returns why the study must stop (a deterministic failure under
        ``stop_on_deterministic_failure``), else ``""``. Training thread."""
        study = self._study
        if study is None or study.count.failed == self._failures_seen:
            return ""
        new = study.count.failed - self._failures_seen
        self._failures_seen = study.count.failed
        recent = list(study.failures)  # appended by the receiver thread (a C-level copy)
        stop = ""
        for run in recent[-new:] if new <= len(recent) else recent:
            if run.validation:
                continue
            key = _failure_key(run.reason)
            theta = np.array2string(np.asarray(run.theta), precision=4, separator=", ")
            exact = _failure_key(run.reason, exact=True)
            again = run.attempt > 0 and any(
                r.attempt == run.attempt - 1
                and np.array_equal(r.theta, run.theta)
                and _failure_key(r.reason, exact=True) == exact
                for r in recent
            )
            if again:
                what = (
                    f"solver run {run.sim_id} (theta={theta}) failed on retry {run.attempt} with "
                    "the same error as before: the failure is deterministic (these parameters "
                    "fail every time)"
                )
                if self.stop_on_deterministic_failure:
                    stop = f"{what}; the study stops (stop_on_deterministic_failure=True):\n"
                    stop += _indent(run.reason)
                    warnings.warn(stop, UserWarning, stacklevel=2)
                    return stop
                if "deterministic: " + key in self._failure_keys:
                    continue
                self._failure_keys.add("deterministic: " + key)
                warnings.warn(
                    f"{what}; the study goes on with new parameters "
                    "(OnlineDataModule(stop_on_deterministic_failure=True) stops it instead):\n"
                    + _indent(run.reason),
                    UserWarning,
                    stacklevel=2,
                )
                continue
            if key in self._failure_keys:
                continue
            self._failure_keys.add(key)
            then = "retried" if run.attempt < self.max_retries else "redrawn"
            warnings.warn(
                f"solver run {run.sim_id} failed (theta={theta}, attempt {run.attempt + 1}; "
                f"its parameters are {then}); later failures with the same error are not shown "
                "again (OnlineDataModule.runs has every one):\n" + _indent(run.reason),
                UserWarning,
                stacklevel=2,
            )
        return stop

    def _watch_silence(self, received: int, what: str) -> None:
        """Warn when ``received`` (a count of samples) has not moved for ``warn_after_silence``
        seconds, then after twice as long, and so on (training thread)."""
        now = time.monotonic()
        if received != self._quiet_mark[0]:
            self._quiet_mark, self._silence_warnings = (received, now), 0
            return
        limit = self.warn_after_silence
        quiet = now - self._quiet_mark[1]
        if limit is None or quiet < limit * 2**self._silence_warnings:
            return
        self._silence_warnings += 1
        study = self._study
        runs = [r for r in (study.runs.values() if study else ()) if r.in_flight]
        wall = time.time()
        if runs:
            shown = "; ".join(
                f"run {r.sim_id} (theta={np.array2string(np.asarray(r.theta), precision=4)}) "
                f"for {wall - r.launched_at:.0f} s, {r.n_samples} samples"
                for r in sorted(runs, key=lambda r: r.launched_at)[:8]
            )
            more = f" and {len(runs) - 8} more" if len(runs) > 8 else ""
            where = f"in flight{'' if self._group is None else f' on rank {self._group.rank}'}"
            state = f"{len(runs)} {what}run(s) {where}: {shown}{more}"
        else:
            state = f"no {what}run is in flight on this rank"
        hint = (
            "a solver that hangs is ended only by OnlineDataModule(run_timeout=...)"
            if self.run_timeout is None
            else f"runs are ended after run_timeout={self.run_timeout:g} s"
        )
        warnings.warn(
            f"no new {what}sample for {quiet:.0f} s; {state}. {hint}; "
            "warn_after_silence=None turns this warning off",
            UserWarning,
            stacklevel=2,
        )

    def _trained_batches(self) -> int | None:
        """How many batches training has run a step on since this pass over the stream began
        (read from the Trainer's progress; None without a Trainer): the batches handed out after
        those were fetched ahead and not trained on, and a checkpoint keeps them."""
        done, base = self._processed(), self._batch_base
        return None if done is None or base is None else done - base

    def _processed(self) -> int | None:
        try:
            progress = self.trainer.fit_loop.epoch_loop.batch_progress  # type: ignore[union-attr]
            return int(progress.total.processed)  # type: ignore[union-attr]
        except (AttributeError, RuntimeError):
            return None

    def _stop(self) -> None:
        if self._pool is not None:
            self._pool.stop()
        if self._study is not None:
            self._study.stop_in_flight()
            self._launched = self.launched_parameters
            self._runs = self._study.runs
            self._stats = dict(self._study.stats or self._stats)
        self._pool = None

    def _finish(self, collective: bool) -> None:
        study = self._study
        if study is None:
            return
        self._stop()
        group = self._group
        recorder, self._recorder = self._recorder, None
        if recorder is not None:
            recorder.close()  # the receiver has stopped: every run ended is written
            if recorder.stopped_why:
                log.warning(
                    "the recording %s stopped early: %s", recorder.path, recorder.stopped_why
                )
            self._last_recording = recorder
        if group is not None and (collective or group.size == 1):
            # One last agreement so that stats and launched parameters describe the whole study
            # on every rank (every rank reaches teardown after a normal end of fit).
            self._stats = dict(study.gather_stats())
        if group is not None and (collective or group.size == 1):
            # A checkpoint saved after fit returns continues the study (collective: every
            # rank is here); after an exception under DDP none can, and it says so.
            self._final = study.export(self._trained_batches())
            if recorder is not None:
                self._final_recording = group.all_gather_object(recorder.committed)
        else:
            self._final_missing = "fit ended with an exception under DDP"
        if collective and group is not None and group.size > 1:
            parts = group.all_gather_object(study.launched_parameters())
            entries = sorted((e for p in parts for e in p), key=lambda e: e[0])
            self._launched = (
                np.stack([t for _, t in entries]) if entries else np.zeros((0, self.space.dim))
            )
        self._study = None


_DTYPE_NAMES = {
    "float32": torch.float32,
    "float": torch.float32,
    "float64": torch.float64,
    "double": torch.float64,
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
}


def _check_dtype(value: Any) -> str | torch.dtype:
    """OnlineDataModule's ``dtype``: ``"auto"``, ``"keep"`` or a floating torch dtype (also by
    name, as a command line gives it)."""
    if isinstance(value, torch.dtype) and value.is_floating_point:
        return value
    if isinstance(value, str):
        if value in ("auto", "keep"):
            return value
        name = value.removeprefix("torch.")
        if name in _DTYPE_NAMES:
            return _DTYPE_NAMES[name]
    raise ValueError(
        "dtype must be 'auto', 'keep' or a floating torch dtype (torch.float32, 'float64', "
        f"...), got {value!r}"
    )


def _dtype_name(dtype: torch.dtype | None) -> str:
    """``float32`` for ``torch.float32`` (as numpy names it)."""
    return str(dtype).removeprefix("torch.")


def _failure_key(reason: str, exact: bool = False) -> str:
    """What makes two failures the same error: the error's own line (the last one of a
    traceback) and where it was raised (the last ``File ..., line ...`` of the traceback); the
    numbers in the error's line (a run's parameters, a step) do not count unless ``exact``."""
    lines = [x.strip() for x in (reason or "").strip().splitlines() if x.strip()]
    where = next((x for x in reversed(lines) if x.startswith('File "')), "")
    what = lines[-1] if lines else ""
    if not exact:
        what = re.sub(r"[-+]?\d[\d.eE+-]*", "#", what)
    return f"{what} @ {where}"


def _indent(text: str) -> str:
    return "\n".join("    " + x for x in (text or "no reason given").strip().splitlines())


def _dumps_keeping_files(obj: Any) -> bytes:
    """``cloudpickle.dumps(obj)``, with every code object it pickles by value keeping its
    ``co_filename`` (cloudpickle replaces it with ``"<dynamic-code>"`` to make its bytes
    independent of where a function was defined): a solver's traceback in its sandbox then
    names the user's file, and shows the line when that file is readable there."""
    import io
    from collections import ChainMap

    from cloudpickle import cloudpickle as cp

    def code_reduce(code: types.CodeType) -> Any:
        made = cp._code_reduce(code)
        args = tuple(code.co_filename if a == "<dynamic-code>" else a for a in made[1])
        return (made[0], args)

    class Pickler(cloudpickle.Pickler):
        dispatch_table: ClassVar[Any] = ChainMap(
            {types.CodeType: code_reduce}, cloudpickle.Pickler.dispatch_table
        )

    try:
        buf = io.BytesIO()
        Pickler(buf).dump(obj)
        return buf.getvalue()
    except Exception:  # another cloudpickle: its plain bytes ("<dynamic-code>") still work
        return cloudpickle.dumps(obj)


def _check_replay(
    replay: Replay, space: ParameterSpace, n_simulations: Any, sampler: Any, val: Any
) -> Sampler:
    """A replayed study's arguments: its recording's space, at most its runs, its sampler."""
    rec = replay.space
    same = (
        isinstance(space, ParameterSpace)
        and np.array_equal(space.low, rec.low)
        and np.array_equal(space.high, rec.high)
        and np.array_equal(space.log, rec.log)
    )
    if not same:
        raise ValueError(
            f"a replay serves the recorded study's parameter space {rec}, not {space}: pass "
            "space=replay.space"
        )
    if isinstance(n_simulations, int) and n_simulations > replay.n_runs:
        raise ValueError(
            f"n_simulations={n_simulations}, but the recording holds {replay.n_runs} completed "
            "runs: pass at most replay.n_runs"
        )
    if val is not None:
        raise ValueError(
            "a replay has no validation runs (they are not recorded): pass val_parameters=None "
            "and validate on a held-out part of the recording (RecordedDataset) or another study"
        )
    if sampler is None:
        return replay.sampler()
    if not isinstance(sampler, Recorded):
        raise ValueError(
            f"a replay draws the recorded parameters in order (sampler=None, or a Recorded); "
            f"got {type(sampler).__name__}"
        )
    return sampler


def _differences(saved: Any, now: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, saved, now)`` of every leaf where two fingerprints differ."""
    if isinstance(saved, dict) and isinstance(now, dict):
        out = []
        for k in dict.fromkeys([*saved, *now]):
            sub = f"{key}.{k}" if key else str(k)
            out += _differences(saved.get(k, "(absent)"), now.get(k, "(absent)"), sub)
        return out
    return [] if saved == now else [(key, saved, now)]


def _describe(obj: Any) -> str:
    """A short, loggable name of a solver (or any object): a function's dotted name, a
    dataclass's repr, else its class name."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        text = repr(obj)
    elif hasattr(obj, "__qualname__"):
        text = f"{getattr(obj, '__module__', '')}.{obj.__qualname__}".lstrip(".")
    elif hasattr(obj, "command"):  # an external program
        text = f"{type(obj).__name__}({' '.join(map(str, obj.command))})"
    else:
        text = type(obj).__qualname__
    return text if len(text) <= 300 else text[:297] + "..."


def _init_names(cls: type) -> list[str]:
    """The argument names of every ``__init__`` of ``cls`` and its bases."""

    names = {
        name
        for klass in cls.__mro__
        if "__init__" in vars(klass) and inspect.isfunction(vars(klass)["__init__"])
        for name in inspect.signature(vars(klass)["__init__"]).parameters
    }
    return sorted(names - {"self"})


def _study_hparams(dm: OnlineDataModule) -> dict[str, Any]:
    """The study's configuration as plain values, for ``save_hyperparameters`` (every rank,
    at construction)."""
    val = dm.val_parameters
    return {
        "solver": _describe(dm.solver),
        "space": {
            "names": list(dm.space.names),
            "low": [float(v) for v in dm.space.low],
            "high": [float(v) for v in dm.space.high],
            "log": [bool(v) for v in dm.space.log],
        },
        "n_simulations": dm.n_simulations,
        "sampler": {"kind": type(dm.sampler).__name__, "seed": getattr(dm.sampler, "seed", None)},
        "buffer": {
            "kind": type(dm.buffer).__name__,
            "capacity": dm.buffer.capacity,
            "watermark": dm.buffer.watermark,
        },
        "batch_size": dm.batch_size,
        "n_workers": dm.n_workers,
        "val_parameters": None if val is None else (val if isinstance(val, int) else len(val)),
        "val_batch_size": dm.val_batch_size,
        "run_timeout": dm.run_timeout,
        "max_retries": dm.max_retries,
        "max_failed_fraction": dm.max_failed_fraction,
        "pin_memory": dm.pin_memory,
        "checkpoint_buffer": dm.checkpoint_buffer,
        "dtype": dm.dtype if isinstance(dm.dtype, str) else _dtype_name(dm.dtype),
        "warn_after_silence": dm.warn_after_silence,
        "stop_on_deterministic_failure": dm.stop_on_deterministic_failure,
        "record": None if dm.record is None else dm.record.path,
    }
