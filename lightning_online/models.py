"""The surrogate models of the recipes: plain LightningModules, nothing online about them.

They train from an ordinary ``(x, y)`` DataLoader as well as from an ``OnlineDataModule``:

* :class:`FieldMLP`: ``(parameters, t) -> field``, the fully connected surrogate of Melissa's
  ``heat-pde`` use case (recipe ``heat2d``).
* :class:`FNO1D`: a small Fourier neural operator in pure torch (recipe ``burgers1d``).
* :class:`CNN1D`: a periodic 1-D convolutional network (recipe ``allen_cahn1d``).

The two 1-D models are autoregressive: they map ``x = [u(t_k), log10(parameter)]`` of shape
``(B, 2, nx)`` to ``u(t_{k+1})`` of shape ``(B, 1, nx)`` as a residual update
``u(t_k) + f(x)``; :meth:`Autoregressive1D.rollout` applies them repeatedly.

Every model logs ``train_loss`` (on the progress bar) and ``val_loss``/``test_loss`` (mean squared
error) and uses Adam with a configurable learning rate.

Where code runs: the training thread of each rank, as any LightningModule.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_online._util.checks import check_int

__all__ = ["CNN1D", "FNO1D", "Autoregressive1D", "FieldMLP", "SpectralConv1d"]

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


def _activation(name: str) -> type[nn.Module]:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}"
        ) from None


class _Regression(pl.LightningModule):
    """Mean squared error on ``(x, y)`` batches, Adam, the usual logging."""

    lr: float
    lr_decay_steps: int = 0

    def _learning_rate(self, lr: float, lr_decay_steps: int) -> None:
        """Adam's learning rate and, if ``lr_decay_steps > 0``, its cosine decay to ``lr / 100``
        over that many optimizer steps (every model's ``lr`` and ``lr_decay_steps``)."""
        self.lr = float(lr)
        self.lr_decay_steps = check_int(lr_decay_steps, "lr_decay_steps", 0)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y), prog_bar=True, sync_dist=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test_loss", nn.functional.mse_loss(self(x), y), sync_dist=True)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.parameters(), lr=self.lr)
        if not self.lr_decay_steps:
            return opt
        total = self.lr_decay_steps

        def cosine(step: int) -> float:  # lr -> lr / 100 over `total` steps, then flat
            return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class FieldMLP(_Regression):
    """Fully connected surrogate ``(parameters, t) -> field`` (Melissa's heat-pde network).

    Args:
        n_inputs: input features (solver parameters plus time; 6 for ``Heat2D``).
        field_shape: shape of the predicted field; the output is flat, of the product's size
            (``Heat2D`` yields its ``(ny, nx)`` field flattened).
        hidden: sizes of the hidden layers.
        activation: ``relu``, ``gelu``, ``tanh`` or ``silu``.
        lr: Adam learning rate.
        lr_decay_steps: if > 0, the learning rate falls along a cosine from ``lr`` to
            ``lr / 100`` over this many optimizer steps (then stays there); 0 keeps it constant.
    """

    def __init__(
        self,
        n_inputs: int = 6,
        field_shape: Sequence[int] = (16, 16),
        hidden: Sequence[int] = (256, 256),
        activation: str = "relu",
        lr: float = 1e-3,
        lr_decay_steps: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        act = _activation(activation)
        sizes = [int(n_inputs), *(int(h) for h in hidden)]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), act()]
        self.n_outputs = math.prod(int(s) for s in field_shape)
        layers.append(nn.Linear(sizes[-1], self.n_outputs))
        self.net = nn.Sequential(*layers)
        self._learning_rate(lr, lr_decay_steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if batch_idx == 0:
            self._check_field(batch[-1])
        return super().training_step(batch, batch_idx)

    def _check_field(self, y: torch.Tensor) -> None:
        n = math.prod(y.shape[1:])
        if n != self.n_outputs:
            raise ValueError(
                f"FieldMLP predicts {self.n_outputs} values (field_shape="
                f"{list(self.hparams['field_shape'])}) but the targets have {n} "
                f"(shape {tuple(y.shape[1:])}); set model.init_args.field_shape to the solver's "
                "grid, e.g. [ny, nx] for Heat2D"
            )


class Autoregressive1D(_Regression):
    """Base of the 1-D autoregressive models: ``u(t_{k+1}) = u(t_k) + f(x)``.

    ``x`` is ``(B, in_channels, nx)`` with ``u(t_k)`` in channel 0; subclasses implement
    :meth:`increment` (``f``), of shape ``(B, 1, nx)``.
    """

    def increment(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] + self.increment(x)

    @torch.no_grad()
    def rollout(self, x0: torch.Tensor, n_steps: int) -> torch.Tensor:
        """Apply the model ``n_steps`` times from ``x0`` ``(B, C, nx)``, keeping channels 1.. fixed.

        Returns ``(B, n_steps, nx)``: the predicted ``u(t_1) .. u(t_{n_steps})``.
        """
        x, out = x0, []
        for _ in range(n_steps):
            u = self(x)
            out.append(u[:, 0])
            x = torch.cat([u, x[:, 1:]], dim=1)
        return torch.stack(out, dim=1)


class SpectralConv1d(nn.Module):
    """``u -> irfft(W * rfft(u))`` on the lowest ``modes`` Fourier modes (FNO's Fourier layer)."""

    def __init__(self, channels: int, modes: int) -> None:
        super().__init__()
        self.modes = int(modes)
        scale = 1.0 / (channels * channels)
        self.weight = nn.Parameter(scale * torch.randn(channels, channels, self.modes, 2))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        n = u.shape[-1]
        m = min(self.modes, n // 2 + 1)
        coef = torch.fft.rfft(u, dim=-1)
        w = torch.view_as_complex(self.weight[..., :m, :])
        out = torch.zeros_like(coef)
        out[..., :m] = torch.einsum("bim,iom->bom", coef[..., :m], w)
        return torch.fft.irfft(out, n=n, dim=-1)


class FNO1D(Autoregressive1D):
    """A small 1-D Fourier neural operator (Li et al. 2021) in pure torch, residual in time.

    Lift (1x1 conv) -> ``n_layers`` x [spectral conv + 1x1 conv, GELU] -> project (two 1x1
    convs). Periodic by construction; works on any grid size (modes above ``nx / 2`` are
    dropped), so the same weights evaluate on coarser or finer grids.

    Args:
        in_channels: input channels (``u`` and the log-parameter channel: 2).
        width: channels of the hidden layers.
        modes: Fourier modes kept by each spectral convolution.
        n_layers: Fourier layers.
        lr: Adam learning rate.
        lr_decay_steps: if > 0, the learning rate falls along a cosine from ``lr`` to
            ``lr / 100`` over this many optimizer steps (then stays there); 0 keeps it constant.
    """

    def __init__(
        self,
        in_channels: int = 2,
        width: int = 32,
        modes: int = 16,
        n_layers: int = 4,
        lr: float = 1e-3,
        lr_decay_steps: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lift = nn.Conv1d(in_channels + 1, width, 1)  # + the grid coordinate
        self.spectral = nn.ModuleList(SpectralConv1d(width, modes) for _ in range(n_layers))
        self.pointwise = nn.ModuleList(nn.Conv1d(width, width, 1) for _ in range(n_layers))
        self.project = nn.Sequential(nn.Conv1d(width, 2 * width, 1), nn.GELU())
        self.head = nn.Conv1d(2 * width, 1, 1)
        nn.init.zeros_(self.head.weight)  # start from the identity map u(t_k) -> u(t_k)
        assert self.head.bias is not None  # Conv1d's default bias=True
        nn.init.zeros_(self.head.bias)
        self._learning_rate(lr, lr_decay_steps)

    def increment(self, x: torch.Tensor) -> torch.Tensor:
        b, _, n = x.shape
        grid = torch.linspace(0.0, 1.0, n + 1, device=x.device, dtype=x.dtype)[:n]
        h = self.lift(torch.cat([x, grid.expand(b, 1, n)], dim=1))
        for i, (spec, point) in enumerate(zip(self.spectral, self.pointwise, strict=True)):
            h = spec(h) + point(h)
            if i < len(self.spectral) - 1:
                h = nn.functional.gelu(h)
        return self.head(self.project(h))


class CNN1D(Autoregressive1D):
    """A periodic 1-D convolutional network, residual in time.

    ``n_layers`` convolutions of ``kernel_size`` with circular padding and GELU; the last one
    maps to one channel, initialised to zero (the model starts as the identity map).

    Args:
        in_channels: input channels (``u`` and the log-parameter channel: 2).
        width: channels of the hidden layers.
        kernel_size: odd kernel size.
        n_layers: convolutions (>= 2).
        lr: Adam learning rate.
        lr_decay_steps: if > 0, the learning rate falls along a cosine from ``lr`` to
            ``lr / 100`` over this many optimizer steps (then stays there); 0 keeps it constant.
    """

    def __init__(
        self,
        in_channels: int = 2,
        width: int = 32,
        kernel_size: int = 5,
        n_layers: int = 4,
        lr: float = 1e-3,
        lr_decay_steps: int = 0,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1 or n_layers < 2:
            raise ValueError("CNN1D needs an odd kernel_size and n_layers >= 2")
        self.save_hyperparameters()
        pad = kernel_size // 2
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(n_layers - 1):
            layers += [nn.Conv1d(c, width, kernel_size, padding=pad, padding_mode="circular")]
            layers.append(nn.GELU())
            c = width
        head = nn.Conv1d(c, 1, kernel_size, padding=pad, padding_mode="circular")
        nn.init.zeros_(head.weight)
        assert head.bias is not None  # Conv1d's default bias=True
        nn.init.zeros_(head.bias)
        self.net = nn.Sequential(*layers, head)
        self._learning_rate(lr, lr_decay_steps)

    def increment(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
