"""numpy/torch plumbing shared by the poisoning functions.

Datasets are poisoned in numpy (on the CPU) and handed back in the caller's type, dtype and
device; nothing is modified in place.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Tuple

import numpy as np
import torch

from robustagg._validation import check_float, check_int


def to_numpy(a: Any, name: str) -> Tuple[np.ndarray, Callable[[np.ndarray], Any]]:
    """A numpy *copy* of ``a`` and a function returning arrays in ``a``'s type, dtype and device."""
    if isinstance(a, torch.Tensor):
        device, dtype = a.device, a.dtype
        arr = a.detach().cpu().numpy().copy()

        def back(x: np.ndarray) -> Any:
            return torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=dtype)

        return arr, back
    if isinstance(a, np.ndarray):
        dtype = a.dtype
        return a.copy(), lambda x: np.ascontiguousarray(x).astype(dtype, copy=False)
    raise TypeError(f"{name} must be a numpy array or a torch.Tensor, got {type(a).__name__}")


def copy_samples(X: Any) -> Any:
    """An unchanged copy of ``X`` in its own type (a torch tensor stays on its device)."""
    if isinstance(X, torch.Tensor):
        return X.detach().clone()
    if isinstance(X, np.ndarray):
        return X.copy()
    raise TypeError(f"X must be a numpy array or a torch.Tensor, got {type(X).__name__}")


def index_like(idx: np.ndarray, like: Any) -> Any:
    """Indices as int64 in ``like``'s framework (torch tensor on its device, or numpy)."""
    idx = np.asarray(idx, dtype=np.int64)
    if isinstance(like, torch.Tensor):
        return torch.from_numpy(idx).to(like.device)
    return idx


def check_labels(y: np.ndarray, n: int) -> np.ndarray:
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"y must be a 1-D array of {n} labels (one per sample), got shape {y.shape}")
    if y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0):
            return y.astype(np.int64)
        raise TypeError(f"labels must be integers, got dtype {y.dtype}")
    return y


def count(fraction: float, population: int) -> int:
    r"""The documented number of poisoned samples: :math:`k = \lfloor \mathrm{fraction} \cdot N \rfloor`.

    A relative tolerance of 1e-9 absorbs float rounding (``0.29 * 100`` gives 29, not 28)."""
    fraction = check_float(fraction, "fraction", minimum=0.0, maximum=1.0)
    return min(population, int(math.floor(fraction * population * (1 + 1e-9) + 1e-9)))


def choose(candidates: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``k`` of ``candidates`` uniformly without replacement (numpy ``default_rng(seed)``), sorted."""
    seed = check_int(seed, "seed", minimum=0)
    rng = np.random.default_rng(seed)
    picked = rng.choice(candidates.shape[0], size=k, replace=False) if k else np.empty(0, np.int64)
    return np.sort(candidates[picked]).astype(np.int64)


def as_images(X: np.ndarray, image_shape: Optional[Sequence[int]]) -> Tuple[np.ndarray, Tuple[int, ...]]:
    """View ``X`` as ``(N, C, H, W)``; accepted layouts ``(N, H, W)``, ``(N, C, H, W)``, or flat
    ``(N, D)`` with ``image_shape = (H, W)`` or ``(C, H, W)``. Returns the view and ``X``'s shape."""
    shape = X.shape
    if image_shape is not None:
        image_shape = tuple(check_int(s, "image_shape entry", minimum=1) for s in image_shape)
        if len(image_shape) not in (2, 3):
            raise ValueError(f"image_shape must be (H, W) or (C, H, W), got {image_shape}")
        if int(np.prod(image_shape)) != int(np.prod(shape[1:])):
            raise ValueError(f"image_shape {image_shape} does not match samples of shape {shape[1:]}")
        full = image_shape if len(image_shape) == 3 else (1,) + image_shape
        return X.reshape((shape[0],) + full), shape
    if X.ndim == 3:
        return X[:, None], shape
    if X.ndim == 4:
        return X, shape
    if X.ndim == 2:
        raise ValueError("flat (N, D) samples need image_shape=(H, W) or (C, H, W)")
    raise ValueError(f"X must be (N, H, W), (N, C, H, W) or flat (N, D); got shape {shape}")


def cast_into(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast float results back to ``dtype`` (integer images are rounded and clipped to its range)."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)
