"""Label-flipping data poisoning (untargeted and targeted)."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from robustagg._validation import check_int
from robustagg.poisoning._arrays import check_labels, choose, copy_samples, count, index_like, to_numpy


def _label_map(y: np.ndarray, num_classes: Optional[int],
               mapping: Union[None, Mapping[int, int], Sequence[int]]) -> np.ndarray:
    """The flipped label of every sample."""
    if isinstance(mapping, Mapping):
        mapping = {check_int(k, "mapping key"): check_int(v, "mapping value") for k, v in mapping.items()}
    if num_classes is None:  # the classes the labels and the mapping name
        C = int(y.max()) + 1 if y.size else 0
        if isinstance(mapping, Mapping) and mapping:
            C = max(C, 1 + max(max(src, dst) for src, dst in mapping.items()))
        elif mapping is not None and not isinstance(mapping, Mapping):
            C = max(C, len(mapping))
    else:
        C = check_int(num_classes, "num_classes", minimum=1)
    if y.size and (y.min() < 0 or y.max() >= C):
        raise ValueError(f"labels must lie in [0, {C}) (num_classes={C}); got range [{y.min()}, {y.max()}]")
    if mapping is None:
        return C - 1 - y
    if isinstance(mapping, Mapping):
        table = np.arange(C, dtype=np.int64)
        for src, dst in mapping.items():
            if not (0 <= src < C and 0 <= dst < C):
                raise ValueError(f"mapping {src} -> {dst} leaves the classes [0, {C})")
            table[src] = dst
    else:
        table = np.asarray(mapping)
        if table.shape != (C,) or table.dtype.kind not in "iu":
            raise ValueError(f"mapping must be a dict or a sequence of {C} integer labels, got {mapping!r}")
        if table.min() < 0 or table.max() >= C:
            raise ValueError(f"mapping values must lie in [0, {C})")
    return table[y]


def label_flip(X: Any, y: Any, *, fraction: float = 1.0, num_classes: Optional[int] = None,
               mapping: Union[None, Mapping[int, int], Sequence[int]] = None,
               seed: int = 0) -> Tuple[Any, Any, Any]:
    r"""Label flipping: relabel a random share of the samples.

    .. math:: y \mapsto C - 1 - y \quad\text{(default)}, \qquad\text{or}\qquad y \mapsto \pi(y)

    with ``C = num_classes`` (when not given: one more than the largest label in ``y`` or in
    ``mapping``, or the length of a sequence ``mapping``) and :math:`\pi` a
    ``mapping`` (a dict ``{source: target}``, unlisted labels unchanged, or a length-``C``
    sequence). The candidates are the ``N_c`` samples whose label the map changes (all of
    them for ``C - 1 - y`` with even ``C``); exactly :math:`k = \lfloor \mathrm{fraction}
    \cdot N_c \rfloor` of them, drawn uniformly with ``numpy.random.default_rng(seed)``, are
    flipped. With ``fraction = 1`` and ``C = 10`` this is MoNNA's "LF" attack (labels
    :math:`y \to 9 - y`): the trainer computes a Byzantine worker's update honestly on its
    flipped data.

    Parameters
    ----------
    X : numpy array or torch tensor, shape (N, ...)
        Samples (returned as an unchanged copy).
    y : numpy array or torch tensor, shape (N,)
        Integer labels.

    Returns
    -------
    X_poisoned, y_poisoned, poisoned_indices
        Copies in the input's type; ``poisoned_indices`` is sorted int64 (numpy, or a torch
        tensor when ``y`` is one). The inputs are not modified.

    References
    ----------
    Biggio, Nelson, Laskov, "Poisoning Attacks against Support Vector Machines", ICML 2012;
    Allen-Zhu, Ebrahimian, Li, Alistarh, ICLR 2021 (arXiv 2020);
    Farhadkhani et al., "Robust Collaborative Learning with Linear Gradient Overhead", ICML 2023.
    """
    Xc = copy_samples(X)
    yc, back_y = to_numpy(y, "y")
    yc = check_labels(yc, Xc.shape[0])
    flipped = _label_map(yc, num_classes, mapping)
    candidates = np.flatnonzero(flipped != yc)
    idx = choose(candidates, count(fraction, candidates.size), seed)
    out = yc.copy()
    out[idx] = flipped[idx]
    return Xc, back_y(out), index_like(idx, y)


def targeted_label_flip(X: Any, y: Any, *, source: int, target: int, fraction: float = 1.0,
                        seed: int = 0) -> Tuple[Any, Any, Any]:
    r"""Targeted label flipping: relabel samples of class ``source`` as ``target``.

    .. math:: y_i \leftarrow \mathrm{target} \quad \text{for } i \in S \subseteq \{i : y_i = \mathrm{source}\},
              \quad |S| = \lfloor \mathrm{fraction} \cdot |\{i : y_i = \mathrm{source}\}| \rfloor

    ``S`` is drawn uniformly with ``numpy.random.default_rng(seed)``. Returns
    ``(X copy, y_poisoned, sorted indices of S)`` in the input's type; inputs are untouched.

    References
    ----------
    Tolpegin, Truex, Gursoy, Liu, "Data Poisoning Attacks Against Federated Learning
    Systems", ESORICS 2020.
    """
    source = check_int(source, "source", minimum=0)
    target = check_int(target, "target", minimum=0)
    if source == target:
        raise ValueError(f"source and target must differ (both {source})")
    Xc = copy_samples(X)
    yc, back_y = to_numpy(y, "y")
    yc = check_labels(yc, Xc.shape[0])
    candidates = np.flatnonzero(yc == source)
    idx = choose(candidates, count(fraction, candidates.size), seed)
    out = yc.copy()
    out[idx] = target
    return Xc, back_y(out), index_like(idx, y)

