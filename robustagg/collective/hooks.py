r"""Drop-ins for training loops: a DDP communication hook and :func:`robust_step`.

Both aggregate the *whole* gradient of a step at once, so distances (Krum, NNM, the
geometric median...) are taken over every parameter, never per DDP bucket.

DDP hands its hook one bucket at a time, in bucket order, and waits for the returned
futures only when the backward pass is over. :func:`robust_hook` therefore defers: it
keeps each bucket and returns a future it leaves pending; when the step's last bucket
arrives (``bucket.is_last()``), it concatenates all of them into the flat gradient, runs
:func:`~robustagg.collective.robust_all_reduce` once and completes every pending future
with its slice of the aggregate. The price is that no reduction overlaps the backward pass.
"""



import datetime
from typing import Callable, List, Optional, Tuple

import torch

from robustagg.aggregators.base import Aggregator
from robustagg.collective.allreduce import robust_all_reduce

Transform = Callable[[torch.Tensor], torch.Tensor]


class RobustHookState:
    """The state :func:`robust_hook` is registered with.

    Parameters
    ----------
    rule : Aggregator
        The robust rule (each rank an equal copy; stateful rules stay in step).
    group : ProcessGroup, optional
        The group (default: the world).
    timeout : datetime.timedelta, optional
        Per-collective timeout (see :func:`~robustagg.collective.robust_all_reduce`).
    transform : callable, optional
        Applied to this rank's flat gradient before the reduction: a way to make a rank
        Byzantine in experiments (``None`` for honest ranks).
    """

    def __init__(self, rule: Aggregator, group=None, timeout: Optional[datetime.timedelta] = None,
                 transform: Optional[Transform] = None) -> None:
        if not isinstance(rule, Aggregator):
            raise TypeError(f"RobustHookState: rule must be a robustagg rule (ra.get(...)), got {type(rule).__name__}")
        self.rule, self.group, self.timeout, self.transform = rule, group, timeout, transform
        self._pending: List[Tuple[torch.Tensor, "torch.futures.Future[torch.Tensor]"]] = []


def robust_hook(state: RobustHookState, bucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: ``model.register_comm_hook(RobustHookState(rule), robust_hook)``.

    Each rank's whole gradient is one row; DDP then writes the robust aggregate (not the
    average) into every rank's ``.grad``.
    """
    buffer = bucket.buffer()
    future: "torch.futures.Future[torch.Tensor]" = torch.futures.Future()
    state._pending.append((buffer, future))
    if not bucket.is_last():
        return future
    pending, state._pending = state._pending, []
    flat = torch.cat([b.reshape(-1) for b, _ in pending])
    # an error raised here surfaces from loss.backward() on every rank
    aggregate = robust_all_reduce(_transformed(flat, state.transform), state.rule, state.group, state.timeout)
    start = 0
    for b, fut in pending:
        # a fresh tensor per bucket: DDP reads the result as a buffer of its own (a slice of
        # one tensor, with a storage offset, lands at the wrong place after bucket rebuilding)
        fut.set_result(aggregate[start : start + b.numel()].view_as(b).to(b.dtype, copy=True))
        start += b.numel()
    return future


def robust_step(model: torch.nn.Module, rule: Aggregator, group=None,
                timeout: Optional[datetime.timedelta] = None,
                transform: Optional[Transform] = None) -> torch.Tensor:
    """Replace every rank's gradients by their robust aggregate; call after ``backward()``.

    For loops without DDP (each rank holds its own copy of ``model``). Parameters that
    require a gradient and have none count as zero. Returns the flat aggregate.

    Parameters
    ----------
    model : torch.nn.Module
    rule, group, timeout, transform
        As in :class:`RobustHookState`.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("robust_step: the model has no parameter that requires a gradient")
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    aggregate = robust_all_reduce(_transformed(flat, transform), rule, group, timeout)
    start = 0
    for p in params:
        piece = aggregate[start : start + p.numel()].view_as(p).to(p.dtype)
        if p.grad is None:
            p.grad = piece.clone()
        else:
            p.grad.copy_(piece)
        start += p.numel()
    return aggregate


def _transformed(flat: torch.Tensor, transform: Optional[Transform]) -> torch.Tensor:
    if transform is None:
        return flat
    out = transform(flat.clone())
    if not isinstance(out, torch.Tensor) or out.shape != flat.shape:
        raise ValueError(f"transform must return a tensor of shape {tuple(flat.shape)}")
    return out
