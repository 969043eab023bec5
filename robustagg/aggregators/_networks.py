"""Sorting-network plans for coordinate-wise order statistics, and their eager torch executor.

A *plan* is Batcher's odd-even merge sorting network for ``n`` inputs, pruned
backwards to what one statistic needs: the positions whose sorted value is
read exactly, and the positions that only enter a sum (two of those can skip
their comparator: ``min + max = a + b``). Running a plan over every column
at once gives the statistic with elementwise ``minimum``/``maximum`` only, no
sort, no Python loop over coordinates.

Three statistics cover every coordinate-wise rule in the package:

* ``median``: the middle value, or the mean of the two middle values;
* ``trimmed``: the mean of sorted positions ``t .. n-t-1``;
* ``around``: the mean of the ``k`` values closest to the median, i.e. the
  window ``[w, w+k-1]`` of sorted positions with the smallest
  ``max(med - s_w, s_{w+k-1} - med)`` (the lowest ``w`` on ties).

The executor here works on any device and dtype; ``_jit.py`` compiles the same
plan to a fused CPU kernel.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

DEAD, SUM, EXACT = 0, 1, 2


@functools.lru_cache(maxsize=None)
def batcher_pairs(n: int) -> Tuple[Tuple[int, int], ...]:
    """Comparators ``(a, b)`` (``a < b``; ``a`` receives the min) of Batcher's network for ``n`` wires.

    Built for the next power of two; comparators touching wires ``>= n`` are
    dropped, which is exact when the missing wires are read as ``+inf``.
    """
    pairs: List[Tuple[int, int]] = []
    size = 1
    while size < n:
        size *= 2
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        a, b = i + j, i + j + k
                        if b < n:
                            pairs.append((a, b))
            k //= 2
        p *= 2
    return tuple(pairs)


@dataclass(frozen=True)
class Plan:
    """A pruned network plus how to finish the statistic.

    ``program`` holds ``(a, b, need_min, need_max)`` in execution order.
    """

    n: int
    kind: str  # "median" | "trimmed" | "around"
    param: int  # t for "trimmed", k for "around", 0 for "median"
    program: Tuple[Tuple[int, int, bool, bool], ...]
    exact: Tuple[int, ...]
    summed: Tuple[int, ...]

    @property
    def middle(self) -> Tuple[int, ...]:
        n = self.n
        return (n // 2,) if n % 2 else (n // 2 - 1, n // 2)

    @property
    def divisor(self) -> int:
        return {"median": 1, "trimmed": self.n - 2 * self.param, "around": self.param}[self.kind]

    @property
    def loose(self) -> Tuple[int, ...]:
        """For ``around``: the positions outside the always-included core."""
        core = set(self.summed)
        return tuple(i for i in range(self.n) if i not in core)


def _prune(n: int, exact: Tuple[int, ...], summed: Tuple[int, ...]):
    state = [DEAD] * n
    for i in summed:
        state[i] = SUM
    for i in exact:
        state[i] = EXACT
    program = []
    for a, b in reversed(batcher_pairs(n)):
        sa, sb = state[a], state[b]
        if (sa == DEAD and sb == DEAD) or (sa == SUM and sb == SUM):
            continue
        program.append((a, b, sa != DEAD, sb != DEAD))
        state[a] = state[b] = EXACT
    program.reverse()
    return tuple(program)


@functools.lru_cache(maxsize=None)
def make_plan(n: int, kind: str, param: int = 0) -> Plan:
    """Build (and cache) the plan of one statistic over ``n`` values."""
    middle = (n // 2,) if n % 2 else (n // 2 - 1, n // 2)
    if kind == "median":
        exact, summed = middle, ()
    elif kind == "trimmed":
        t = param
        if t < 0 or n - 2 * t < 1:
            raise ValueError(f"cannot trim {t} from each side of {n} values")
        exact, summed = (), tuple(range(t, n - t))
    elif kind == "around":
        k = param
        if not 1 <= k <= n:
            raise ValueError(f"cannot average {k} of {n} values")
        t = n - k
        core = tuple(range(t, k)) if t <= k - 1 else ()
        edges = set(range(0, t + 1)) | set(range(k - 1, n)) | set(middle)
        exact = tuple(sorted(edges if core else set(range(n))))
        summed = core
    else:
        raise ValueError(f"unknown statistic {kind!r}")
    return Plan(n, kind, param, _prune(n, exact, summed), exact, summed)


def _finish_torch(plan: Plan, s: List[Optional[torch.Tensor]], out: torch.Tensor) -> None:
    """Write the statistic of one column chunk into ``out`` from the network's wires ``s``."""
    mid = plan.middle
    if plan.kind == "median":
        if len(mid) == 1:
            out.copy_(s[mid[0]])
        else:
            torch.add(s[mid[0]], s[mid[1]], out=out).mul_(0.5)
        return
    if plan.kind == "trimmed":
        idx = plan.summed
        torch.add(s[idx[0]], s[idx[1]], out=out) if len(idx) > 1 else out.copy_(s[idx[0]])
        for i in idx[2:]:
            out.add_(s[i])
        out.div_(plan.divisor)
        return
    # "around": choose the window, then sum the core and the loose positions inside it.
    k, t = plan.param, plan.n - plan.param
    med = s[mid[0]] if len(mid) == 1 else (s[mid[0]] + s[mid[1]]) * 0.5
    best = torch.maximum(med - s[0], s[k - 1] - med)
    start = torch.zeros_like(best, dtype=torch.int16 if plan.n < 32000 else torch.int32)
    for w in range(1, t + 1):
        cost = torch.maximum(med - s[w], s[w + k - 1] - med)
        better = cost < best
        best = torch.where(better, cost, best)
        start.masked_fill_(better, w)
    out.zero_()
    for i in plan.summed:
        out.add_(s[i])
    for i in plan.loose:
        inside = (start <= i) & (start + (k - 1) >= i)
        out.add_(torch.where(inside, s[i], torch.zeros((), dtype=out.dtype, device=out.device)))
    out.div_(k)


def run_plan_torch(
    X: torch.Tensor, plan: Plan, rows: Optional[torch.Tensor] = None, chunk: Optional[int] = None
) -> torch.Tensor:
    """Evaluate ``plan`` on the rows ``rows`` (default all) of ``X``, column chunk by column chunk."""
    row_ids = list(range(X.shape[0])) if rows is None else [int(r) for r in rows]
    n, d = len(row_ids), X.shape[1]
    if n != plan.n:
        raise ValueError(f"plan is for {plan.n} rows, got {n}")
    out = torch.empty(d, dtype=X.dtype, device=X.device)
    if chunk is None:
        chunk = d if X.device.type != "cpu" else 65536
    width = min(chunk, d)
    buffers = torch.empty((n + 2, width), dtype=X.dtype, device=X.device)
    for c0 in range(0, d, width):
        c1 = min(d, c0 + width)
        wires: List[Optional[torch.Tensor]] = [X[r, c0:c1] for r in row_ids]
        owned = [False] * n
        free = [buffers[i, : c1 - c0] for i in range(n + 2)]
        for a, b, need_min, need_max in plan.program:
            xa, xb = wires[a], wires[b]
            lo = torch.minimum(xa, xb, out=free.pop()) if need_min else None
            if need_max:
                hi = torch.maximum(xa, xb, out=xb if owned[b] else free.pop())
            else:
                hi = None
                if owned[b]:
                    free.append(xb)
            if owned[a]:
                free.append(xa)
            wires[a], owned[a] = lo, need_min
            wires[b], owned[b] = hi, need_max
        _finish_torch(plan, wires, out[c0:c1])
    return out


def run_plan_sorted(X: torch.Tensor, plan: Plan, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The same statistic from ``torch.sort`` over the rows, with out-of-place ops only.

    The networks write into preallocated buffers (``out=``), which autograd refuses; this path
    serves inputs that require a gradient (one sort, so slower and ``n`` times the memory).
    """
    if rows is not None:
        X = X.index_select(0, rows.to(X.device))
    if X.shape[0] != plan.n:
        raise ValueError(f"plan is for {plan.n} rows, got {X.shape[0]}")
    s = torch.sort(X, dim=0).values
    mid = plan.middle
    med = s[mid[0]] if len(mid) == 1 else (s[mid[0]] + s[mid[1]]) * 0.5
    if plan.kind == "median":
        return med
    if plan.kind == "trimmed":
        t = plan.param
        return s[t : plan.n - t].sum(dim=0) / plan.divisor
    k, t = plan.param, plan.n - plan.param
    costs = torch.stack([torch.maximum(med - s[w], s[w + k - 1] - med) for w in range(t + 1)])
    start = torch.argmin(costs.detach(), dim=0)  # the first (lowest) window on ties
    pos = torch.arange(plan.n, device=X.device)[:, None]
    inside = (pos >= start) & (pos < start + k)
    return torch.where(inside, s, torch.zeros((), dtype=s.dtype, device=s.device)).sum(dim=0) / k
