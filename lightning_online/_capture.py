"""Capture a LightningModule's prediction for the current batch without a second forward pass.

A forward hook is armed at the start of a batch and keeps only the first output produced after
that: under DDP, Lightning's wrapper redirects ``training_step`` through the module's ``forward``,
so the hook may fire twice per step, and the first call is always the outer, batched one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["OutputCapture", "default_pred", "default_target", "per_sample_mse"]


def default_pred(output: Any) -> torch.Tensor:
    """The prediction in a module's output: the tensor itself, the first of a tuple, or ``pred``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if isinstance(output, Mapping):
        for key in ("pred", "prediction", "y_hat", "output", "out"):
            if isinstance(output.get(key), torch.Tensor):
                return output[key]
    raise TypeError(
        f"cannot find the prediction in a forward output of type {type(output).__name__}; "
        "pass pred_fn=... to say how to extract it"
    )


def default_target(batch: Any) -> torch.Tensor:
    """The target of a batch: the last element of ``(x, y)``, or ``y``/``target`` of a dict."""
    if isinstance(batch, tuple | list):
        return batch[-1]
    if isinstance(batch, Mapping):
        for key in ("y", "target", "targets", "label"):
            if key in batch:
                return batch[key]
    raise TypeError(
        f"cannot find the target in a batch of type {type(batch).__name__}; "
        "pass target_fn=... to say how to extract it"
    )


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(pred, target, reduction="none")


def reduce_per_sample(loss: torch.Tensor) -> torch.Tensor:
    """(B, ...) elementwise loss -> (B,) mean per sample."""
    return loss.reshape(loss.shape[0], -1).mean(dim=1) if loss.ndim > 1 else loss


class OutputCapture:
    """Forward hook on one module that keeps the first output after :meth:`arm`."""

    def __init__(self) -> None:
        self._handle: Any = None
        self._module: nn.Module | None = None
        self._armed = False
        self.output: Any = None

    def attach(self, module: nn.Module) -> None:
        if self._module is module:
            return
        self.detach()
        self._module = module
        self._handle = module.register_forward_hook(self._hook)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle, self._module = None, None

    def arm(self) -> None:
        self._armed, self.output = True, None

    def take(self) -> Any:
        out, self.output, self._armed = self.output, None, False
        return out

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._armed:
            self.output, self._armed = output, False


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
