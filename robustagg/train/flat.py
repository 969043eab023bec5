"""A model whose parameters and gradients live in two flat buffers.

Every trainable parameter of the module becomes a view into one ``(d,)`` tensor
(:attr:`FlatModel.param`), and every ``.grad`` a view into another (:attr:`FlatModel.grad`).
Loading a model vector is then one ``copy_``, and a backward pass writes the gradient
directly into the flat buffer (autograd accumulates into an existing ``.grad`` in place), so
the trainers never loop over parameters on the hot path.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class FlatModel:
    """Wrap ``module`` so its trainable parameters share one flat buffer.

    Parameters
    ----------
    module : torch.nn.Module
        Modified in place: its parameters' ``.data`` and ``.grad`` become views into the flat
        buffers. Do not move it to another device or wrap it in an optimizer afterwards.
    device : torch.device or str, optional
        Where the module (and the buffers) live.

    Notes
    -----
    Buffers (e.g. BatchNorm running statistics) are not part of the flat vector: they are
    shared by every worker that uses this object and are updated by their forward passes.
    """

    def __init__(self, module: nn.Module, device: Optional[torch.device] = None) -> None:
        if device is not None:
            module.to(device)
        self.module = module
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        dtype = params[0].dtype
        if any(p.dtype != dtype for p in params):
            raise TypeError("all trainable parameters must share one dtype")
        self.param = torch.cat([p.detach().reshape(-1) for p in params])
        self.grad = torch.zeros_like(self.param)
        offset = 0
        for p in params:
            k = p.numel()
            p.data = self.param[offset:offset + k].view_as(p)
            p.grad = self.grad[offset:offset + k].view_as(p)
            offset += k
        self._params = params

    @property
    def dim(self) -> int:
        """Number of trainable parameters ``d``."""
        return self.param.numel()

    @property
    def device(self) -> torch.device:
        return self.param.device

    def load(self, x: torch.Tensor) -> None:
        """Set the model's parameters to the vector ``x`` (one copy)."""
        self.param.copy_(x)

    def vector(self) -> torch.Tensor:
        """A copy of the current parameter vector."""
        return self.param.detach().clone()

    def gradient(self, xb: torch.Tensor, yb: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        """Forward and backward on one batch: :attr:`grad` holds the gradient; returns the loss
        (a detached 0-d tensor)."""
        self.grad.zero_()
        if self._params[0].grad is None:  # a caller's zero_grad() (set_to_none) detached the views
            self._rebind_grads()
        self.module.train()
        loss = loss_fn(self.module(xb), yb)
        loss.backward()
        return loss.detach()

    def _rebind_grads(self) -> None:
        offset = 0
        for p in self._params:
            k = p.numel()
            p.grad = self.grad[offset:offset + k].view_as(p)
            offset += k

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, X: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                 batch_size: int = 1000, classification: bool = True) -> Tuple[float, float]:
        """``(mean loss, accuracy)`` of the parameters ``x`` on ``(X, y)``, in eval mode
        (dropout off); accuracy is NaN for regression."""
        self.load(x)
        self.module.eval()
        total, correct, count = 0.0, 0, 0
        for start in range(0, len(X), batch_size):
            xb = X[start:start + batch_size].to(self.device)
            yb = y[start:start + batch_size].to(self.device)
            out = self.module(xb)
            total += float(loss_fn(out, yb)) * len(xb)
            if classification:
                correct += int((out.argmax(dim=1) == yb).sum())
            count += len(xb)
        self.module.train()
        if count == 0:
            return math.nan, math.nan
        return total / count, (correct / count if classification else math.nan)
