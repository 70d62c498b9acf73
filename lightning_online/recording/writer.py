"""Recording a study: every sample a training rank receives, written to HDF5 by a writer thread.

(Over 400 lines: one class, the recorder of a rank, whose three sides (the receiver's tee, the
writer thread, the training thread's open, resume, flush and close) share its counters and the
file's position, and whose commit, size cap and resume must agree on the same layout.)

Where code runs: on each training rank. The receiver thread (``_transport``) hands each accepted
message of samples to :meth:`Recorder.samples` (one copy of the bytes and a put on a queue: it
never waits) and each ended run to :meth:`Recorder.end`; a full queue (``queue_bytes``) makes
:meth:`Recorder.room` false, which stops the receiver from taking more samples, exactly as a full
buffer does (backpressure, no blocking). The writer thread keeps the samples of each run in
memory until the run ends, then commits it (``_h5``: SWMR appends, the index last, the file
closed between commits). The training thread opens, flushes (at checkpoints) and closes it.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lightning_online._wire.samples import MAGIC_BARE, read_header, record_ids
from lightning_online.recording._h5 import (
    COMPLETED,
    FAILED,
    FORMAT,
    FORMAT_VERSION,
    SUPERSEDED,
    WriterLock,
    committed_runs,
    h5py,
    rank_path,
    repair,
    runs_dtype,
)
from lightning_online.recording.config import Recording

log = logging.getLogger("lightning_online")

__all__ = ["Recorder", "Recording"]

#: Bytes of one chunk of a field dataset at most (a run's rows per chunk, fewer for big samples).
CHUNK_BYTES = 4 << 20


@dataclass
class _Ended:
    sim_id: int
    theta: np.ndarray
    status: int
    attempt: int
    seconds: float
    rows: list[np.ndarray] = field(default_factory=list)


@dataclass
class RecorderStats:
    """What recording cost and did on this rank (read on the training thread)."""

    tee_calls: int = 0
    tee_seconds: float = 0.0  # receiver thread, in samples() and end()
    tee_max_seconds: float = 0.0
    commits: int = 0
    commit_seconds: float = 0.0  # writer thread
    runs_written: int = 0
    samples_written: int = 0
    bytes_received: int = 0
    runs_dropped: int = 0  # ended after recording stopped (cap, error)


class Recorder:
    """One rank's recording: the receiver thread's tee, the writer thread and the file."""

    def __init__(self, config: Recording, rank: int, world_size: int) -> None:
        self.config = config
        self.path = rank_path(config.path, rank, world_size)
        self.rank, self.world_size = rank, world_size
        self.stats = RecorderStats()
        self.stopped_why = ""  # why recording stopped early (size cap, an error)
        self._queue: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        # bytes put by the receiver thread, and taken by the writer thread (one writer each)
        self._put = 0
        self._taken = 0
        self._off = True  # nothing is taken before open() and after close()
        self._thread: threading.Thread | None = None
        self._lock: WriterLock | None = None
        self._meta: dict[str, Any] = {}
        self._resume: tuple[int | None, set[int]] | None = None
        self._session = 0
        self._n_runs = 0  # committed rows of /runs
        self._pos = 0  # committed rows of the field datasets
        self._layout: list[tuple[np.dtype, tuple[int, ...], int, int]] | None = None
        self._record_size = 0
        self._dim = 0
        self._strict = True
        self._chunks: list[tuple[int, int]] = []
        self._run_chunk = (256, 0)

    # ------------------------------------------------------------------ receiver thread
    def room(self) -> bool:
        return self._off or self._put - self._taken < self.config.queue_bytes

    def samples(self, sim_id: int, rows: np.ndarray) -> None:
        """``(k, size)`` wire records of one run just accepted (valid only during the call)."""
        if self._off:
            return
        t0 = time.perf_counter()
        copy = np.array(rows, dtype=np.uint8, copy=True)
        self._put += copy.nbytes
        self._queue.put(("s", sim_id, copy))
        self._took(t0, copy.nbytes)

    def end(self, sim_id: int, theta: np.ndarray, completed: bool, attempt: int, s: float) -> None:
        """A run of this rank ended (completed or failed; not a validation run)."""
        if self._off:
            return
        t0 = time.perf_counter()
        status = COMPLETED if completed else FAILED
        self._queue.put(("e", _Ended(sim_id, np.array(theta, np.float64), status, attempt, s)))
        self._took(t0, 0)

    def _took(self, t0: float, nbytes: int) -> None:
        dt = time.perf_counter() - t0
        st = self.stats
        st.tee_calls += 1
        st.tee_seconds += dt
        st.bytes_received += nbytes
        if dt > st.tee_max_seconds:
            st.tee_max_seconds = dt

    # ------------------------------------------------------------------ training thread
    def resume(self, counts: list[int] | None, completed: set[int], strict: bool) -> None:
        """The study resumes from a checkpoint that knew ``counts[rank]`` committed runs of
        this rank's recording (None: it does not say) and ``completed`` runs (every rank)."""
        n = None if counts is None or self.rank >= len(counts) else int(counts[self.rank])
        self._resume = (n, set(completed))
        self._strict = strict

    def open(self, meta: dict[str, Any]) -> None:
        """Check the file and start the writer thread (training thread, once the study's
        checkpoint, if any, is restored). Raises what makes recording impossible."""
        self._meta = dict(meta)
        self._dim = len(meta["space_low"])
        path = self.path
        stale = path.with_name(path.name + ".tmp")
        if stale.exists():
            stale.unlink()
        if path.exists():
            if self._resume is None:
                if not self.config.overwrite:
                    raise FileExistsError(
                        f"{path} already holds a recording. A new study does not write into "
                        "another study's recording: remove it, record to another path, pass "
                        "Recording(path, overwrite=True), or resume the study it records from a "
                        "checkpoint (fit(..., ckpt_path=...)), which appends to it"
                    )
                self._lock = WriterLock(path)
                path.unlink()
                self._lock.release()
                self._lock = None
            else:
                self._reopen(path)
        elif self._resume is not None and self._resume[0]:
            log.warning(
                "%s does not exist: the resumed study records from here on; the %d runs its "
                "checkpoint says were recorded before are not in it",
                path,
                self._resume[0],
            )
        self._off = False
        self._thread = threading.Thread(
            target=self._main, name=f"recording-{self.rank}", daemon=True
        )
        self._thread.start()

    def _reopen(self, path: Path) -> None:
        """Append to an existing recording: clear a killed writer's flags, check that it is of
        this study, forget what was committed after the checkpoint."""
        assert self._resume is not None
        count, completed = self._resume
        if repair(path):  # refused while another process writes it
            log.warning("%s was left open by a killed process; its flags are cleared", path)
        self._lock = WriterLock(path)
        h5 = h5py()
        with h5.File(path, "a", libver="latest") as f:
            if f.attrs.get("format") != FORMAT:
                raise ValueError(f"{path} is not a lightning_online recording")
            saved, now = f.attrs.get("fingerprint"), self._meta["fingerprint"]
            if saved is not None and json.loads(saved) != json.loads(now):
                msg = (
                    f"{path} records another study (its fingerprint differs from this one's); "
                    "record this study to another path"
                )
                if self._strict:
                    raise ValueError(msg)
                log.warning("%s; resume='relaxed': appending to it anyway", msg)
            f.swmr_mode = True
            runs = committed_runs(f)
            n = len(runs) if count is None else min(count, len(runs))
            if count is not None and count > len(runs):
                log.warning(
                    "%s holds %d runs, its checkpoint said %d: the missing ones are not "
                    "recorded again",
                    path,
                    len(runs),
                    count,
                )
            kept = runs[:n]
            stale_rows = np.flatnonzero(
                (kept["status"] == COMPLETED)
                & ~np.isin(kept["sim_id"], np.fromiter(completed, np.int64, len(completed)))
            )
            if len(stale_rows):  # completed, but the resumed study runs them again
                for i in stale_rows.tolist():
                    row = f["runs"][i]
                    row["status"] = SUPERSEDED
                    f["runs"][i] = row
                f["runs"].flush()
            if n != len(runs):
                log.info(
                    "%s: %d runs recorded after the checkpoint are dropped", path, len(runs) - n
                )
            f["n_runs"][0] = n
            f["n_runs"].flush()
            self._n_runs = n
            self._pos = int((kept["start"] + kept["count"]).max()) if n else 0
            self._session = int(kept["session"].max()) + 1 if n else 0
            # the record layout comes from the first sample this session receives
            self._record_size = -1
            self._dim = f["runs"].dtype["theta"].shape[0]
            self._chunking(f)

    def _chunking(self, f: Any) -> None:
        """Rows per chunk and bytes per row of every dataset that grows (for the size cap)."""
        names = [f"fields/{k}" for k in range(int(f.attrs["n_fields"]))] + ["sim_id", "step"]
        self._chunks = [
            (f[n].chunks[0], f[n].dtype.itemsize * int(np.prod(f[n].shape[1:]))) for n in names
        ]
        self._run_chunk = (f["runs"].chunks[0], f["runs"].dtype.itemsize)

    def _growth(self, rows: int, runs: int) -> int:
        """At most how many bytes the file grows by committing ``rows`` samples of ``runs``
        runs: the whole chunks the rows start (uncompressed), and room for the chunk indexes."""

        def chunks(lo: int, hi: int, per: int) -> int:
            return -(-hi // per) - -(-lo // per)

        lo, hi = self._pos, self._pos + rows
        out = sum(chunks(lo, hi, per) * per * nbytes for per, nbytes in self._chunks)
        per, nbytes = self._run_chunk
        out += chunks(self._n_runs, self._n_runs + runs, per) * per * nbytes
        return out + 4096 + 512 * len(self._chunks)

    def flush(self, timeout: float = 120.0) -> int:
        """Wait until every run ended so far is written (training thread, at a checkpoint);
        the number of runs committed to the file."""
        if self._thread is None or not self._thread.is_alive():
            return self._n_runs
        done = threading.Event()
        self._queue.put(("f", done))
        if not done.wait(timeout):
            log.warning("the recording %s did not catch up within %.0f s", self.path, timeout)
        return self._n_runs

    @property
    def committed(self) -> int:
        return self._n_runs

    def close(self, timeout: float = 300.0) -> None:
        """Write every run ended so far, drop the samples of runs not over, close (training
        thread, once the receiver thread has stopped)."""
        thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._queue.put(("x",))
            thread.join(timeout)
            if thread.is_alive():
                log.error(
                    "the recording %s did not finish writing within %.0f s", self.path, timeout
                )
        self._off = True
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ------------------------------------------------------------------ writer thread
    def _main(self) -> None:
        pending: dict[int, list[np.ndarray]] = {}
        while True:
            items = [self._queue.get()]
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            ready: list[_Ended] = []
            flushes: list[threading.Event] = []
            stop = False
            for item in items:
                kind = item[0]
                if kind == "s":
                    pending.setdefault(item[1], []).append(item[2])
                    self._taken += item[2].nbytes
                elif kind == "e":
                    run = item[1]
                    run.rows = pending.pop(run.sim_id, [])
                    if run.rows:  # a run that sent nothing has nothing to record
                        ready.append(run)
                elif kind == "f":
                    flushes.append(item[1])
                else:
                    stop = True
            if ready:
                if self.stopped_why:
                    self.stats.runs_dropped += len(ready)
                else:
                    try:
                        self._commit(ready)
                    except Exception as exc:  # never the study: recording stops, training goes on
                        log.exception("recording to %s failed", self.path)
                        self._stop_recording(f"writing failed: {exc}")
                        self.stats.runs_dropped += len(ready)
            for ev in flushes:
                ev.set()
            if stop:
                return

    def _stop_recording(self, why: str) -> None:
        self.stopped_why = why
        self._off = True  # the tee takes nothing more (and room() says yes)

    def _commit(self, ready: list[_Ended]) -> None:
        t0 = time.perf_counter()
        rows = np.concatenate([r for run in ready for r in run.rows])
        if self._record_size <= 0:
            self._set_layout(rows[0])
        if rows.shape[1] != self._record_size:
            raise ValueError(
                f"samples of {rows.shape[1]} bytes, the recording's are {self._record_size}"
            )
        if not self.path.exists():
            self._create(rows)
        cap = self.config.max_bytes
        size = self.path.stat().st_size
        need = self._growth(len(rows), len(ready))
        if cap is not None and size + need > cap:
            self._stop_recording(f"max_bytes={cap} reached")
            self.stats.runs_dropped += len(ready)
            log.warning(
                "the recording %s reached its size cap (max_bytes=%d: it holds %d bytes, the "
                "next %d run(s) may need %d more): recording stops here with %d runs, training "
                "goes on. Raise Recording(max_bytes=...) or record with compression to keep "
                "more.",
                self.path,
                cap,
                size,
                len(ready),
                need,
                self._n_runs,
            )
            return
        sims, steps = record_ids(rows)
        table = np.zeros(len(ready), dtype=runs_dtype(self._dim))
        start = self._pos
        for i, run in enumerate(ready):
            n = sum(len(r) for r in run.rows)
            table[i] = (
                run.sim_id, run.theta, start, n, run.status, run.attempt, self._session,
                run.seconds,
            )  # fmt: skip
            start += n
        h5 = h5py()
        for attempt in range(50):
            try:
                f = h5.File(self.path, "a", libver="latest")
                break
            except OSError:  # a reader holds it without SWMR: wait for it (backpressure)
                if attempt == 49:
                    raise
                time.sleep(0.2)
        try:
            f.swmr_mode = True
            lo, hi = self._pos, self._pos + len(rows)
            assert self._layout is not None
            for i, (dtype, shape, off, nbytes) in enumerate(self._layout):
                ds = f[f"fields/{i}"]
                if ds.shape[0] < hi:
                    ds.resize(hi, axis=0)
                ds[lo:hi] = rows[:, off : off + nbytes].view(dtype).reshape(len(rows), *shape)
                ds.flush()
            for name, values in (("sim_id", sims), ("step", steps)):
                ds = f[name]
                if ds.shape[0] < hi:
                    ds.resize(hi, axis=0)
                ds[lo:hi] = values
                ds.flush()
            runs, r0 = f["runs"], self._n_runs
            if runs.shape[0] < r0 + len(table):
                runs.resize(r0 + len(table), axis=0)
            runs[r0 : r0 + len(table)] = table
            runs.flush()
            f["n_runs"][0] = r0 + len(table)  # what readers trust: written last
            f["n_runs"].flush()
        finally:
            f.close()
        self._pos = hi
        self._n_runs += len(table)
        st = self.stats
        st.commits += 1
        st.commit_seconds += time.perf_counter() - t0
        st.runs_written += len(table)
        st.samples_written += len(rows)

    def _set_layout(self, record: np.ndarray) -> None:
        header, fields = read_header(record)
        self._layout = [(fl.dtype, fl.shape, fl.offset, fl.nbytes) for fl in fields]
        self._record_size = len(record)
        self._bare = bool(header[0] == MAGIC_BARE)

    def _create(self, rows: np.ndarray) -> None:
        """The file, whole, under a temporary name, then renamed into place (atomic)."""
        assert self._layout is not None
        h5 = h5py()
        tmp = self.path.with_name(self.path.name + ".tmp")
        run_rows = max(1, min(len(rows), 4096))
        cfg = self.config
        with h5.File(tmp, "w", libver="latest") as f:
            meta = self._meta
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
            f.attrs["rank"] = self.rank
            f.attrs["world_size"] = self.world_size
            f.attrs["bare"] = self._bare
            f.attrs["n_fields"] = len(self._layout)
            for key, value in meta.items():
                f.attrs[key] = value
            fields = f.create_group("fields")
            for i, (dtype, shape, _, nbytes) in enumerate(self._layout):
                per = max(1, min(run_rows, CHUNK_BYTES // max(1, nbytes)))
                fields.create_dataset(
                    str(i),
                    shape=(0, *shape),
                    maxshape=(None, *shape),
                    dtype=dtype,
                    chunks=(per, *shape),
                    compression=cfg.compression,
                    compression_opts=cfg.compression_opts,
                    shuffle=cfg.compression is not None,
                )
            for name in ("sim_id", "step"):
                f.create_dataset(
                    name, shape=(0,), maxshape=(None,), dtype="<i8", chunks=(max(run_rows, 256),)
                )
            f.create_dataset(
                "runs", shape=(0,), maxshape=(None,), dtype=runs_dtype(self._dim), chunks=(64,)
            )
            f.create_dataset("n_runs", data=np.zeros(1, dtype="<i8"))
            self._chunking(f)
        os.replace(tmp, self.path)
        self._lock = WriterLock(self.path)
