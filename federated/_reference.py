"""FLTrust's server-side update for :class:`federated.RobustStrategy`: what ``reference_fn``
returns, checked and flattened like the clients' updates."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array

from federated._updates import Layout


def _array(value: Any) -> np.ndarray:
    if isinstance(value, Array):
        return value.numpy()
    return np.asarray(value.detach().cpu() if torch.is_tensor(value) else value)


def reference_vector(value: Any, layout: Layout) -> torch.Tensor:
    """``value`` (a ``(d,)`` vector, or a mapping ``{key: array}`` over the float arrays of
    ``layout``, an ``ArrayRecord`` included) as one finite ``(d,)`` tensor of ``layout.dtype``.

    Raises ``ValueError`` naming the array that is missing or has another shape, or when the
    vector has another length or holds NaN/Inf.
    """
    if isinstance(value, Mapping):
        missing = [k for k in layout.float_keys if k not in value]
        if missing:
            raise ValueError(f"the update has no array {missing[0]!r}")
        parts = [_array(value[k]) for k in layout.float_keys]
        for key, part in zip(layout.float_keys, parts):
            if part.shape != layout.shapes[key]:
                raise ValueError(f"array {key!r} has shape {part.shape}, the model's has {layout.shapes[key]}")
        row = np.concatenate([p.reshape(-1) for p in parts])
    else:
        row = _array(value)
        if row.shape != (layout.d,):
            raise ValueError(f"got shape {row.shape}, expected ({layout.d},): the float arrays flattened")
    row = np.ascontiguousarray(row, dtype=layout.dtype)
    if not np.isfinite(row).all():
        raise ValueError("the update holds NaN/Inf")
    return torch.from_numpy(row)


class RootReference:
    """``reference_fn`` of a simulation (:func:`federated.simulate`) whose configuration sets
    ``aggregator.root_samples``: the server trains the round's global model on its root samples
    exactly as a node does (:func:`federated.client.local_train`: ``steps`` SGD steps of
    ``batch_size``, step ``lr``, seeded by ``(seed, "root", round)``) and returns the change of
    every floating-point array, divided by ``steps`` when ``per_step`` (the anarchic modes,
    whose updates are per local step).
    """

    def __init__(self, model_fn: Any, X: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float, batch_size: int,
                 seed: int, replacement: bool = False, per_step: bool = False) -> None:
        self.model_fn, self.X, self.y = model_fn, X, y
        self.steps, self.lr, self.batch_size, self.seed = steps, lr, batch_size, seed
        self.replacement, self.per_step = replacement, per_step

    def __call__(self, arrays: Any, server_round: int) -> dict:
        from federated.client import local_train
        from robustagg.train.components import derive_seed

        state = arrays.to_torch_state_dict()
        trained, _ = local_train(self.model_fn, state, self.X, self.y, steps=self.steps, lr=self.lr,
                                 batch_size=self.batch_size, momentum=0.0, replacement=self.replacement,
                                 seed=derive_seed(self.seed, "root", int(server_round)))
        scale = 1.0 / self.steps if self.per_step else 1.0
        return {k: ((trained[k] - v) * scale).numpy() for k, v in state.items() if v.is_floating_point()}
