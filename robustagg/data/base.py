"""The :class:`Dataset` container, the dataset registry and the seeded train/test split."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from robustagg._registry import Registry
from robustagg._validation import check_choice, check_int
from robustagg.data.partition import as_labels, partition  # noqa: F401  (as_labels re-exported)

DATASETS = Registry("dataset")

TASKS = ("classification", "regression")


@dataclass(repr=False)
class Dataset:
    """Train and test tensors of one dataset, with what a model needs to know about them.

    Attributes
    ----------
    name : str
        Registry name (``"digits"``, ``"mnist-5k"``, ...).
    X_train, X_test : torch.Tensor
        ``float32`` inputs of shape ``(n, *input_shape)``: images are ``(n, C, H, W)``,
        vectors ``(n, d)``.
    y_train, y_test : torch.Tensor
        ``int64`` class labels of shape ``(n,)`` for classification; ``float32`` targets of
        shape ``(n, 1)`` for regression (so ``nn.MSELoss`` needs no reshaping).
    num_classes : int or None
        Number of classes; ``None`` for regression.
    input_shape : tuple of int
        Shape of one input, e.g. ``(1, 28, 28)``.
    task : {"classification", "regression"}
    info : dict
        Provenance: the source, the split seed and sizes, generator configurations.

    Examples
    --------
    >>> from robustagg import data, models
    >>> ds = data.load("digits")
    >>> ds
    Dataset('digits', train=1437, test=360, input_shape=(1, 8, 8), num_classes=10)
    >>> net = models.build("mlp", input_shape=ds.input_shape, num_classes=ds.num_outputs)
    """

    name: str
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: Optional[int]
    input_shape: Tuple[int, ...]
    task: str = "classification"
    info: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice(self.task, "task", TASKS)
        self.input_shape = tuple(int(s) for s in self.input_shape)
        for split in ("train", "test"):
            X, y = getattr(self, f"X_{split}"), getattr(self, f"y_{split}")
            if tuple(X.shape[1:]) != self.input_shape:
                raise ValueError(f"X_{split} has shape {tuple(X.shape)}, expected (n, *{self.input_shape})")
            if len(X) != len(y):
                raise ValueError(f"X_{split} has {len(X)} rows but y_{split} has {len(y)}")

    @property
    def num_outputs(self) -> int:
        """Output units a model needs: ``num_classes``, or the target width for regression."""
        if self.task == "classification":
            return int(self.num_classes)  # type: ignore[arg-type]
        return int(self.y_train.shape[1]) if self.y_train.dim() > 1 else 1

    @property
    def train_size(self) -> int:
        return len(self.y_train)

    @property
    def test_size(self) -> int:
        return len(self.y_test)

    def partition(self, scheme: str, n_workers: int, **params: Any) -> List[np.ndarray]:
        """Split the training set across ``n_workers``; see :func:`robustagg.data.partition`."""
        return partition(scheme, self.y_train, n_workers, **params)

    def __repr__(self) -> str:
        extra = f"num_classes={self.num_classes}" if self.task == "classification" else "task='regression'"
        return (
            f"Dataset({self.name!r}, train={self.train_size}, test={self.test_size}, "
            f"input_shape={self.input_shape}, {extra})"
        )


def load(name: str, **params: Any) -> Dataset:
    """Build the dataset registered as ``name``.

    Offline datasets: ``digits``, ``mnist-5k``, ``mnist1d``, ``synthetic``. Real loaders that
    read (and, with ``download=True``, fetch) the official files: ``mnist``,
    ``fashion-mnist``, ``cifar10``. Unknown names or parameters raise errors listing what
    exists.

    >>> from robustagg import data
    >>> data.load("mnist-5k").X_train.shape
    torch.Size([4000, 1, 28, 28])
    """
    return DATASETS.get(name, **params)


def available() -> List[str]:
    """Names of every registered dataset."""
    return DATASETS.available()


def default_root() -> Path:
    """The download cache: ``$ROBUSTAGG_DATA`` if set, else ``~/.cache/robustagg/data``.

    ``$XDG_CACHE_HOME`` replaces ``~/.cache`` when it is set.
    """
    env = os.environ.get("ROBUSTAGG_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "robustagg" / "data"


def resolve_test_size(test_size: Union[int, float], n: int, name: str = "test_size") -> int:
    """``test_size`` as a number of test samples out of ``n``, read the same way by every dataset.

    An integer is a count (``1 <= test_size <= n - 1``); a float is a fraction of ``n`` in
    ``(0, 1)``, rounded to the nearest count and kept within ``1 .. n - 1`` (as scikit-learn's
    ``train_test_split`` reads it).

    >>> resolve_test_size(360, 1797), resolve_test_size(0.2, 1797), resolve_test_size(0.2, 1000)
    (360, 359, 200)
    """
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a count (int) or a fraction (float in (0, 1)), got {test_size!r}")
    if isinstance(test_size, (int, np.integer)):
        return check_int(test_size, name, minimum=1, maximum=n - 1)
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"{name} = {test_size!r}: a float is a fraction of the {n} samples and must lie in "
                         "(0, 1); give a number of samples as an integer")
    return min(max(int(round(test_size * n)), 1), n - 1)


def stratified_split(y: np.ndarray, n_test: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of ``len(y)`` indices into ``(train, test)``.

    Class ``k`` with ``c_k`` samples gives ``floor(c_k * n_test / n)`` test samples; the
    ``n_test`` minus their sum left over go, one each, to the classes with the largest
    fractional parts (ties: smaller class). Within a class the test samples are the first of a
    seeded permutation. Both returned index arrays are in a seeded random order (so a prefix
    of the training set is not one class).
    """
    y = np.asarray(y)
    n = len(y)
    n_test = check_int(n_test, "test_size", minimum=1, maximum=n - 1)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    exact = counts * n_test / n
    take = np.floor(exact).astype(np.int64)
    leftover = n_test - int(take.sum())
    take[np.argsort(-(exact - take), kind="stable")[:leftover]] += 1
    train, test = [], []
    for k, t in zip(classes, take):
        idx = rng.permutation(np.flatnonzero(y == k))
        test.append(idx[:t])
        train.append(idx[t:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def from_arrays(
    name: str,
    X: np.ndarray,
    y: np.ndarray,
    train_idx: Union[np.ndarray, slice],
    test_idx: Union[np.ndarray, slice],
    *,
    num_classes: Optional[int],
    task: str = "classification",
    info: Optional[Dict[str, Any]] = None,
) -> Dataset:
    """A :class:`Dataset` from numpy arrays and index sets (``float32`` inputs, ``int64`` labels).

    Index arrays copy; slices of a freshly built array share its memory (no copy), so
    callers must not pass slices of a cached array.
    """
    label_dtype = np.int64 if task == "classification" else np.float32

    def tensor(a: np.ndarray, dtype: Any) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=dtype))

    return Dataset(
        name=name,
        X_train=tensor(X[train_idx], np.float32),
        y_train=tensor(y[train_idx], label_dtype),
        X_test=tensor(X[test_idx], np.float32),
        y_test=tensor(y[test_idx], label_dtype),
        num_classes=num_classes,
        input_shape=tuple(X.shape[1:]),
        task=task,
        info=dict(info or {}),
    )
