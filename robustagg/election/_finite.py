"""Finite Aggregation certificates: per-bucket reductions and the greedy bucket count.

A poisoned bucket ``b`` hands the attacker the ``d`` models it feeds. To bound
the number of poisoned buckets needed to close an integer gap ``G > 0`` when
bucket ``b`` can reduce it by at most ``w_b >= 0``, the reference sorts the
``w_b`` in descending order and counts how many it must take
(:func:`need_from_hist`):

.. math:: \\mathrm{need}(G, w) = \\min\\{ n : w_{(1)} + \\dots + w_{(n)} \\ge G \\}
          \\quad (0 \\text{ if } G \\le 0).

Every reduction used here is a small integer (``0..3d``), so the sort is replaced
by a histogram (``bincount``) of the ``w_b``. A certificate is a minimum over
many such problems (one per class, one per pair of classes); each gets a cheap
lower bound from a histogram shared by all classes (the competing class's
bucket counts dropped), and only the problems whose bound is below the best
exact value found are solved exactly (:func:`branch_and_bound`), usually one or
two per test point. The result is exactly the reference's value. Everything is
vectorised over a chunk of test points.

References
----------
Wang, Levine & Feizi, "Improved Certified Defenses against Data Poisoning with
(Deterministic) Finite Aggregation", ICML 2022.

Rezaei, Banihashem, Chegini, Feizi, "Run-Off Election: Improved Provable
Defense against Data Poisoning Attacks", ICML 2023.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

from robustagg.election.votes import Round, column_hist

#: "Impossible" bucket count (a gap that no set of buckets can close).
INF = 1 << 40


def need_from_hist(gap: np.ndarray, hist: np.ndarray) -> np.ndarray:
    """Greedy number of buckets that close ``gap``, from a histogram of reductions.

    Parameters
    ----------
    gap : int array, shape (...)
    hist : int array, shape (..., B), broadcastable against ``gap[..., None]``
        ``hist[..., v]`` buckets can each reduce the gap by ``v`` (a histogram
        shared by several gaps is given once, with a length-1 axis).

    Returns
    -------
    int64 array, shape of ``gap``: :math:`\\mathrm{need}` (``INF`` when even all
    buckets cannot close the gap).
    """
    B = hist.shape[-1]
    # suffix sums over values v..B-1: number of buckets and their total reduction (0 at v = B)
    cnt = np.zeros(hist.shape[:-1] + (B + 1,), np.int64)
    tot = np.zeros_like(cnt)
    cnt[..., :B] = np.cumsum(hist[..., ::-1], axis=-1)[..., ::-1]
    tot[..., :B] = np.cumsum((hist * np.arange(B))[..., ::-1], axis=-1)[..., ::-1]
    gap = np.asarray(gap, np.int64)
    # largest v >= 1 whose buckets (value >= v) close the gap: tot is non-increasing in v
    vstar = (tot[..., 1:B] >= gap[..., None]).sum(axis=-1)
    nxt = (vstar + 1)[..., None]
    shape = np.broadcast_shapes(cnt.shape[:-1], gap.shape) + (B + 1,)
    above_cnt = np.take_along_axis(np.broadcast_to(cnt, shape), nxt, -1)[..., 0]
    above_tot = np.take_along_axis(np.broadcast_to(tot, shape), nxt, -1)[..., 0]
    v = np.maximum(vstar, 1)
    need = above_cnt + (gap - above_tot + v - 1) // v
    need = np.where(vstar == 0, INF, need)
    return np.where(gap <= 0, 0, need)


def bucket_sums(per_model: np.ndarray, shifts: Sequence[int]) -> np.ndarray:
    """``out[b] = sum_j per_model[(b + s_j) % kd]`` along axis 0 (the models bucket ``b`` feeds)."""
    kd = per_model.shape[0]
    out = np.zeros(per_model.shape, np.int8 if len(shifts) < 128 else np.int32)
    src = per_model.view(np.int8) if per_model.dtype == bool else per_model
    for s in shifts:
        s = int(s) % kd
        out[:kd - s] += src[s:]
        if s:
            out[kd - s:] += src[:s]
    return out


def pair_index(C: int) -> Tuple[np.ndarray, np.ndarray]:
    """Unordered class pairs ``(a, b)`` with ``a < b``."""
    return np.triu_indices(C, 1)


def gaps(counts: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``g(a, c) = N1[a] - N1[c] + [c > a]`` for every class ``c``, shape ``(n, C)``."""
    n, C = counts.shape
    top = counts[np.arange(n), a][:, None]
    return top - counts + (np.arange(C)[None, :] > a[:, None])


def _bucket_votes(votes: np.ndarray, cls: np.ndarray, shifts: Sequence[int]) -> np.ndarray:
    """``(kd, m)`` int64: models in bucket ``b`` voting ``cls[t]`` on point column ``t`` of ``votes``."""
    return bucket_sums(votes == cls[None, :], shifts).astype(np.int64)


def need_exact(values: np.ndarray, gap: np.ndarray, nbins: int) -> np.ndarray:
    """:math:`\\mathrm{need}` for ``M`` problems given every bucket's reduction, ``values (kd, M)``."""
    return need_from_hist(gap, column_hist(values, nbins))


def _shared(base: np.ndarray, gap: np.ndarray, nbins: int) -> np.ndarray:
    """Lower bound of need for every column of ``gap (n, P)``: all buckets at their ``base`` value."""
    return need_from_hist(gap, column_hist(base, nbins)[:, None, :])


def branch_and_bound(low: np.ndarray, exact) -> np.ndarray:
    """``min_t exact(i, t)`` per row ``i`` given lower bounds ``low[i, t] <= exact(i, t)``.

    ``exact(rows, terms)`` evaluates a list of (row, term) pairs. The term with
    the smallest bound is evaluated first; then only terms whose bound is below
    the best value found (in practice a few per row).
    """
    n = low.shape[0]
    rows = np.arange(n)
    first = low.argmin(axis=1)
    best = _batched(exact, rows, first)
    todo_i, todo_t = np.nonzero(low < best[:, None])
    keep = todo_t != first[todo_i]
    todo_i, todo_t = todo_i[keep], todo_t[keep]
    if todo_i.size:
        np.minimum.at(best, todo_i, _batched(exact, todo_i, todo_t))
    return best


def _batched(exact, rows: np.ndarray, terms: np.ndarray, size: int = 1024) -> np.ndarray:
    """``exact`` on at most ``size`` (row, term) pairs at a time (bounded memory)."""
    if rows.size <= size:
        return exact(rows, terms)
    return np.concatenate([exact(rows[lo:lo + size], terms[lo:lo + size])
                           for lo in range(0, rows.size, size)])


def fa_chunk(r: Round, d: int, shifts: Sequence[int]) -> np.ndarray:
    """Plain FA certificate (before the wrong-prediction mask) on a chunk.

    :math:`\\min_{c \\ne y} \\mathrm{need}(g(y, c), \\{\\sum_{j \\in b} 1 + [v_j = y] - [v_j = c]\\}_b) - 1`,
    the per-bucket reduction being ``d + cnt_b[y] - cnt_b[c]``.
    """
    n = r.first.size
    y = r.first
    cy = _bucket_votes(r.votes, y, shifts)
    g = gaps(r.counts, y)
    low = _shared(d + cy, g, 2 * d + 1)  # cnt_b[c] >= 0: a lower bound on need
    low[np.arange(n), y] = INF

    def exact(rows, cls):
        cc = _bucket_votes(r.votes[:, rows], cls, shifts)
        return need_exact(d + cy[:, rows] - cc, g[rows, cls], 2 * d + 1)

    return branch_and_bound(low, exact) - 1


def fa_roe_chunk(r: Round, d: int, shifts: Sequence[int]) -> np.ndarray:
    """FA+ROE certificate (before the wrong-prediction mask) on a chunk.

    Terms (all minimised over, then minus one): for each class ``c != w`` the
    round-2 term ``max(need(g(sec, c), d + cnt[sec] - cnt[c]),
    need(2 N2(w > c) - K + [c > w], 2 * #{j in b : s_j[w] > s_j[c]}))``; for each
    pair ``{c1, c2}`` without ``w`` the round-1 term ``max(n_{c1}, n_{c2},
    need(g(w, c1) + g(w, c2), d + 2 cnt[w] - cnt[c1] - cnt[c2]))`` with
    ``n_c = need(g(w, c), d + cnt[w] - cnt[c])``.
    """
    n, C = r.counts.shape
    K = r.votes.shape[0]
    rows = np.arange(n)
    w = r.winner
    sec = r.first + r.second - w
    cw, cs = _bucket_votes(r.votes, w, shifts), _bucket_votes(r.votes, sec, shifts)
    g_w, g_s = gaps(r.counts, w), gaps(r.counts, sec)
    gap2 = 2 * r.beats - K + (np.arange(C)[None, :] > w[:, None])
    a, b = pair_index(C)
    B2, B3 = 2 * d + 1, 3 * d + 1

    # lower bounds: drop the (non-negative) counts of the competing classes
    low_w = _shared(d + cw, g_w, B2)
    low_r2 = np.maximum(_shared(d + cs, g_s, B2), (np.maximum(gap2, 0) + 2 * d - 1) // (2 * d))
    low_r2[rows, w] = INF
    G = g_w[:, a] + g_w[:, b]  # unclipped sum of the two gaps
    low_pair = np.maximum(np.maximum(low_w[:, a], low_w[:, b]), _shared(d + 2 * cw, G, B3))
    low_pair[(a[None, :] == w[:, None]) | (b[None, :] == w[:, None])] = INF

    def exact(i, t):
        out = np.empty(i.size, np.int64)
        r2 = t < C  # terms 0..C-1: round 2 against class t; C.. : pair t - C
        if r2.any():
            ii, c = i[r2], t[r2]
            n_s = need_exact(d + cs[:, ii] - _bucket_votes(r.votes[:, ii], c, shifts), g_s[ii, c], B2)
            lost = bucket_sums(r.not_beaten[:, ii, c], shifts)  # #{j in b : not s_j[w] > s_j[c]}
            n_2 = need_exact(2 * d - 2 * lost.astype(np.int64), gap2[ii, c], B2)
            out[r2] = np.maximum(n_s, n_2)
        if (~r2).any():
            ii, p = i[~r2], t[~r2] - C
            c1, c2 = a[p], b[p]
            x1 = _bucket_votes(r.votes[:, ii], c1, shifts)
            x2 = _bucket_votes(r.votes[:, ii], c2, shifts)
            top = cw[:, ii]
            n1 = need_exact(d + top - x1, g_w[ii, c1], B2)
            n2 = need_exact(d + top - x2, g_w[ii, c2], B2)
            ns = need_exact(d + 2 * top - x1 - x2, G[ii, p], B3)
            out[~r2] = np.maximum(np.maximum(n1, n2), ns)
        return out

    return branch_and_bound(np.concatenate([low_r2, low_pair], axis=1), exact) - 1
