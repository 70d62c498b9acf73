"""Nothing of the user's process is changed behind their back: the warning filters, the
environment (``PATH``, the hydra variables under SLURM), the open-file limit, torch's threads, and
the Trainer the DataModule is given (``limit_val_batches``, ``callbacks``, ``should_stop``).
Real solver processes throughout; the environment tests run a fresh training process, because
MPI starts its process manager once per process."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from _models import Regressor, quiet_trainer
from _solvers import Smooth
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch.callbacks import Callback

from lightning_online import FIFO, ExternalSolver, OnlineDataModule, ParameterSpace

HERE = Path(__file__).parent
ROOT = HERE.parent
SPACE = ParameterSpace([0.0, 0.0], [1.0, 1.0], names=["a", "b"])
pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("no_orphans")]


def make_dm(**kw) -> OnlineDataModule:
    args = dict(n_simulations=4, n_workers=2, batch_size=4, buffer=FIFO(capacity=64, watermark=4))
    args.update(kw)
    return OnlineDataModule(Smooth(n_steps=6), SPACE, **args)


# ------------------------------------------------------------------ warning filters
def test_a_user_filter_identical_to_the_packages_survives_a_fit():
    pattern = r"The '(train|val|test|predict)_dataloader' does not have many workers"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", pattern, PossibleUserWarning)
        mine = warnings.filters[0]
        before = list(warnings.filters)
        quiet_trainer(accelerator="cpu", devices=1).fit(Regressor(3, 1), make_dm())
        assert mine in warnings.filters, "the user's own filter was removed"
        assert warnings.filters == before


def test_no_few_workers_warning_and_no_filter_installed(monkeypatch):
    """Lightning warns about a DataLoader with few workers where cores are plenty: this
    DataModule's loaders give it no reason to (whatever the machine), with no filter."""
    import lightning.pytorch.trainer.connectors.data_connector as dc

    monkeypatch.setattr(dc, "suggested_max_num_workers", lambda devices: 8)  # a big machine
    seen_filters = []

    class Look(Callback):
        def on_train_start(self, trainer, pl_module):
            seen_filters.append(list(warnings.filters))

    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        before = list(warnings.filters)
        trainer = quiet_trainer([Look()], accelerator="cpu", devices=1)
        trainer.fit(Regressor(3, 1), make_dm(val_parameters=2))
    texts = [str(w.message) for w in got]
    assert not [t for t in texts if "does not have many workers" in t], texts
    assert not [t for t in texts if "val_dataloader` but have no" in t], texts
    assert seen_filters == [before]


def test_no_val_dataloader_warning_for_a_module_without_validation_step():
    """Without validation runs there is no val_dataloader for Lightning to warn about."""

    class NoValidation(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.lin(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        quiet_trainer(accelerator="cpu", devices=1).fit(NoValidation(), make_dm())
    texts = [str(w.message) for w in got]
    assert not [t for t in texts if "val_dataloader` but have no" in t], texts


# ------------------------------------------------------------------ the environment
_FIT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import lightning.pytorch as pl
    import torch
    from lightning_online import FIFO, OnlineDataModule, ParameterSpace

    def solver(theta):
        import os
        import numpy as np
        flags = [os.environ.get(k, "") for k in ("HYDRA_LAUNCHER", "HYDRA_RMK")]
        code = float(flags == ["fork", "user"])
        for k in range(4):
            yield np.array([code, k], np.float32), np.array([0.0], np.float32)

    class M(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)
            self.codes = set()
        def training_step(self, batch, i):
            x, y = batch
            self.codes.update(x[:, 0].tolist())
            return torch.nn.functional.mse_loss(self.lin(x), y)
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class Look(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            during.update(os.environ)
            import psutil
            for p in psutil.Process().children(recursive=True):
                if "mpiexec" in " ".join(p.cmdline()[:1]):  # MPI's process manager
                    e = p.environ()
                    pm.append([e.get("HYDRA_LAUNCHER"), e.get("HYDRA_RMK"),
                               e.get("PATH", "").split(os.pathsep)[0] == os.path.dirname(sys.executable)])

    before, during, pm = dict(os.environ), {}, []
    dm = OnlineDataModule(solver, ParameterSpace([0.0], [1.0]), n_simulations=4, n_workers=2,
                          batch_size=4, buffer=FIFO(capacity=64, watermark=4))
    m = M()
    pl.Trainer(max_steps=1000, logger=False, enable_checkpointing=False, callbacks=[Look()],
               enable_progress_bar=False, enable_model_summary=False).fit(m, dm)
    after = dict(os.environ)
    diff = lambda a: sorted(k for k in set(before) | set(a) if before.get(k) != a.get(k))
    print("RESULT", json.dumps({"during": diff(during), "after": diff(after),
                                "pm": pm, "completed": dm.stats["completed"]}))
    """
)


def _fit_in_a_fresh_process(tmp_path: Path, env: dict[str, str]) -> dict:
    script = tmp_path / "fit.py"
    script.write_text(_FIT)
    out = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    assert out.returncode == 0 and lines, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


def _bare_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "HYDRA_"))}
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = os.pathsep.join(["/usr/bin", "/bin"])  # the environment's mpiexec not on it
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def test_path_is_unchanged_after_a_fit(tmp_path):
    result = _fit_in_a_fresh_process(tmp_path, _bare_env())
    assert result["completed"] == 4
    assert result["pm"] == [[None, None, True]], "MPI's process manager did not get the PATH"
    assert result["during"] == [] and result["after"] == []


def test_hydra_variables_reach_the_process_manager_only(tmp_path, monkeypatch):
    """Under SLURM (no srun here: hydra would fail to start the workers through it), the
    process manager gets HYDRA_LAUNCHER=fork, HYDRA_RMK=user; the training process does not."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("HYDRA_LAUNCHER", raising=False)
    monkeypatch.delenv("HYDRA_RMK", raising=False)
    env = _bare_env()
    env["SLURM_JOB_ID"] = os.environ["SLURM_JOB_ID"]
    result = _fit_in_a_fresh_process(tmp_path, env)
    assert result["completed"] == 4
    assert result["pm"] == [["fork", "user", True]], "the process manager did not get them"
    assert result["during"] == [] and result["after"] == []


# ------------------------------------------------------------------ the open-file limit
def test_open_file_limit_after_a_fit_with_external_programs_is_the_one_before():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = 64  # fewer than the runs in flight may need: the hub raises it while it runs
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        program = str(HERE / "programs" / "lo_ext_client.py")
        solver = ExternalSolver([sys.executable, program, "--steps", "4"], fields=["x", "y"])
        dm = OnlineDataModule(
            solver, SPACE, n_simulations=4, n_workers=2, batch_size=4,
            buffer=FIFO(capacity=64, watermark=4),
        )  # fmt: skip
        quiet_trainer(accelerator="cpu", devices=1).fit(Regressor(3, 4), dm)
        assert dm.stats["completed"] == 4
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (low, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ------------------------------------------------------------------ the Trainer
class _Look(Callback):
    """What the Trainer reads during fit: at its start, after every batch, after validation."""

    def __init__(self) -> None:
        self.seen: list[tuple] = []
        self.at_end: bool | None = None

    def _look(self, trainer):
        self.seen.append((trainer.limit_val_batches, list(trainer.callbacks), trainer.should_stop))

    def on_train_start(self, trainer, pl_module):
        self._look(trainer)

    def on_train_batch_end(self, trainer, *args):
        self._look(trainer)

    def on_validation_end(self, trainer, pl_module):
        self._look(trainer)

    def on_train_end(self, trainer, pl_module):
        self.at_end = trainer.should_stop


def _fit_and_look(val):
    look = _Look()
    trainer = quiet_trainer(
        [look], accelerator="cpu", devices=1, val_check_interval=2,
        check_val_every_n_epoch=None, limit_val_batches=0.5,
    )  # fmt: skip
    callbacks = list(trainer.callbacks)
    dm = make_dm(val_parameters=val)
    trainer.fit(Regressor(3, 1), dm)  # ends by itself when the budget is done
    assert dm.stats["completed"] == 4 and trainer.global_step < 1000
    assert len(look.seen) > 2
    return trainer, dm, look, callbacks


@pytest.mark.parametrize("val", [None, 2])
def test_limit_val_batches_and_should_stop_are_what_the_user_set(val):
    """``should_stop`` is Lightning's only supported way to end fit from outside its loop: it is
    set once the study has ended, which Lightning learns while it prefetches past the last batch
    (so the last batch and the final validation see it, as after EarlyStopping), and put back."""
    trainer, dm, look, _ = _fit_and_look(val)
    assert all(limit == 0.5 for limit, _, _ in look.seen)
    stops = [stop for _, _, stop in look.seen]
    assert stops == sorted(stops) and stops.count(True) <= 2, stops  # only at the very end
    assert look.at_end is True
    assert trainer.limit_val_batches == 0.5 and trainer.should_stop is False
    if val is not None:
        assert "val_sim_loss_mean" in trainer.callback_metrics
        assert dm.val_report is not None and np.isfinite(dm.val_report["loss"]).any()


def test_the_callbacks_are_what_the_user_set_during_fit():
    trainer, _, look, callbacks = _fit_and_look(2)
    assert trainer.callbacks == callbacks
    for _limit, cbs, _stop in look.seen:
        assert cbs == callbacks


# ------------------------------------------------------------------ the CLI
def test_the_cli_leaves_torch_threads_as_it_found_them(tmp_path, monkeypatch):
    from lightning_online.cli import OnlineCLI

    monkeypatch.setattr(sys, "argv", ["lightning-online"])
    n = torch.get_num_threads()
    inside = []

    class Look(Callback):
        def on_train_start(self, trainer, pl_module):
            inside.append(torch.get_num_threads())

    try:
        torch.set_num_threads(2)
        OnlineCLI(
            model_class=Regressor,
            subclass_mode_model=False,
            trainer_defaults={"callbacks": [Look()]},
            args=[
                "fit",
                "--model.d_in=3",
                "--model.d_out=1",
                "--data.solver=_solvers.Smooth",
                "--data.space=lightning_online.ParameterSpace",
                "--data.space.init_args.low=[0.0, 0.0]",
                "--data.space.init_args.high=[1.0, 1.0]",
                "--data.n_simulations=4",
                "--data.batch_size=4",
                "--data.n_workers=2",
                "--torch_num_threads=1",
                "--trainer.max_steps=200",
                "--trainer.logger=false",
                "--trainer.enable_checkpointing=false",
                "--trainer.enable_progress_bar=false",
                "--trainer.enable_model_summary=false",
                f"--trainer.default_root_dir={tmp_path}",
            ],
        )
        assert inside == [1], "the CLI's thread count was not in force during its fit"
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(n)
