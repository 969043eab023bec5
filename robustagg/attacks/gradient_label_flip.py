"""Gradient-level label flipping: the Byzantine workers send the gradient of the loss on flipped labels.

The data-level attack (:func:`robustagg.poisoning.label_flip`) relabels a worker's data and lets
the trainer compute its update. ByzFL and ByzPy also define the attack on gradients: the
Byzantine vector is the gradient of the training loss at the current model on a batch whose
labels are mapped :math:`y \\mapsto C - 1 - y`. It needs the model and a batch, so it is not in
the model-free registry of :func:`robustagg.attacks.get`; call it directly:

>>> import torch
>>> from robustagg.attacks.gradient_label_flip import GradientLabelFlip
>>> model = torch.nn.Linear(4, 3)
>>> attack = GradientLabelFlip(model, torch.randn(8, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), num_classes=3)
>>> attack(torch.randn(5, 15), f=2).shape
torch.Size([2, 15])
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from robustagg._validation import check_int
from robustagg.attacks.base import Attack


def flipped_gradient(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     loss: Optional[Callable[..., torch.Tensor]] = None) -> torch.Tensor:
    r"""The flattened gradient of ``loss(model(inputs), C - 1 - labels)`` with respect to the
    model's parameters (in ``model.parameters()`` order; the model's own ``.grad`` is untouched)."""
    num_classes = check_int(num_classes, "num_classes", minimum=2)
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.dim() != 1:
        raise TypeError("labels must be a 1-D integer tensor")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in 0 .. {num_classes - 1} (num_classes={num_classes})")
    loss = torch.nn.functional.cross_entropy if loss is None else loss
    params = [p for p in model.parameters() if p.requires_grad]
    value = loss(model(inputs), num_classes - 1 - labels)
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])


class GradientLabelFlip(Attack):
    """Every Byzantine worker sends :func:`flipped_gradient` of ``model`` on ``(inputs, labels)``.

    Parameters
    ----------
    model, inputs, labels, num_classes, loss
        As for :func:`flipped_gradient`; :meth:`set_batch` replaces the batch between rounds.
    """

    name = "gradient-label-flip"

    def __init__(self, model: torch.nn.Module, inputs: Any, labels: Any, num_classes: int,
                 loss: Optional[Callable[..., torch.Tensor]] = None) -> None:
        super().__init__()
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model, self.num_classes, self.loss = model, check_int(num_classes, "num_classes", minimum=2), loss
        self.set_batch(inputs, labels)

    def set_batch(self, inputs: Any, labels: Any) -> None:
        """Use this batch from the next call on."""
        self.inputs, self.labels = torch.as_tensor(inputs), torch.as_tensor(labels)

    def _attack(self, H, f, aggregator, generator):
        g = flipped_gradient(self.model, self.inputs, self.labels, self.num_classes, self.loss)
        if g.numel() != H.shape[1]:
            raise ValueError(f"gradient-label-flip: the model has {g.numel()} parameters, updates have {H.shape[1]}")
        return g.detach().to(dtype=H.dtype, device=H.device).expand(f, -1).clone()
