"""Recording a study (``OnlineDataModule(record=...)``), reading it back with h5py alone,
replaying it as a study's stream, reading it as a map-style dataset, and what a kill -9 leaves:
real studies, real MPI workers, real HDF5 files."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from _models import Regressor, quiet_trainer
from _solvers import Smooth
from conftest import MARKER, solver_processes
from torch.utils.data import DataLoader, DistributedSampler

from lightning_online import FIFO, Halton, OnlineDataModule, ParameterSpace, Reservoir
from lightning_online.recording import RecordedDataset, Recording, Replay, repair

HERE = Path(__file__).parent
SPACE = ParameterSpace([0, 0], [1, 1], ["a", "b"])
pytestmark = [pytest.mark.timeout(180)]


class Seen(Regressor):
    """Keeps every batch it trained on."""

    def __init__(self) -> None:
        super().__init__(3, 1)
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        self.batches.append((batch[0].clone(), batch[1].clone()))
        return super().training_step(batch, batch_idx)


def study(path, **kw) -> OnlineDataModule:
    args = dict(
        n_simulations=8,
        sampler=Halton(seed=0),
        batch_size=8,
        n_workers=1,
        buffer=FIFO(64, watermark=8),
        record=path,
    )
    args.update(kw)
    return OnlineDataModule(Smooth(n_steps=12), SPACE, **args)


def read_runs(path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """What docs/recording.md shows: h5py alone, a few lines."""
    with h5py.File(path, "r") as f:
        runs = f["runs"][: f["n_runs"][0]]
        out = []
        for r in runs:
            rows = slice(r["start"], r["start"] + r["count"])
            out.append((r, f["fields/0"][rows], f["fields/1"][rows], f["step"][rows]))
    return out


@pytest.mark.usefixtures("no_orphans")
def test_a_recorded_study_reads_back_bit_identical_to_what_was_streamed(tmp_path):
    path = tmp_path / "study.h5"
    dm, model = study(str(path)), Seen()
    quiet_trainer().fit(model, dm)
    assert dm.stats["completed"] == 8

    runs = read_runs(path)
    assert len(runs) == 8 and sorted(r["sim_id"] for r, *_ in runs) == list(range(8))
    streamed = torch.cat([x for x, _ in model.batches]).numpy()
    recorded = []
    for r, x, y, steps in runs:
        assert r["status"] == 1 and r["count"] == 12 and r["session"] == 0
        assert steps.tolist() == list(range(12))
        want = list(Smooth(n_steps=12)(r["theta"]))
        assert x.dtype == np.float32 and x.tobytes() == np.stack([a for a, _ in want]).tobytes()
        assert y.tobytes() == np.stack([b for _, b in want]).tobytes()
        recorded.append(x)
    # FIFO, one worker: training saw exactly the recorded samples, in the recorded order
    assert streamed.tobytes() == np.concatenate(recorded).tobytes()

    with h5py.File(path, "r") as f:  # the study's metadata, as plain attributes
        a = f.attrs
        assert a["format"] == "lightning_online.recording" and a["format_version"] == 1
        assert list(a["space_names"]) == ["a", "b"] and list(a["space_high"]) == [1.0, 1.0]
        sampler = json.loads(a["sampler"])
        assert sampler["kind"] == "Halton" and sampler["state"]["effective_seed"] == 0
        assert json.loads(a["fingerprint"]) == json.loads(json.dumps(dm.fingerprint()))
        assert "Smooth" in a["solver"] and a["package_version"]
    stats = dm.recording_stats
    assert stats["runs_written"] == 8 and stats["samples_written"] == 96 and not stats["stopped"]


@pytest.mark.usefixtures("no_orphans")
def test_replay_trains_the_same_model(tmp_path):
    path = tmp_path / "study.h5"
    torch.manual_seed(0)
    online = Seen()
    quiet_trainer().fit(online, study(str(path)))

    replay = Replay(path)
    assert replay.n_runs == 8 and np.array_equal(replay.space.low, SPACE.low)
    torch.manual_seed(0)
    again = Seen()
    dm = OnlineDataModule(
        replay, replay.space, n_simulations=8, batch_size=8, buffer=FIFO(64, watermark=8)
    )
    quiet_trainer().fit(again, dm)
    assert dm.stats["completed"] == 8 and dm.stats["samples_served"] == 96
    assert len(again.batches) == len(online.batches) == 12
    for (x0, y0), (x1, y1) in zip(online.batches, again.batches, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    for name, p in online.state_dict().items():
        assert torch.equal(p, again.state_dict()[name]), name
    assert again.losses == online.losses

    # a Reservoir (whose order depends on timing) serves every recorded sample, and only those
    torch.manual_seed(1)
    model = Seen()
    dm = OnlineDataModule(
        replay, replay.space, n_simulations=8, batch_size=8, buffer=Reservoir(32, seed=1)
    )
    quiet_trainer().fit(model, dm)
    rows = {tuple(r) for x, _ in model.batches for r in x.tolist()}
    assert rows == {tuple(r) for x, _ in online.batches for r in x.tolist()}


def test_replay_refuses_what_it_cannot_serve(tmp_path):
    path = tmp_path / "study.h5"
    quiet_trainer().fit(Seen(), study(str(path), n_simulations=3))
    replay = Replay(path)
    with pytest.raises(ValueError, match=r"at most replay\.n_runs"):
        OnlineDataModule(replay, replay.space, n_simulations=4)
    with pytest.raises(ValueError, match=r"space=replay\.space"):
        OnlineDataModule(replay, ParameterSpace([0, 0], [2, 1]), n_simulations=2)
    with pytest.raises(ValueError, match="no validation runs"):
        OnlineDataModule(replay, replay.space, n_simulations=2, val_parameters=2)
    with pytest.raises(ValueError, match="recorded parameters in order"):
        OnlineDataModule(replay, replay.space, n_simulations=2, sampler=Halton(seed=0))
    # as a plain solver: the recorded samples of those parameters
    theta = replay.index.runs["theta"][1]
    got = list(replay(theta))
    assert [x.tobytes() for x, _ in got] == [x.tobytes() for x, _ in Smooth(12)(theta)]


def test_recorded_dataset_for_offline_training(tmp_path):
    path = tmp_path / "study.h5"
    quiet_trainer().fit(Seen(), study(str(path), n_simulations=4))
    ds = RecordedDataset(path)
    mem = RecordedDataset(path, in_memory=True)
    assert len(ds) == len(mem) == 48 and len(ds.runs) == 4
    for i in (0, 13, 47, -1):
        assert all(torch.equal(a, b) for a, b in zip(ds[i], mem[i], strict=True))
    r = ds.runs[ds.run_of(13)]
    x13 = list(Smooth(12)(r["theta"]))[13 - 12 * ds.run_of(13)][0]
    assert ds[13][0].numpy().tobytes() == x13.tobytes()
    # shuffled, and split between two ranks by a DistributedSampler: every item exactly once
    loader = DataLoader(ds, batch_size=5, shuffle=True)
    assert sum(len(x) for x, _ in loader) == 48
    xs = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        xs += [x for x, _ in DataLoader(ds, batch_size=4, sampler=sampler)]
    got = sorted(map(tuple, torch.cat(xs).tolist()))
    assert got == sorted(map(tuple, torch.stack([mem[i][0] for i in range(48)]).tolist()))
    # worker processes (spawned: this process may have MPI up) open the file themselves
    loader = DataLoader(ds, batch_size=16, num_workers=2, multiprocessing_context="spawn")
    assert torch.equal(
        torch.cat([x for x, _ in loader]), torch.stack([mem[i][0] for i in range(48)])
    )


@pytest.mark.usefixtures("no_orphans")
def test_size_cap_stops_recording_and_training_goes_on(tmp_path, caplog):
    path = tmp_path / "study.h5"
    dm = study(Recording(path, max_bytes=32_000), n_simulations=30)
    quiet_trainer().fit(Seen(), dm)
    assert dm.stats["completed"] == 30  # training went on
    stats = dm.recording_stats
    assert "max_bytes=32000 reached" in stats["stopped"]
    assert 0 < stats["runs_in_file"] < 30 and path.stat().st_size <= 32_000
    assert "reached its size cap (max_bytes=32000" in caplog.text
    assert len(read_runs(path)) == stats["runs_in_file"]


@pytest.mark.usefixtures("no_orphans")
def test_an_existing_recording_is_never_mixed_into_a_new_study(tmp_path):
    path = tmp_path / "study.h5"
    quiet_trainer().fit(Seen(), study(str(path), n_simulations=2))
    with pytest.raises(FileExistsError, match="resume the study it records"):
        quiet_trainer().fit(Seen(), study(str(path), n_simulations=3))
    assert len(read_runs(path)) == 2
    dm = study(Recording(path, overwrite=True, compression="gzip"), n_simulations=3)
    quiet_trainer().fit(Seen(), dm)
    assert len(read_runs(path)) == 3
    with h5py.File(path) as f:
        assert f["fields/1"].compression == "gzip"


def test_bad_recording_arguments_are_refused(tmp_path):
    with pytest.raises(TypeError, match="record must be a file path or a Recording"):
        study(123)
    with pytest.raises(FileNotFoundError, match="does not exist; create it first"):
        Recording(tmp_path / "nowhere" / "study.h5")
    with pytest.raises(ValueError, match="compression"):
        Recording(tmp_path / "s.h5", compression="zstd")
    with pytest.raises(ValueError, match="gzip level"):
        Recording(tmp_path / "s.h5", compression_opts=4)


def test_without_h5py_recording_says_how_to_install_it(tmp_path):
    code = (
        "import sys; sys.modules['h5py'] = None\n"
        "import lightning_online.recording as r\n"  # the package imports without h5py
        "try:\n"
        f"    r.Recording({str(tmp_path / 's.h5')!r})\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "pip install 'lightning-online[record]'" in out.stdout, out.stderr


def _expected(sim_id: int):
    sys.path.insert(0, str(HERE / "scripts"))
    from record_writer_loop import expected

    return expected(sim_id)


def _check_file(path: Path) -> int:
    """Every committed run of the writer loop's file, bit for bit; how many."""
    from lightning_online.recording._h5 import open_read

    with open_read(path) as f:
        runs = f["runs"][: f["n_runs"][0]]
        for r in runs:
            rows = slice(r["start"], r["start"] + r["count"])
            x, y = _expected(int(r["sim_id"]))
            assert f["fields/0"][rows].tobytes() == x.tobytes()
            assert f["fields/1"][rows][:, 0].tobytes() == y.tobytes()
            assert f["sim_id"][rows].tolist() == [r["sim_id"]] * len(x)
    return len(runs)


@pytest.mark.timeout(240)
def test_kill_9_at_any_moment_of_writing_leaves_a_valid_file(tmp_path):
    script = HERE / "scripts" / "record_writer_loop.py"
    rng = random.Random(0)
    flagged = 0
    for i in range(6):
        path = tmp_path / f"w{i}.h5"
        p = subprocess.Popen(
            [sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True
        )
        assert p.stdout.readline().strip() == "GO"
        time.sleep(rng.uniform(0.0, 0.6))
        p.send_signal(signal.SIGKILL)
        p.wait(30)
        n = _check_file(path)  # opens whether or not the writer was in a commit
        assert n >= 1
        try:
            h5py.File(path, "r").close()
        except OSError as exc:  # killed inside a commit: HDF5's "open for write" flags
            assert "h5clear" in str(exc)
            flagged += 1
            assert repair(path)
            h5py.File(path, "r").close()  # plain h5py reads it now
        assert _check_file(path) == n
        # a resumed writer appends to it
        out = subprocess.run(
            [sys.executable, str(script), str(path), "--resume"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.stdout.strip() == "DONE", out.stderr[-3000:]
        assert _check_file(path) == n + 3
    print(f"{flagged} of 6 kills landed inside a commit")


def _run_recorded(tmp_path: Path, *flags: str, kill: bool) -> subprocess.Popen | None:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(HERE) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, str(HERE / "scripts" / "recorded_fit.py"), str(tmp_path), *flags]
    if not kill:
        out = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=200, start_new_session=True
        )
        assert out.returncode == 0, out.stderr[-4000:]
        return None
    p = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert p.stdout.readline().strip() == "READY"
        os.killpg(p.pid, signal.SIGKILL)  # the whole job at once, as a scheduler does
        p.wait(30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while solver_processes(os.environ[MARKER]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return p


def _check_study_file(path: Path) -> list[int]:
    from lightning_online.recording._h5 import open_read

    with open_read(path) as f:
        runs = f["runs"][: f["n_runs"][0]]
        for r in runs:
            rows = slice(r["start"], r["start"] + r["count"])
            want = list(Smooth(n_steps=10)(r["theta"]))
            assert f["fields/0"][rows].tobytes() == np.stack([a for a, _ in want]).tobytes()
            assert f["fields/1"][rows].tobytes() == np.stack([b for _, b in want]).tobytes()
        return runs


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("no_orphans")
@pytest.mark.parametrize("ddp", [False, True], ids=["one-rank", "ddp"])
def test_kill_9_of_a_recording_study_then_resume_appends(tmp_path, ddp):
    flags = ("--ddp",) if ddp else ()
    files = (
        [tmp_path / "study.rank0.h5", tmp_path / "study.rank1.h5"]
        if ddp
        else [tmp_path / "study.h5"]
    )
    _run_recorded(tmp_path, *flags, kill=True)
    before = {p: _check_study_file(p) for p in files}  # valid, every committed run intact
    assert sum(len(r) for r in before.values()) >= 4
    _run_recorded(tmp_path, *flags, "--resume", kill=False)
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["completed"] == 24
    done, sessions = [], set()
    for p in files:
        with h5py.File(p, "r") as f:  # closed cleanly: plain h5py
            assert f.attrs["world_size"] == (2 if ddp else 1)
        runs = _check_study_file(p)
        done += [tuple(r["theta"]) for r in runs if r["status"] == 1]
        sessions |= set(runs["session"].tolist())
    # every run of the study exactly once, over both sessions
    assert len(done) == 24 and len(set(done)) == 24
    assert sessions == {0, 1}
    ds = RecordedDataset(tmp_path / "study.h5")  # per-rank files found from the base path
    assert len(ds) == 240


@pytest.mark.timeout(240)
@pytest.mark.usefixtures("no_orphans")
def test_a_recipe_run_with_recording_on(tmp_path, monkeypatch):
    from test_cli import tiny_args

    from lightning_online.cli import OnlineCLI
    from lightning_online.solvers import Burgers1D

    monkeypatch.setattr(sys, "argv", ["lightning-online"])
    n = torch.get_num_threads()
    path = tmp_path / "burgers.h5"
    try:
        cli = OnlineCLI(args=["fit", *tiny_args("burgers1d", tmp_path), f"--data.record={path}"])
    finally:
        torch.set_num_threads(n)
    assert cli.datamodule.stats["completed"] == 4
    solver = Burgers1D(nx=32, n_steps=5, t_end=2.0)
    with h5py.File(path, "r") as f:
        runs = f["runs"][: f["n_runs"][0]]
        assert len(runs) == 4
        for r in runs:
            rows = slice(r["start"], r["start"] + r["count"])
            want = list(solver(r["theta"]))
            for k in range(int(f.attrs["n_fields"])):
                got = f[f"fields/{k}"][rows]
                assert got.tobytes() == np.stack([w[k] for w in want]).tobytes()
