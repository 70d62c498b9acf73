"""Capture a LightningModule's prediction for the current batch without a second forward pass.

A forward hook is armed at the start of a batch and keeps only the first output produced after
that: under DDP, Lightning's wrapper redirects ``training_step`` through the module's ``forward``,
so the hook may fire twice per step, and the first call is always the outer, batched one.

Where code runs: in Lightning's hooks on the training thread of each rank (the validation report
and the ActiveSampling callback arm and read it).
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, cast

import torch
from torch import nn

__all__ = [
    "OutputCapture",
    "default_pred",
    "default_target",
    "elementwise",
    "per_sample_loss",
    "per_sample_mse",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


def elementwise(loss_fn: LossFn | None) -> LossFn:
    """The loss a Lightning user already has, made elementwise: a torch loss module
    (``nn.MSELoss()``) gets ``reduction="none"``, a function with a ``reduction`` argument
    (``F.mse_loss``) is called with ``reduction="none"``; anything else is taken as elementwise
    (checked at its first call, :func:`reduce_per_sample`). ``None``: squared error."""
    if loss_fn is None:
        return per_sample_mse
    if not callable(loss_fn):
        raise TypeError(f"the loss must be callable (pred, target) -> tensor, got {loss_fn!r}")
    if isinstance(loss_fn, nn.Module) and isinstance(getattr(loss_fn, "reduction", None), str):
        unreduced = copy.copy(loss_fn)
        setattr(unreduced, "reduction", "none")  # torch's losses keep it as a plain str  # noqa: B010
        return unreduced
    try:
        params = inspect.signature(loss_fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: take it as it is
        return loss_fn
    if "reduction" in params:
        return functools.partial(cast(Callable[..., torch.Tensor], loss_fn), reduction="none")
    return loss_fn


def per_sample_loss(loss_fn: LossFn, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) loss of each sample of a batch: ``loss_fn`` (elementwise) on the detached prediction,
    in float32 when the forward ran in half precision (``bf16-mixed``/``16-mixed``)."""
    pred = pred.detach()
    if pred.dtype in (torch.float16, torch.bfloat16):
        pred, target = pred.float(), target.float()
    return reduce_per_sample(loss_fn(pred, target), len(target))


def reduce_per_sample(loss: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """(B, ...) elementwise loss -> (B,) mean per sample, in float32 or wider (a bf16 loss
    averaged in bf16 loses most of its digits). A scalar is refused with what to pass."""
    if loss.ndim == 0 or (batch_size is not None and loss.shape[0] != batch_size):
        raise TypeError(
            f"the loss gave a tensor of shape {tuple(loss.shape)}, not one value per sample "
            f"(batch of {batch_size}): pass an elementwise loss (e.g. nn.MSELoss(), "
            "F.mse_loss: they are called with reduction='none'; or a function of (pred, target) "
            "that does not reduce), or return 'per_sample_loss' from training_step"
        )
    if loss.dtype in (torch.float16, torch.bfloat16):
        loss = loss.float()
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
