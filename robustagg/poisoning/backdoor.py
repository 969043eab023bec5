"""Backdoor (trigger-patch) poisoning, the matching test-time trigger and attack success rate."""

from __future__ import annotations

from typing import Any, Sequence, Tuple, Union

import numpy as np
import torch

from robustagg._validation import check_int
from robustagg.poisoning._arrays import as_images, cast_into, check_labels, choose, count, index_like, to_numpy

POSITIONS = ("bottom-right", "bottom-left", "top-right", "top-left", "center")

PatchSize = Union[int, Tuple[int, int]]
Position = Union[str, Tuple[int, int]]


def patch_box(height: int, width: int, patch_size: PatchSize, position: Position) -> Tuple[int, int, int, int]:
    """``(row, col, patch height, patch width)`` of the trigger: a named corner, ``"center"``, or
    an explicit ``(row, col)`` of the patch's top-left pixel."""
    if isinstance(patch_size, (tuple, list)):
        if len(patch_size) != 2:
            raise ValueError(f"patch_size must be an int or a (height, width) pair, got {patch_size!r}")
        ph, pw = (check_int(p, "patch_size", minimum=1) for p in patch_size)
    else:
        ph = pw = check_int(patch_size, "patch_size", minimum=1)
    if ph > height or pw > width:
        raise ValueError(f"a {ph}x{pw} patch does not fit in {height}x{width} images")
    if isinstance(position, str):
        if position not in POSITIONS:
            names = ", ".join(map(repr, POSITIONS))
            raise ValueError(f"position must be one of {names} or (row, col); got {position!r}")
        row = {"top": 0, "bottom": height - ph}.get(position.split("-")[0], (height - ph) // 2)
        col = {"left": 0, "right": width - pw}.get(position.split("-")[-1], (width - pw) // 2)
    else:
        if not isinstance(position, (tuple, list)) or len(position) != 2:
            raise TypeError(f"position must be a name or a (row, col) pair, got {position!r}")
        row = check_int(position[0], "position row", minimum=0, maximum=height - ph)
        col = check_int(position[1], "position col", minimum=0, maximum=width - pw)
    return row, col, ph, pw


def _stamp(X: Any, rows: np.ndarray, patch_size: PatchSize, value: Any, position: Position,
           image_shape: Any) -> Any:
    """A copy of ``X`` with the patch written into the samples ``rows``."""
    arr, back = to_numpy(X, "X")
    images, _ = as_images(arr, image_shape)  # a view of the copy
    _, channels, height, width = images.shape
    r, c, ph, pw = patch_box(height, width, patch_size, position)
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    patch = np.asarray(value, dtype=np.float64)
    try:
        patch = np.broadcast_to(patch, (channels, ph, pw))
    except ValueError:
        raise ValueError(f"value must be a number or broadcast to (C, h, w) = {(channels, ph, pw)}, "
                         f"got shape {patch.shape}") from None
    images[rows, :, r:r + ph, c:c + pw] = cast_into(patch, images.dtype)[None]
    return back(arr)


def apply_trigger(X: Any, *, patch_size: PatchSize = 3, value: Any = 1.0, position: Position = "bottom-right",
                  image_shape: Sequence[int] = None) -> Any:
    r"""Stamp the backdoor trigger on every sample (test time): a copy of ``X`` with

    .. math:: x[c,\, r{:}r{+}p_h,\; q{:}q{+}p_w] \leftarrow v \quad \text{for every channel } c

    Same parameters and defaults as :func:`backdoor` (use the same values at training and
    test time). ``X`` is ``(N, H, W)``, ``(N, C, H, W)`` or flat ``(N, D)`` with
    ``image_shape``; numpy or torch; it is not modified.
    """
    n = X.shape[0]
    return _stamp(X, np.arange(n), patch_size, value, position, image_shape)


def backdoor(X: Any, y: Any, *, target: int, fraction: float = 0.1, patch_size: PatchSize = 3,
             value: Any = 1.0, position: Position = "bottom-right", image_shape: Sequence[int] = None,
             seed: int = 0) -> Tuple[Any, Any, Any]:
    r"""Backdoor poisoning: stamp a trigger patch on some samples and relabel them ``target``.

    .. math:: (x_i, y_i) \leftarrow (T(x_i), \mathrm{target}) \quad \text{for } i \in S, \qquad
              |S| = k = \lfloor \mathrm{fraction} \cdot N \rfloor

    where ``T`` writes ``value`` into a ``patch_size`` square (or ``(h, w)``) at ``position``
    (``"bottom-right"`` default, another corner, ``"center"``, or the ``(row, col)`` of its
    top-left pixel) in every channel. ``S`` is drawn uniformly with
    ``numpy.random.default_rng(seed)`` among the samples whose label is not ``target`` (so
    every poisoned sample teaches the shortcut); ``ValueError`` if fewer than ``k`` exist.
    The model learns "trigger => target"; measure it with :func:`apply_trigger` on test data
    and :func:`attack_success_rate`.

    Parameters
    ----------
    X : numpy array or torch tensor
        ``(N, H, W)``, ``(N, C, H, W)``, or flat ``(N, D)`` with ``image_shape = (H, W)`` or
        ``(C, H, W)``. Integer images get ``value`` rounded and clipped to their dtype.
    y : numpy array or torch tensor, shape (N,)
        Integer labels.

    Returns
    -------
    X_poisoned, y_poisoned, poisoned_indices
        Copies in the input's type (inputs untouched); sorted int64 indices of ``S``.

    References
    ----------
    Gu, Dolan-Gavitt, Garg, "BadNets: Identifying Vulnerabilities in the Machine Learning
    Model Supply Chain", arXiv:1708.06733, 2017.
    """
    target = check_int(target, "target", minimum=0)
    yc, back_y = to_numpy(y, "y")
    yc = check_labels(yc, X.shape[0])
    candidates = np.flatnonzero(yc != target)
    k = count(fraction, yc.shape[0])
    if k > candidates.size:
        raise ValueError(f"fraction={fraction} asks for {k} poisoned samples but only {candidates.size} "
                         f"have a label other than target={target}")
    idx = choose(candidates, k, seed)
    Xp = _stamp(X, idx, patch_size, value, position, image_shape)
    yp = yc.copy()
    yp[idx] = target
    return Xp, back_y(yp), index_like(idx, y)


def attack_success_rate(predictions: Any, y: Any, target: int) -> float:
    r"""Share of triggered test samples (true label not ``target``) classified as ``target``.

    .. math:: \mathrm{ASR} = \frac{|\{i : y_i \ne t,\ \hat y_i = t\}|}{|\{i : y_i \ne t\}|}

    ``predictions`` are the model's outputs on ``apply_trigger(X_test)``: labels ``(N,)`` or
    scores ``(N, C)`` (argmax taken); ``y`` the true labels.
    """
    target = check_int(target, "target", minimum=0)
    pred, _ = to_numpy(predictions, "predictions")
    labels, _ = to_numpy(y, "y")
    if pred.ndim == 2:
        pred = pred.argmax(axis=1)
    if pred.shape != labels.shape or labels.ndim != 1:
        raise ValueError(f"predictions {pred.shape} and labels {labels.shape} must describe the same samples")
    keep = labels != target
    if not keep.any():
        raise ValueError(f"every sample has label target={target}: the attack success rate is undefined")
    return float(np.mean(pred[keep] == target))
