"""ActiveSampling + Breed steer real solver runs toward what the network gets wrong."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from _models import Regressor, quiet_trainer
from _solvers import HardCorner, Smooth
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_online import (
    FIFO,
    ActiveSampling,
    Breed,
    Halton,
    OnlineDataModule,
    ParameterSpace,
    Uniform,
)

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("no_orphans")]


def run_study(sampler, callbacks=(), n_simulations=80, **trainer_kw):
    torch.manual_seed(0)
    dm = OnlineDataModule(
        HardCorner(),
        ParameterSpace([0, 0], [1, 1]),
        n_simulations=n_simulations,
        batch_size=16,
        n_workers=2,
        sampler=sampler,
        buffer=FIFO(48, watermark=16),
    )
    tr = quiet_trainer(callbacks, **{"accelerator": "cpu", "max_steps": 100_000, **trainer_kw})
    model = Regressor(3, 1, hidden=32, lr=3e-3)
    tr.fit(model, dm)
    return dm, tr


def second_half_share(dm) -> float:
    thetas = dm.launched_parameters
    return float(HardCorner.inside(thetas[len(thetas) // 2 :]).mean())


def test_breed_concentrates_runs_in_the_hard_subbox_uniform_does_not():
    volume = 0.25 * 0.4
    # A third of the runs keep exploring: every update drops parameters drawn but not yet
    # launched, so exploration must not hinge on one early quasi-random point.
    breed = Breed(
        sigma=0.05,
        start=0.3,
        end=0.7,
        breakpoint=3,
        statistic="loss",
        seed=0,
        non_breed=Halton(seed=2),  # even exploration finds the hard corner early
    )
    active = ActiveSampling(update_every_n_steps=2, window=20)
    dm, _ = run_study(breed, [active])
    assert active.updates >= 5 and breed.generation >= 5
    steered = second_half_share(dm)
    assert steered >= 2 * volume, steered
    dm_u, _ = run_study(Uniform(seed=1), [ActiveSampling(update_every_n_steps=2, window=20)])
    blind = second_half_share(dm_u)
    assert blind < 2 * volume, blind
    assert dm.stats["completed"] == dm_u.stats["completed"] == 80


class _Compare(Callback):
    def __init__(self, active):
        self.active, self.pairs = active, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.pairs.append((float(self.active.last_losses.mean()), float(outputs["loss"])))


def test_per_sample_losses_average_to_the_module_loss():
    active = ActiveSampling(update_every_n_steps=5, window=10)
    cmp = _Compare(active)
    dm = OnlineDataModule(
        Smooth(n_steps=10),
        ParameterSpace([0, 0], [1, 1]),
        n_simulations=10,
        batch_size=8,
        buffer=FIFO(40, 8),
    )
    pl.Trainer(
        callbacks=[active, cmp],
        max_steps=1000,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    ).fit(Regressor(3, 1), dm)
    assert len(cmp.pairs) >= 10
    a, b = np.array(cmp.pairs).T
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_checkpoint_resume_continues_the_distribution(tmp_path):
    breed = Breed(sigma=0.05, start=0.5, end=0.9, breakpoint=3, statistic="loss", seed=0)
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=6, save_top_k=-1)
    run_study(
        breed,
        [ActiveSampling(update_every_n_steps=2, window=10), ckpt],
        n_simulations=40,
        max_steps=12,
        enable_checkpointing=True,
    )
    path = tmp_path / "epoch=0-step=12.ckpt"
    assert path.exists(), list(tmp_path.iterdir())
    saved = torch.load(path, weights_only=False)
    own = next(v for k, v in saved["callbacks"].items() if k.startswith("ActiveSampling"))
    assert "sampler" not in own  # the sampler's state is the DataModule's, saved once
    state = saved["OnlineDataModule"]
    assert state["sampler"]["generation"] == breed.generation >= 3

    seen = {}

    class Probe(Callback):
        def on_train_start(self, trainer, pl_module):
            seen["generation"] = trainer.datamodule.sampler.generation
            seen["parents"] = trainer.datamodule.sampler.state_dict()["parents"]

    fresh = Breed(sigma=0.05, start=0.5, end=0.9, breakpoint=3, statistic="loss", seed=0)
    torch.manual_seed(0)
    dm = OnlineDataModule(
        HardCorner(),
        ParameterSpace([0, 0], [1, 1]),
        n_simulations=40,
        batch_size=16,
        sampler=fresh,
        buffer=FIFO(48, 16),
    )
    tr = pl.Trainer(
        callbacks=[ActiveSampling(update_every_n_steps=2, window=10), Probe()],
        max_steps=16,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    tr.fit(Regressor(3, 1, hidden=32, lr=3e-3), dm, ckpt_path=path)
    assert seen["generation"] == state["sampler"]["generation"]
    assert seen["parents"] == state["sampler"]["parents"]
    assert fresh.generation > seen["generation"]  # and it went on from there


def test_refuses_a_plain_datamodule_and_bad_arguments():
    with pytest.raises(ValueError, match="update_every_n_steps must be a positive integer"):
        ActiveSampling(update_every_n_steps=0)
    with pytest.raises(ValueError, match="window"):
        ActiveSampling(update_every_n_steps=10, window=5)
    from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel

    tr = pl.Trainer(
        callbacks=[ActiveSampling()],
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    with pytest.raises(TypeError, match="OnlineDataModule"):
        tr.fit(BoringModel(), BoringDataModule())


def test_ddp_two_ranks_identical_sampler_state_and_exact_losses(tmp_path):
    from test_data import run_ddp_script

    ranks = run_ddp_script(tmp_path, "--active")
    assert ranks[0]["updates"] == ranks[1]["updates"] >= 3
    assert ranks[0]["sampler"] == ranks[1]["sampler"]  # identical on every rank, no broadcast
    assert ranks[0]["sampler"]["generation"] >= 3
    assert ranks[0]["stats"]["completed"] == 24
    for r in ranks:  # each rank's per-sample losses average to its module loss, every step
        a, b = np.array(r["loss_pairs"]).T
        np.testing.assert_allclose(a, b, rtol=1e-5)
        # NCCL-safe: the package never used the Trainer's group (it would need CUDA tensors)
        assert r["world_collectives"] == [], r["world_collectives"]


class _TupleOut(Regressor):
    """forward returns (prediction, extra): the default pred_fn takes the first element."""

    def forward(self, x):
        return self.net(x), x.sum()

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x)[0], y)
        return loss


class _PerSample(Regressor):
    """training_step hands out its own per-sample loss (here: absolute error)."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        err = (self(x) - y).abs().mean(dim=1)
        return {"loss": err.mean(), "per_sample_loss": err}


@pytest.mark.parametrize("model_cls", [_TupleOut, _PerSample])
def test_tuple_outputs_and_per_sample_loss_from_training_step(model_cls):
    active = ActiveSampling(update_every_n_steps=3, window=6)
    cmp = _Compare(active)
    dm = OnlineDataModule(
        Smooth(n_steps=10),
        ParameterSpace([0, 0], [1, 1]),
        n_simulations=6,
        batch_size=8,
        buffer=FIFO(40, 8),
        sampler=Breed(seed=0),
    )
    pl.Trainer(
        callbacks=[active, cmp],
        max_steps=1000,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    ).fit(model_cls(3, 1), dm)
    a, b = np.array(cmp.pairs).T
    np.testing.assert_allclose(a, b, rtol=1e-5)
    assert active.updates >= 1 and dm.sampler.generation >= 1


def test_plot_of_runs_by_loss_goes_to_tensorboard(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    backend = matplotlib.get_backend()
    logger = TensorBoardLogger(tmp_path, name="steer")
    active = ActiveSampling(update_every_n_steps=2, window=4, plot_every_n_updates=1)
    dm = OnlineDataModule(
        Smooth(n_steps=10),
        ParameterSpace([0, 0], [1, 1]),
        n_simulations=6,
        batch_size=8,
        buffer=FIFO(40, 8),
        sampler=Breed(seed=0),
    )
    pl.Trainer(
        callbacks=[active],
        max_steps=1000,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        log_every_n_steps=1,
    ).fit(Regressor(3, 1), dm)
    acc = EventAccumulator(logger.log_dir)
    acc.Reload()
    assert "active/launched_parameters" in acc.Tags()["images"]
    assert "active/sim_loss_max" in acc.Tags()["scalars"]
    assert matplotlib.get_backend() == backend  # the plot left the global backend alone


class _Updates(Callback):
    """Records (global_step, updates) after every batch."""

    def __init__(self, active):
        self.active, self.seen = active, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append((trainer.global_step, self.active.updates))


def small_study(sampler=None, n_simulations=8):
    return OnlineDataModule(
        Smooth(n_steps=10),
        ParameterSpace([0, 0], [1, 1]),
        n_simulations=n_simulations,
        batch_size=8,
        buffer=FIFO(40, 8),
        sampler=sampler or Breed(seed=0, statistic="loss"),
    )


def cpu_trainer(callbacks, **kw):
    return quiet_trainer(callbacks, accelerator="cpu", max_steps=1000, **kw)


def test_one_update_per_optimizer_step_with_gradient_accumulation():
    active = ActiveSampling(update_every_n_steps=2, window=4)
    rec = _Updates(active)
    cpu_trainer([active, rec], accumulate_grad_batches=3).fit(Regressor(3, 1), small_study())
    steps = [s for s, _ in rec.seen]
    assert len(steps) > 3 * max(steps) - 3  # several batches per optimizer step
    # after each batch: exactly one update per even optimizer step reached so far
    assert all(u == s // 2 for s, u in rec.seen), rec.seen
    assert active.updates == max(steps) // 2 >= 2


def test_bf16_mixed_losses_are_float32_and_match_the_module():
    """The per-sample losses ActiveSampling records average to the loss the module itself
    computed on that batch (in float32 from its bf16 output), not a bf16-rounded copy."""
    active = ActiveSampling(update_every_n_steps=2, window=4)
    seen = []

    class Check(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses = active.last_losses
            if losses is not None and (not seen or losses is not seen[-1][0]):
                seen.append((losses, pl_module.losses[-1]))

    model = Regressor(3, 1)
    cpu_trainer([active, Check()], precision="bf16-mixed").fit(model, small_study())
    assert len(seen) >= 5 and all(losses.dtype == torch.float32 for losses, _ in seen)
    assert active.updates >= 1
    for losses, module_loss in seen:
        assert losses.shape == (8,) and torch.isfinite(losses).all()
        assert float(losses.mean()) == pytest.approx(module_loss, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize(
    "loss_fn",
    [torch.nn.MSELoss(), torch.nn.functional.mse_loss, torch.nn.L1Loss(reduction="sum")],
    ids=["MSELoss()", "F.mse_loss", "L1Loss(sum)"],
)
def test_the_loss_a_lightning_user_already_has_works(loss_fn):
    reduction = getattr(loss_fn, "reduction", None)
    active = ActiveSampling(loss_fn=loss_fn, update_every_n_steps=2, window=4)
    cpu_trainer([active]).fit(Regressor(3, 1), small_study())
    assert active.updates >= 1 and active.last_losses.shape == (8,)
    assert torch.isfinite(active.last_losses).all() and (active.last_losses >= 0).all()
    assert getattr(loss_fn, "reduction", None) == reduction  # the user's loss is not changed


def test_a_loss_that_reduces_to_a_scalar_is_refused_with_what_to_pass():
    def scalar(pred, target):
        return ((pred - target) ** 2).mean()

    active = ActiveSampling(loss_fn=scalar, update_every_n_steps=2, window=4)
    with pytest.raises(TypeError, match=r"one value per sample.*per_sample_loss"):
        cpu_trainer([active]).fit(Regressor(3, 1), small_study())


def test_a_compiled_module_steers_through_per_sample_loss():
    """The compile-safe path: training_step returns per_sample_loss; no forward hook needed."""
    active = ActiveSampling(update_every_n_steps=2, window=4)
    model = _PerSample(3, 1)
    model.compile(backend="eager")  # nn.Module.compile: torch.compile in place, no C compiler
    cpu_trainer([active]).fit(model, small_study())
    assert active.updates >= 1 and active.last_losses.shape == (8,)
