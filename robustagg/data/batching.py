"""Seeded mini-batches for each worker, driven by a ``torch.Generator`` (resumable)."""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from robustagg._validation import check_int


def worker_seed(seed: int, worker: int) -> int:
    """Independent 63-bit seed for ``worker`` derived from ``seed`` (``numpy.random.SeedSequence``)."""
    state = np.random.SeedSequence([check_int(seed, "seed", minimum=0), check_int(worker, "worker", minimum=0)])
    return int(state.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class WorkerLoader:
    """An endless stream of seeded mini-batches drawn from one worker's samples.

    Without replacement (default) the worker's indices are reshuffled each epoch and cut
    into consecutive batches of exactly ``batch_size``; a batch that reaches the end of an
    epoch is completed from the start of the next permutation, so no sample is dropped and
    every batch has the same size. With ``replacement=True`` each batch is drawn uniformly
    with replacement. Batch size is capped at the worker's number of samples.

    The only randomness is the loader's own ``torch.Generator``, so two loaders with the
    same seed give the same batches, whatever else uses the global RNG; ``state_dict()`` /
    ``load_state_dict()`` save and restore the position for resumable runs.

    Parameters
    ----------
    X, y : torch.Tensor
        The full training inputs and labels (not copied; batches index into them).
    indices : array-like of int
        This worker's sample indices (one entry of a partition).
    batch_size : int
    seed : int
    replacement : bool
    device : torch.device or str, optional
        Where batches are moved (default: where ``X`` is).

    Examples
    --------
    >>> from robustagg import data
    >>> ds = data.load("digits")
    >>> parts = data.iid(ds.y_train, n_workers=10, seed=0)
    >>> loaders = data.worker_loaders(ds, parts, batch_size=32, seed=0)
    >>> xb, yb = loaders[0].next()
    >>> xb.shape, yb.shape
    (torch.Size([32, 1, 8, 8]), torch.Size([32]))
    """

    def __init__(
        self,
        X: torch.Tensor,
        y: torch.Tensor,
        indices: Any,
        batch_size: int,
        seed: int = 0,
        *,
        replacement: bool = False,
        device: Optional[Any] = None,
    ) -> None:
        if len(X) != len(y):
            raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        if idx.dim() != 1 or len(idx) == 0:
            raise ValueError("a worker needs a non-empty one-dimensional array of indices")
        if int(idx.min()) < 0 or int(idx.max()) >= len(X):
            raise IndexError(f"indices must lie in [0, {len(X)})")
        self.X, self.y, self.indices = X, y, idx
        self.batch_size = min(check_int(batch_size, "batch_size", minimum=1), len(idx))
        self.replacement = bool(replacement)
        self.device = device
        self.seed = check_int(seed, "seed")
        self.generator = torch.Generator().manual_seed(self.seed)
        self.epoch = 0
        self._perm = torch.randperm(len(idx), generator=self.generator)
        self._pos = 0

    def __len__(self) -> int:
        """Number of samples of this worker."""
        return len(self.indices)

    def next_indices(self) -> torch.Tensor:
        """Dataset indices of the next batch."""
        n, b = len(self.indices), self.batch_size
        if self.replacement:
            return self.indices[torch.randint(n, (b,), generator=self.generator)]
        take = self._perm[self._pos:self._pos + b]
        self._pos += len(take)
        if len(take) < b:  # finish the batch from the next epoch's permutation
            self.epoch += 1
            self._perm = torch.randperm(n, generator=self.generator)
            self._pos = b - len(take)
            take = torch.cat([take, self._perm[:self._pos]])
        elif self._pos == n:
            self.epoch += 1
            self._perm = torch.randperm(n, generator=self.generator)
            self._pos = 0
        return self.indices[take]

    def next(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The next ``(inputs, labels)`` batch."""
        idx = self.next_indices()
        xb, yb = self.X[idx.to(self.X.device)], self.y[idx.to(self.y.device)]
        if self.device is not None:
            xb, yb = xb.to(self.device), yb.to(self.device)
        return xb, yb

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next()

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue the same stream of batches (tensors and ints only)."""
        return {"generator": self.generator.get_state(), "perm": self._perm.clone(), "pos": self._pos, "epoch": self.epoch}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if len(state["perm"]) != len(self.indices):
            raise ValueError("state was saved for a worker with a different number of samples")
        self.generator.set_state(state["generator"])
        self._perm = state["perm"].clone()
        self._pos = int(state["pos"])
        self.epoch = int(state["epoch"])


def worker_loaders(
    dataset: Any,
    parts: Sequence[Any],
    batch_size: int,
    seed: int = 0,
    **kwargs: Any,
) -> List[WorkerLoader]:
    """One :class:`WorkerLoader` per partition entry over ``dataset``'s training set.

    Worker ``i`` gets the seed :func:`worker_seed(seed, i) <worker_seed>`, so the loaders
    draw independent streams and adding workers does not change the first ones' batches.
    ``dataset`` is a :class:`~robustagg.data.Dataset` or an ``(X, y)`` pair; ``kwargs`` go to
    :class:`WorkerLoader` (``replacement``, ``device``).
    """
    X, y = (dataset.X_train, dataset.y_train) if hasattr(dataset, "X_train") else dataset
    return [WorkerLoader(X, y, p, batch_size, worker_seed(seed, i), **kwargs) for i, p in enumerate(parts)]
