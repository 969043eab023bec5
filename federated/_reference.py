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
