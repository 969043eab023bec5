r"""Robust all-reduce: any robustagg rule as a :mod:`torch.distributed` collective, no server.

Every rank passes its update(s) and gets the robust aggregate of all of them, as
``dist.all_reduce`` would give their sum::

    agg = robust_all_reduce(grad, ra.get("krum", f=1))

Rank ``r`` owns coordinate shard ``r`` (``d`` split into ``w`` near-equal slices):

1. one ``all_gather`` of the row counts (``k`` per rank may differ);
2. one ``all_to_all`` hands rank ``r`` every worker's values on shard ``r``, an
   ``(n, d / w)`` block (no rank ever holds the ``(n, d)`` stack);
3. the rule runs on that block through its usual contract path
   (:meth:`~robustagg.aggregators.base.Aggregator.aggregate`), with its
   ``_*_over_shards`` hooks turned into all-reduces: the non-finite row flags (``n``
   floats), the Gram matrix (``n x n``) or the norms (``n``), and, for centered clipping,
   ``n`` distances per iteration. Every rank then takes the same decision with the rule's
   own decision code and applies it to its block;
4. the received block is freed and one all-gather returns the whole aggregate to every rank
   (NCCL: ``all_gather_into_tensor``, in place; gloo, whose all-gather stages its output in a
   buffer of its own: each rank broadcasts its shard into its slice of the result).

Bytes sent per rank: about ``2 d (w - 1) / w`` values plus ``n^2`` for Gram rules, as a ring
all-reduce of ``d`` values. See docs/collective.md.
"""

from __future__ import annotations

import contextlib
import datetime
import zlib
from typing import Any, Iterator, List, Optional

import torch
import torch.distributed as dist

from robustagg.aggregators.base import Aggregator
from robustagg.aggregators.pipeline import Pipeline

__all__ = ["CollectiveError", "ShardComm", "guard_collective", "on_shards", "robust_all_reduce",
           "shard_bounds", "wait_collective"]


class CollectiveError(RuntimeError):
    """A collective failed: a rank died, left, or did not answer within the timeout."""


def shard_bounds(d: int, world: int) -> List[int]:
    """Column offsets of the ``world`` shards of ``d`` coordinates (``world + 1`` numbers).

    Every shard holds ``ceil(d / world)`` coordinates but the last ones, which hold what is
    left (possibly nothing): the gathered shards, each padded to the common width, then
    start with the whole vector, which needs no copy.

    >>> shard_bounds(10, 4)
    [0, 3, 6, 9, 10]
    """
    width = -(-d // world)
    return [min(r * width, d) for r in range(world + 1)]


class ShardComm:
    """The reductions a rule's ``_*_over_shards`` hooks need, over a process group.

    Parameters
    ----------
    group : ProcessGroup or None
        The group (``None``: the default one).
    offset, total : int
        Where this rank's columns start, and the number of columns of the whole input.
    device : torch.device
        Where tensors must be for the backend (CUDA for NCCL).
    timeout : datetime.timedelta or None
        How long one collective may wait for the other ranks.
    """

    def __init__(self, group, offset: int, total: int, device: torch.device,
                 timeout: Optional[datetime.timedelta] = None) -> None:
        self.group, self.offset, self.total = group, offset, total
        self.device, self.timeout = device, timeout
        self.bytes_sent = 0  # what this rank sent in the all-reduces (ring estimate: 2 (w-1)/w)
        self.floats = 0  # the values all-reduced

    def _wait(self, work, what: str) -> None:
        wait_collective(work, what, self.timeout)

    def sum(self, partial: torch.Tensor) -> torch.Tensor:
        """The sum of ``partial`` over every rank (same shape, dtype and device)."""
        t = partial.detach().to(self.device).contiguous().clone()
        world = dist.get_world_size(self.group)
        self.bytes_sent += 2 * (world - 1) * t.numel() * t.element_size() // world
        self.floats += t.numel()
        self._wait(dist.all_reduce(t, group=self.group, async_op=True), "all_reduce of a statistic")
        return t.to(partial.device)

    def all(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank."""
        return bool(self.sum(torch.tensor([0.0 if flag else 1.0]))[0] == 0)

    def union(self, rows: torch.Tensor, n: int) -> torch.Tensor:
        """The sorted union over ranks of the row indices ``rows`` (of ``n`` rows)."""
        mask = torch.zeros(n, dtype=torch.float32)
        mask[rows.cpu()] = 1.0
        return torch.nonzero(self.sum(mask) > 0).flatten().to(rows.device)


@contextlib.contextmanager
def guard_collective(what: str, timeout: Optional[datetime.timedelta] = None,
                     who: str = "robust_all_reduce") -> Iterator[None]:
    """Turn a collective that fails inside the block into one :class:`CollectiveError` line.

    gloo and NCCL raise a ``RuntimeError`` (or its subclass ``DistBackendError``) with a
    multi-line message when a peer closed its connection (it died) or did not answer within
    the timeout (it hangs); the error raised instead names this rank, ``what`` it was doing
    and ``timeout``, and keeps the first line of the backend's message. Shared by
    :func:`robust_all_reduce` and both topologies of :mod:`robustagg.train.distributed`.

    Parameters
    ----------
    what : str
        The collective, as in "during the <what>".
    timeout : datetime.timedelta, optional
        The timeout the collective waited for (only named in the message).
    who : str
        The message's prefix (the caller).
    """
    try:
        yield
    except CollectiveError:
        raise
    except RuntimeError as exc:
        after = f" (timeout {timeout.total_seconds():g} s)" if timeout is not None else ""
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise CollectiveError(
            f"{who}: rank {dist.get_rank()} lost contact with the group during the {what}{after}: "
            f"a rank died, hangs or called a different collective ({type(exc).__name__}: {first})"
        ) from exc


def wait_collective(work, what: str, timeout: Optional[datetime.timedelta] = None,
                    who: str = "robust_all_reduce") -> None:
    """Wait for an ``async_op=True`` collective ``work`` at most ``timeout`` (default: the
    process group's), raising :class:`CollectiveError` as :func:`guard_collective` does."""
    with guard_collective(what, timeout, who):
        if timeout is None:
            work.wait()
        else:
            work.wait(timeout=timeout)


def _leaves(rule: Aggregator):
    """``rule`` and, for a pipeline, every stage (recursively)."""
    yield rule
    if isinstance(rule, Pipeline):
        for stage in rule.stages:
            yield from _leaves(stage)


@contextlib.contextmanager
def on_shards(rule: Aggregator, comm: "ShardComm") -> Iterator[Aggregator]:
    """``rule`` (and every stage of a pipeline) with its ``_*_over_shards`` hooks completed by
    ``comm`` inside the block: its statistics are then sums over every rank's shard."""
    parts = list(_leaves(rule))
    for part in parts:
        part._shards = comm
    try:
        yield rule
    finally:
        for part in parts:
            part.__dict__.pop("_shards", None)


def _final(rule: Aggregator) -> Aggregator:
    while isinstance(rule, Pipeline):
        rule = rule.stages[-1]
    return rule


def _as_rows(tensor: Any) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"robust_all_reduce: tensor must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() == 1:
        return tensor[None, :]
    if tensor.dim() == 2:
        return tensor
    raise ValueError(f"robust_all_reduce: tensor must have shape (d,) or (k, d), got {tuple(tensor.shape)}")


def _exchange(X: torch.Tensor, counts: List[int], bounds: List[int], rank: int, group, timeout) -> torch.Tensor:
    """All-to-all: send each rank its columns of our rows; return every rank's rows on our shard."""
    world = len(counts)
    k = X.shape[0]
    widths = [bounds[j + 1] - bounds[j] for j in range(world)]
    # pack our rows shard by shard: [X[:, shard_0] | X[:, shard_1] | ...], each block row-major
    # (one row is already laid out so: no copy)
    if k <= 1:
        send = X.reshape(-1)
    else:
        send = torch.cat([X[:, bounds[j]:bounds[j + 1]].reshape(-1) for j in range(world)])
    mine = widths[rank]
    recv = X.new_empty(sum(counts) * mine)
    work = dist.all_to_all_single(recv, send.contiguous(), output_split_sizes=[c * mine for c in counts],
                                  input_split_sizes=[k * wdt for wdt in widths], group=group, async_op=True)
    wait_collective(work, "all_to_all of the update shards", timeout)
    return recv.view(sum(counts), mine)


def _gather(out: Optional[torch.Tensor], failure: Optional[BaseException], bounds: List[int], group,
            timeout, dtype, device) -> torch.Tensor:
    """All-gather the shards of the output (``(ds,)`` or ``(m, ds)``) into the whole output.

    One all-reduce of two numbers first (whether a rank's rule call raised, and the output's
    row count): a rank that failed alone makes every rank raise instead of leaving them waiting.
    """
    world = len(bounds) - 1
    status = torch.tensor([float(failure is not None), float(out.shape[0]) if out is not None and out.dim() == 2 else -1.0],
                          dtype=torch.float64, device=device)
    work = dist.all_reduce(status, op=dist.ReduceOp.MAX, group=group, async_op=True)
    wait_collective(work, "all_reduce of the status", timeout)
    if failure is not None:
        raise failure
    if status[0] > 0:
        raise CollectiveError("robust_all_reduce: the rule raised on another rank only; see that rank's error")
    widest = max(bounds[j + 1] - bounds[j] for j in range(world))
    d = bounds[-1]
    if out.dim() == 1 and dist.get_backend(group) == "gloo":
        # gloo's all-gather stages its output in a buffer of its own (d more values): instead each
        # rank broadcasts its shard straight into its slice of the result (in place, same bytes)
        full = out.new_empty(d)
        rank = dist.get_rank(group)
        full[bounds[rank] : bounds[rank + 1]] = out
        works = [dist.broadcast(full[bounds[j] : bounds[j + 1]], src=dist.get_global_rank(group, j) if group else j,
                                group=group, async_op=True) for j in range(world) if bounds[j + 1] > bounds[j]]
        for work in works:
            wait_collective(work, "all_gather of the aggregate", timeout)
        return full
    if out.dim() == 1:  # shards of equal width but the last ones: the padded gather starts with the result
        full = out.new_empty(world * widest)
        mine = out if out.shape[0] == widest else torch.cat([out, out.new_zeros(widest - out.shape[0])])
        gather_into = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in torch 2.12
        work = gather_into(full, mine.contiguous(), group=group, async_op=True)
        wait_collective(work, "all_gather of the aggregate", timeout)
        return full[:d]
    padded = out.new_zeros(out.shape[:-1] + (widest,))
    padded[..., : out.shape[-1]] = out
    parts = [torch.empty_like(padded) for _ in range(world)]
    wait_collective(dist.all_gather(parts, padded, group=group, async_op=True), "all_gather of the aggregate", timeout)
    return torch.cat([parts[j][..., : bounds[j + 1] - bounds[j]] for j in range(world)], dim=-1)


def robust_all_reduce(tensor: torch.Tensor, rule: Aggregator, group=None,
                      timeout: Optional[datetime.timedelta] = None, stats: Optional[dict] = None) -> torch.Tensor:
    """The robust aggregate of every rank's update(s), on every rank.

    Parameters
    ----------
    tensor : torch.Tensor
        This rank's update, shape ``(d,)``, or ``(k, d)`` for a rank hosting ``k`` workers
        (``k`` may differ across ranks, and be 0). ``d`` and the dtype must agree on every rank.
    rule : Aggregator
        Any registered rule or pre-aggregator, or a pipeline; each rank passes an equal copy.
        Rows are numbered in rank order (rank 0's rows first), as in
        ``rule(torch.cat(all tensors))``: indices in ``rule.last`` use that numbering, and
        ``rule.last``, ``kept``, ``dropped`` and any state end up the same on every rank.
    group : ProcessGroup, optional
        The process group (default: the world).
    timeout : datetime.timedelta, optional
        How long each collective step may wait for the other ranks before raising
        :class:`CollectiveError` (default: the process group's own timeout).
    stats : dict, optional
        Filled with ``"bytes_sent"``: the bytes this rank sent to other ranks (the all-to-all's
        payload exactly; ring algorithms assumed for the all-reduces and all-gathers), and
        ``"statistic_floats"``: the values it all-reduced for the rule's statistics.

    Returns
    -------
    torch.Tensor
        The aggregate ``(d,)`` (a pre-aggregator alone returns its ``(n', d)`` output), in
        the input's dtype and on its device, the same on every rank.

    Raises
    ------
    ValueError
        When ``d`` or the dtype differ across ranks, or the rule rejects the inputs (its
        bound, more than ``f`` non-finite rows): on every rank alike.
    CollectiveError
        When a rank dies or does not answer within ``timeout``.
    """
    if not isinstance(rule, Aggregator):
        raise TypeError(f"robust_all_reduce: rule must be a robustagg rule (ra.get(...)), got {type(rule).__name__}")
    for stage in getattr(rule, "stages", (rule,)):
        if not stage.shardable:
            raise ValueError(f"robust_all_reduce: {stage.name} runs in one process only (its statistics are not "
                             "split over coordinate shards yet); gather the updates and call the rule instead")
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("robust_all_reduce needs torch.distributed initialised (dist.init_process_group)")
    X = _as_rows(tensor)
    if not X.dtype.is_floating_point:
        X = X.to(torch.get_default_dtype())
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    device = X.device
    # 1. every rank's (k, d, dtype, rule): uneven k is fine; a mismatched d, dtype or rule (its
    # parameters) is an error on every rank, before the ranks' collectives could diverge
    code = torch.tensor([X.shape[0], X.shape[1], _DTYPES.index(X.dtype) if X.dtype in _DTYPES else -1,
                         zlib.crc32(repr(rule).encode())], dtype=torch.int64, device=device)
    shapes = [torch.empty_like(code) for _ in range(world)]
    work = dist.all_gather(shapes, code, group=group, async_op=True)
    wait_collective(work, "all_gather of the update shapes", timeout)
    shapes = [s.tolist() for s in shapes]
    if len({s[1] for s in shapes}) > 1 or len({s[2] for s in shapes}) > 1:
        raise ValueError(
            "robust_all_reduce: every rank must pass updates of one size and dtype, got (k, d, dtype) = "
            + ", ".join(f"rank {r}: ({s[0]}, {s[1]}, {_dtype_name(s[2])})" for r, s in enumerate(shapes))
        )
    if len({s[3] for s in shapes}) > 1:
        differ = [r for r, s in enumerate(shapes) if s[3] != shapes[0][3]]
        raise ValueError(f"robust_all_reduce: rank(s) {differ} pass another rule than rank 0 (rank {rank} passes "
                         f"{rule!r}); every rank must build the same rule with the same parameters")
    counts, d = [s[0] for s in shapes], X.shape[1]
    if sum(counts) == 0:
        raise ValueError("robust_all_reduce: got no updates (every rank passed k = 0 rows)")
    bounds = shard_bounds(d, world)
    # 2. every worker's values on our shard
    shard = _exchange(X.contiguous(), counts, bounds, rank, group, timeout)
    # 3. the rule's own contract path on the shard, its statistics summed over ranks
    comm = ShardComm(group, bounds[rank], d, device, timeout)
    out, failure = None, None
    try:
        with on_shards(rule, comm):
            out = rule.aggregate(shard)
    except (ValueError, TypeError, ArithmeticError, RuntimeError) as exc:
        failure = exc
    if isinstance(failure, CollectiveError):
        raise failure
    del shard  # the received block (n d / w values): freed before the result is gathered
    # 4. the whole aggregate on every rank
    full = _gather(out, failure, bounds, group, timeout, X.dtype, device)
    if stats is not None:
        size = X.element_size()
        widest = max(bounds[j + 1] - bounds[j] for j in range(world))
        stats["bytes_sent"] = (
            X.shape[0] * (d - (bounds[rank + 1] - bounds[rank])) * size  # all_to_all: our rows, others' shards
            + (world - 1) * (full.numel() // max(d, 1)) * widest * size  # all_gather of the output (ring)
            + comm.bytes_sent + (world - 1) * 3 * 8 + 2 * (world - 1) * 16 // world  # statistics; shapes, status
        )
        stats["statistic_floats"] = comm.floats
    _final(rule)._gathered(full)
    return full.to(tensor.dtype) if tensor.dtype.is_floating_point else full


_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _dtype_name(code: int) -> str:
    return str(_DTYPES[code]).replace("torch.", "") if 0 <= code < len(_DTYPES) else "other"
