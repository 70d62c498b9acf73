"""Plain LightningModules, written for an ordinary (x, y) DataLoader: nothing online about them."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn


class Regressor(pl.LightningModule):
    def __init__(self, d_in: int, d_out: int, hidden: int = 64, lr: float = 1e-3) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))
        self.lr = lr
        self.losses: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.losses.append(loss.item())
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def quiet_trainer(callbacks=(), *, max_steps: int = 10_000, **kw) -> pl.Trainer:
    """A Trainer for tests: no logger, checkpoints, progress bar or model summary unless ``kw``
    asks for them; ``max_steps`` only as a safety net (an online fit ends with its study)."""
    quiet = dict(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return pl.Trainer(callbacks=list(callbacks), max_steps=max_steps, **{**quiet, **kw})


def fit_study(solver, *, callbacks=(), model=None, **opts):
    """A study of a test solver with 2 parameters on the unit square, fitted by a quiet
    Trainer: the set-up the fault, hostile and soak tests share (2 workers, batches of 4, a
    FIFO of 32); ``opts`` override the DataModule's arguments. Returns (dm, trainer)."""
    from lightning_online import FIFO, OnlineDataModule, ParameterSpace

    kw = dict(batch_size=4, n_workers=2, buffer=FIFO(32, watermark=4))
    kw.update(opts)
    dm = OnlineDataModule(solver, ParameterSpace([0.0, 0.0], [1.0, 1.0]), **kw)
    trainer = quiet_trainer(callbacks)
    trainer.fit(model if model is not None else Regressor(2, 1), dm)
    return dm, trainer
