r"""What an honest worker computes: a pure function of the model it pulled and its batches.

:func:`local_update` is the only place a worker touches the model. Both trainers call it,
and so can a ``torch.distributed`` worker process: given the same model vector, the same
loader state and the same seed it returns the same update, bit for bit.

References
----------
Yang, Zhang, Khanduri, Liu, "Anarchic Federated Learning", ICML 2022 (the averaged local
gradient :math:`G_i`).
Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust Optimization", ICML 2021
(worker momentum).
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from robustagg.train.flat import FlatModel, LossFn

Batches = Callable[[], Tuple[torch.Tensor, torch.Tensor]]


def local_update(flat: FlatModel, x: torch.Tensor, next_batch: Batches, loss_fn: LossFn, *,
                 local_steps: int = 1, local_lr: float = 0.0, reduce: str = "mean", l2: float = 0.0,
                 seed: Optional[int] = None, out: Optional[torch.Tensor] = None
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""An honest worker's update from the model ``x``: ``K`` local SGD steps, averaged gradient.

    .. math:: x^{(0)} = x, \qquad g_k = \nabla \big(\ell(x^{(k)}; \xi_k) + l_2 \|x^{(k)}\|^2\big),
              \qquad x^{(k+1)} = x^{(k)} - \eta_L \, g_k, \qquad
              G = \frac{1}{K} \sum_{k=0}^{K-1} g_k

    (``reduce="sum"`` returns :math:`\sum_k g_k` instead, FedAvg's model change divided by
    :math:`\eta_L`). With ``K = 1`` this is one stochastic gradient at ``x``.

    Parameters
    ----------
    flat : FlatModel
        The model used for the computation (its parameters are overwritten).
    x : torch.Tensor
        The ``(d,)`` model vector the worker pulled (possibly stale).
    next_batch : callable
        Returns the next ``(inputs, labels)`` batch of this worker.
    loss_fn : callable
        ``loss_fn(outputs, labels) -> scalar``.
    local_steps, local_lr : int, float
        ``K`` and :math:`\eta_L`.
    reduce : {"mean", "sum"}
    l2 : float
        Coefficient of the :math:`l_2 \|x\|^2` term (MoNNA's regulariser; gradient
        :math:`2 l_2 x`).
    seed : int, optional
        Seeds the global generator (of ``flat``'s device) for this call only, inside
        :func:`torch.random.fork_rng`, so dropout masks depend on ``seed`` alone.
    out : torch.Tensor, optional
        A ``(d,)`` tensor to write ``G`` into (e.g. a row of the step's update matrix).

    Returns
    -------
    G, loss
        The update and the loss of the first batch (a 0-d tensor).
    """
    if local_steps < 1:
        raise ValueError(f"local_steps must be >= 1, got {local_steps}")
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    flat.load(x)
    if out is None:
        out = torch.zeros_like(flat.param)
    else:
        out.zero_()
    device = flat.device
    first = None
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if seed is not None:
            if device.type == "cuda":
                index = device.index if device.index is not None else torch.cuda.current_device()
                torch.cuda.default_generators[index].manual_seed(seed)
            else:
                torch.default_generator.manual_seed(seed)
        for k in range(local_steps):
            xb, yb = next_batch()
            loss = flat.gradient(xb, yb, loss_fn)
            if l2:
                flat.grad.add_(flat.param, alpha=2.0 * l2)
            out.add_(flat.grad)
            if first is None:
                first = loss
            if k + 1 < local_steps:
                flat.param.sub_(flat.grad, alpha=local_lr)
    if reduce == "mean" and local_steps > 1:
        out.div_(local_steps)
    return out, first


def loss_function(dataset: Any) -> nn.Module:
    """Cross-entropy for classification datasets, mean squared error for regression."""
    return nn.CrossEntropyLoss() if getattr(dataset, "task", "classification") == "classification" else nn.MSELoss()


def build_loaders(dataset: Any, parts: Sequence[np.ndarray], batch_size: int, seed: int, *,
                  honest: int, poisoner: Any = None, replacement: bool = False,
                  device: Optional[torch.device] = None) -> List[Any]:
    """One :class:`~robustagg.data.WorkerLoader` per worker that computes updates.

    Workers ``0..honest-1`` read their partition of the training set; the Byzantine workers
    ``honest..n-1`` get a loader over a poisoned copy of their partition when ``poisoner`` is
    given, and ``None`` otherwise (they craft their updates and need no data). Worker ``i``'s
    loader seed is :func:`robustagg.data.worker_seed(seed, i) <robustagg.data.worker_seed>`.
    """
    from robustagg.data import WorkerLoader, worker_seed

    poisoner = _with_num_classes(poisoner, getattr(dataset, "num_classes", None))
    X_cpu, y_cpu = dataset.X_train, dataset.y_train
    X, y = (X_cpu, y_cpu) if device is None else (X_cpu.to(device), y_cpu.to(device))
    loaders: List[Any] = []
    for i, idx in enumerate(parts):
        if i < honest:
            loaders.append(WorkerLoader(X, y, idx, batch_size, worker_seed(seed, i), replacement=replacement))
        elif poisoner is not None:  # poisoning functions work on CPU copies
            index = torch.as_tensor(np.asarray(idx, dtype=np.int64))
            Xp, yp, _ = poisoner(X_cpu[index.to(X_cpu.device)].cpu(), y_cpu[index.to(y_cpu.device)].cpu())
            if device is not None:
                Xp, yp = Xp.to(device), yp.to(device)
            loaders.append(WorkerLoader(Xp, yp, np.arange(len(idx)), batch_size, worker_seed(seed, i),
                                        replacement=replacement))
        else:
            loaders.append(None)
    return loaders


def _with_num_classes(poisoner: Any, num_classes: Optional[int]) -> Any:
    """Give a label-mapping poisoner the dataset's number of classes (a worker's partition may
    miss the top classes, and ``label_flip`` would infer ``C`` from it)."""
    import inspect

    function = getattr(poisoner, "function", None)
    if function is None or not num_classes or "num_classes" in poisoner.params:
        return poisoner
    if "num_classes" not in inspect.signature(function).parameters:
        return poisoner
    return type(poisoner)(function, **poisoner.params, num_classes=int(num_classes))


def assign_workers(workers: Sequence[int], world_size: int, *, server_computes: bool = True) -> List[List[int]]:
    """Split ``workers`` into contiguous blocks, one per rank (deterministic).

    Parameters
    ----------
    workers : sequence of int
        The workers that compute updates (honest and data-poisoning ones), in order.
    world_size : int
        Number of processes.
    server_computes : bool
        Whether rank 0 (the server) also computes a block; with one process it always does.

    Returns
    -------
    list of lists
        ``blocks[r]`` are rank ``r``'s workers. Blocks differ in size by at most one; the
        larger ones go to the last ranks, so the server, which also aggregates, gets a
        smaller one.

    Examples
    --------
    >>> assign_workers(range(12), 4)
    [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    >>> assign_workers(range(7), 3, server_computes=False)
    [[], [0, 1, 2], [3, 4, 5, 6]]
    """
    workers = list(workers)
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    ranks = list(range(world_size)) if server_computes or world_size == 1 else list(range(1, world_size))
    q, r = divmod(len(workers), len(ranks))
    blocks: List[List[int]] = [[] for _ in range(world_size)]
    start = 0
    for i, rank in enumerate(ranks):
        size = q + (1 if i >= len(ranks) - r else 0)
        blocks[rank] = workers[start:start + size]
        start += size
    return blocks
