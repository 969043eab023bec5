"""Partitions of a training set across workers: iid, Dirichlet(alpha) label skew, label shards.

Every function takes the training labels (array, tensor or :class:`Dataset`) and the number
of workers, and returns one sorted ``int64`` index array per worker; the arrays are
disjoint and cover every sample. The same seed gives the same partition.
"""

from __future__ import annotations

from typing import Any, List

import numpy as np

from robustagg._registry import Registry
from robustagg._validation import check_float, check_int


def as_labels(labels: Any) -> np.ndarray:
    """Labels (a tensor, an array, a list, or an object with ``y_train`` such as a
    :class:`~robustagg.data.Dataset`, whose training labels are taken) as a 1-d numpy array."""
    labels = getattr(labels, "y_train", labels)
    if hasattr(labels, "detach"):  # a torch tensor (torch itself is not needed here)
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    return labels


PARTITIONS = Registry("partition")


def _finish(parts: List[np.ndarray]) -> List[np.ndarray]:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


@PARTITIONS.register("iid", "uniform")
def iid(labels: Any, n_workers: int, seed: int = 0) -> List[np.ndarray]:
    """A seeded random permutation cut into ``n_workers`` parts whose sizes differ by at most 1.

    ``labels`` may also be an ``int``, the number of samples.
    """
    n = int(labels) if isinstance(labels, (int, np.integer)) else len(as_labels(labels))
    n_workers = check_int(n_workers, "n_workers", minimum=1, maximum=n)
    perm = np.random.default_rng(check_int(seed, "seed")).permutation(n)
    return _finish(np.array_split(perm, n_workers))


@PARTITIONS.register("dirichlet", "non-iid")
def dirichlet(
    labels: Any,
    n_workers: int,
    alpha: float = 0.5,
    seed: int = 0,
    min_size: int = 10,
    max_tries: int = 100,
) -> List[np.ndarray]:
    r"""Label-skewed split: each class is divided among workers by Dirichlet(alpha) proportions.

    For every class :math:`c` (in increasing order), draw :math:`p_c \sim
    \mathrm{Dir}(\alpha \mathbf 1_{n})` and give worker :math:`i` a share :math:`p_{c,i}` of a
    seeded permutation of that class's samples (cut points ``floor(cumsum(p_c) * n_c)``).
    Small ``alpha`` concentrates each class on few workers (strong label skew); large
    ``alpha`` approaches an iid split.

    Minimum size guarantee (every worker gets at least ``min_size`` samples): the whole draw
    is repeated, up to ``max_tries`` times, until every worker has ``min_size`` samples (the
    rejection loop of the reference implementations). If no draw succeeds (tiny ``alpha``,
    many workers), the last draw is repaired: while some worker has fewer than
    ``min_size`` samples, the currently largest worker gives it seeded-random samples of its
    own, never dropping below ``min_size`` itself. This keeps the partition disjoint and
    complete and changes the label skew as little as possible. Requires
    ``len(labels) >= n_workers * min_size``.

    Parameters
    ----------
    labels : array-like of int
    n_workers : int
    alpha : float
        Concentration, > 0.
    seed : int
    min_size : int
        Samples every worker is guaranteed (default 10, as in Li et al. 2022's code).
    max_tries : int
        Number of redraws before the repair step.

    References
    ----------
    Hsu, T.-M. H., Qi, H. and Brown, M. "Measuring the Effects of Non-Identical Data
    Distribution for Federated Visual Classification", arXiv:1909.06335, 2019.
    Li, Q., Diao, Y., Chen, Q. and He, B. "Federated Learning on Non-IID Data Silos: An
    Experimental Study", ICDE 2022 (the per-class split with a minimum size).
    """
    y = as_labels(labels)
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"dirichlet partitions need integer class labels, got dtype {y.dtype}")
    n = len(y)
    n_workers = check_int(n_workers, "n_workers", minimum=1)
    alpha = check_float(alpha, "alpha", minimum=0.0, strict_min=True)
    min_size = check_int(min_size, "min_size", minimum=0)
    max_tries = check_int(max_tries, "max_tries", minimum=1)
    if n < n_workers * min_size:
        raise ValueError(f"{n} samples cannot give {n_workers} workers min_size={min_size} each")
    rng = np.random.default_rng(check_int(seed, "seed"))
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    for _ in range(max_tries):
        parts: List[List[np.ndarray]] = [[] for _ in range(n_workers)]
        for idx in by_class:
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(n_workers, alpha))
            cuts = np.floor(np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for w, chunk in enumerate(np.split(idx, cuts)):
                parts[w].append(chunk)
        merged = [np.concatenate(p) for p in parts]
        if min(len(m) for m in merged) >= min_size:
            return _finish(merged)
    # repair the last draw: the largest worker donates random samples to each small one
    while True:
        sizes = np.array([len(m) for m in merged])
        small = int(np.argmin(sizes))
        if sizes[small] >= min_size:
            return _finish(merged)
        donor = int(np.argmax(sizes))
        give = min(min_size - sizes[small], sizes[donor] - min_size)
        pick = rng.choice(sizes[donor], size=give, replace=False)
        keep = np.ones(sizes[donor], dtype=bool)
        keep[pick] = False
        merged[small] = np.concatenate([merged[small], merged[donor][pick]])
        merged[donor] = merged[donor][keep]


@PARTITIONS.register("shards", "pathological")
def shards(labels: Any, n_workers: int, shards_per_worker: int = 2, seed: int = 0) -> List[np.ndarray]:
    """Sort by label, cut into ``n_workers * shards_per_worker`` shards, deal them at random.

    Ties in the sort are broken by a seeded permutation, shards have sizes that differ by at
    most 1, and each worker receives ``shards_per_worker`` shards chosen by a seeded
    permutation; with 2 shards per worker most workers hold 2 classes. Float labels
    (regression targets) are sorted too, giving workers target ranges.

    References
    ----------
    McMahan, B., Moore, E., Ramage, D., Hampson, S. and Agüera y Arcas, B.
    "Communication-Efficient Learning of Deep Networks from Decentralized Data", AISTATS 2017
    (the "pathological non-IID" MNIST split: 200 shards of 300, 2 per client).
    """
    y = as_labels(labels)
    n_workers = check_int(n_workers, "n_workers", minimum=1)
    shards_per_worker = check_int(shards_per_worker, "shards_per_worker", minimum=1)
    n_shards = n_workers * shards_per_worker
    if n_shards > len(y):
        raise ValueError(f"{len(y)} samples cannot form {n_shards} shards ({n_workers} x {shards_per_worker})")
    rng = np.random.default_rng(check_int(seed, "seed"))
    perm = rng.permutation(len(y))
    order = perm[np.argsort(y[perm], kind="stable")]
    pieces = np.array_split(order, n_shards)
    deal = rng.permutation(n_shards).reshape(n_workers, shards_per_worker)
    return _finish([np.concatenate([pieces[s] for s in row]) for row in deal])


def partition(scheme: str, labels: Any, n_workers: int, **params: Any) -> List[np.ndarray]:
    """Partition by name: ``partition("dirichlet", y, 10, alpha=0.1, seed=1)``.

    ``scheme`` is one of :func:`available_partitions` (``iid``, ``dirichlet``, ``shards``);
    unknown names or parameters raise errors that list what exists.
    """
    return PARTITIONS.get(scheme, labels=labels, n_workers=n_workers, **params)


def available_partitions() -> List[str]:
    return PARTITIONS.available()


def label_distribution(labels: Any, parts: List[np.ndarray], num_classes: int = 0) -> np.ndarray:
    """``(n_workers, num_classes)`` matrix of per-worker class counts (to inspect a split)."""
    y = as_labels(labels).astype(np.int64)
    k = max(int(num_classes), int(y.max()) + 1 if len(y) else 0)
    return np.stack([np.bincount(y[p], minlength=k) for p in parts])
