"""Ensemble votes: plurality (DPA, FA) and the run-off election (ROE).

Scores are laid out ``(K, N, C)``: K base models, N test points, C classes.
Base model ``j`` votes for :math:`v_j = \\arg\\max_c s_j[c]` (ties to the
smaller class index).

* Round 1 / plurality: :math:`N_1[c] = \\#\\{j : v_j = c\\}`; classes are ranked
  by a stable sort of :math:`N_1` (ties to the smaller index). The plurality
  prediction is the first, :math:`m_1`; the runner-up is :math:`m_2`.
* Round 2: :math:`N_2(a > b) = \\#\\{j : s_j[a] > s_j[b]\\}` (strict). The run-off
  winner is :math:`m_1` if :math:`2 N_2(m_1 > m_2) - K > 0`; an exact tie
  (:math:`= 0`) goes to the smaller of :math:`m_1, m_2`; otherwise :math:`m_2`.

References
----------
Rezaei, Banihashem, Chegini, Feizi, "Run-Off Election: Improved Provable
Defense against Data Poisoning Attacks", ICML 2023.

Levine & Feizi, "Deep Partition Aggregation", ICLR 2021.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from robustagg._validation import check_choice

__all__ = ["column_hist", "combine_scores", "plurality", "run_off", "vote_counts"]


def as_scores(scores: Any) -> np.ndarray:
    """Validate a ``(K, N, C)`` scores array; numpy view of it (tensors are moved to the CPU)."""
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().numpy()
    arr = np.asarray(scores)
    if arr.ndim != 3:
        raise ValueError(f"scores must be (models, test points, classes), got shape {arr.shape}")
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"scores must be real numbers, got dtype {arr.dtype}")
    K, _, C = arr.shape
    if K < 1:
        raise ValueError("scores need at least one base model")
    if C < 2:
        raise ValueError(f"scores need at least two classes, got {C}")
    return arr


def column_hist(values: np.ndarray, nbins: int) -> np.ndarray:
    """``(n, nbins)`` histogram of each column of a ``(K, n)`` array of integers in ``[0, nbins)``.

    Round-1 vote counts (``nbins = C``) and the bucket-reduction histograms of
    Finite Aggregation are both this one ``bincount``.
    """
    n = values.shape[1]
    flat = values + (np.arange(n, dtype=np.int64) * nbins)[None, :]
    return np.bincount(flat.ravel(), minlength=n * nbins).reshape(n, nbins)


def chunk_size(scores: np.ndarray, elements: int = 1 << 22) -> int:
    """Test points per chunk so that one ``(K, n, C)`` slice has about ``elements`` entries."""
    K, _, C = scores.shape
    return max(1, elements // (K * C))


@dataclass
class Round:
    """The election on a chunk of ``n`` test points."""

    votes: np.ndarray      # (K, n) argmax of every base model
    counts: np.ndarray     # (n, C) N1
    first: np.ndarray      # (n,) m1, the plurality winner
    second: np.ndarray     # (n,) m2
    winner: np.ndarray     # (n,) run-off winner
    beats: np.ndarray      # (n, C) N2(winner > c)
    not_beaten: Optional[np.ndarray] = None  # (K, n, C) bool: not s_j[winner] > s_j[c]

    def subset(self, idx: np.ndarray) -> "Round":
        """The same election restricted to the test points ``idx``."""
        nb = None if self.not_beaten is None else self.not_beaten[:, idx]
        return Round(self.votes[:, idx], self.counts[idx], self.first[idx], self.second[idx],
                     self.winner[idx], self.beats[idx], nb)


def _not_beaten(sc: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """``(K, n, C)`` bool: not ``s_j[cls] > s_j[c]`` (scores hold no NaN)."""
    return np.take_along_axis(sc, cls[None, :, None], 2) <= sc


def election(sc: np.ndarray, *, run_off: bool = True, bits: bool = False) -> Round:
    """Both rounds on a ``(K, n, C)`` chunk; ``bits`` keeps the per-model round-2 indicators."""
    K, n, C = sc.shape
    votes = sc.argmax(axis=2)  # first maximum: ties to the smaller index (a NaN wins argmax)
    if sc.dtype.kind == "f" and np.isnan(np.take_along_axis(sc, votes[..., None], 2)).any():
        raise ValueError("scores contain NaN: a base model's output must be comparable")
    counts = column_hist(votes, C)
    first = counts.argmax(axis=1)
    masked = counts.copy()
    masked[np.arange(n), first] = -1
    second = masked.argmax(axis=1)
    if not run_off:
        return Round(votes, counts, first, second, first, np.zeros((n, C), np.int64))
    nb = _not_beaten(sc, first)
    beats = K - np.add.reduce(nb.view(np.uint8), axis=0, dtype=np.int64)
    elec = 2 * beats[np.arange(n), second] - K
    winner = np.where((elec > 0) | ((elec == 0) & (first < second)), first, second)
    swap = np.flatnonzero(winner != first)
    if swap.size:
        nb2 = _not_beaten(sc[:, swap], second[swap])
        beats[swap] = K - np.add.reduce(nb2.view(np.uint8), axis=0, dtype=np.int64)
        if bits:
            nb[:, swap] = nb2
    return Round(votes, counts, first, second, winner, beats, nb if bits else None)


def _predict(scores: Any, run_off: bool) -> np.ndarray:
    arr = as_scores(scores)
    N = arr.shape[1]
    out = np.empty(N, dtype=np.int64)
    step = chunk_size(arr)
    for lo in range(0, N, step):
        out[lo:lo + step] = election(arr[:, lo:lo + step], run_off=run_off).winner
    return out


def vote_counts(scores: Any) -> np.ndarray:
    """Round-1 votes :math:`N_1[c] = \\#\\{j : \\arg\\max s_j = c\\}` per test point, shape ``(N, C)``.

    References
    ----------
    Levine & Feizi, "Deep Partition Aggregation", ICLR 2021.
    """
    arr = as_scores(scores)
    N = arr.shape[1]
    out = np.empty((N, arr.shape[2]), dtype=np.int64)
    step = chunk_size(arr)
    for lo in range(0, N, step):
        out[lo:lo + step] = election(arr[:, lo:lo + step], run_off=False).counts
    return out


def plurality(scores: Any) -> np.ndarray:
    """Plurality vote of the base models (DPA / FA prediction).

    .. math:: \\hat y = \\arg\\max_c N_1[c], \\quad N_1[c] = \\#\\{j : \\arg\\max s_j = c\\}

    with ties to the smaller class index (in the per-model argmax too).

    Parameters
    ----------
    scores : array-like or torch.Tensor, shape (K, N, C)

    Returns
    -------
    numpy.ndarray of int64, shape (N,)

    References
    ----------
    Levine & Feizi, "Deep Partition Aggregation", ICLR 2021.
    """
    return _predict(scores, run_off=False)


def run_off(scores: Any) -> np.ndarray:
    """Run-off election: the top two classes of round 1 meet in a second round.

    .. math::
        \\hat y = \\begin{cases} m_1 & 2 N_2(m_1 > m_2) - K > 0 \\text{ or }
        (= 0 \\text{ and } m_1 < m_2) \\\\ m_2 & \\text{otherwise} \\end{cases}

    where :math:`m_1, m_2` are the first two classes of a stable ranking of the
    round-1 votes and :math:`N_2(a > b)` counts base models with
    :math:`s_j[a] > s_j[b]` (strict).

    Returns
    -------
    numpy.ndarray of int64, shape (N,)

    References
    ----------
    Rezaei, Banihashem, Chegini, Feizi, "Run-Off Election: Improved Provable
    Defense against Data Poisoning Attacks", ICML 2023.
    """
    return _predict(scores, run_off=True)


def combine_scores(scores: Union[Sequence[Any], Any], reduce: str = "sum") -> Any:
    """DPA*: merge several seeded models per partition by summing their logits.

    .. math:: s_i = \\sum_{r=1}^{R} s_i^{(r)}  \\qquad (\\text{or } \\tfrac1R \\sum_r \\text{ with } ``reduce="mean"``)

    Parameters
    ----------
    scores : sequence of ``(K, N, C)`` arrays, or one ``(R, K, N, C)`` array
        ``scores[r][i]``: test scores of the model trained with seed ``r`` on
        partition ``i``. The reference averages (``"mean"``); both give the
        same votes up to floating-point rounding.
    reduce : {"sum", "mean"}

    Returns
    -------
    ``(K, N, C)`` array of the input's kind (numpy in, numpy out).

    References
    ----------
    Rezaei et al., "Run-Off Election", ICML 2023 (DPA* ensembles, section 5).
    """
    check_choice(reduce, "reduce", ("sum", "mean"))
    if isinstance(scores, (np.ndarray, torch.Tensor)):
        stack = scores
        if stack.ndim != 4:
            raise ValueError(f"stacked scores must be (seeds, models, points, classes), got {tuple(stack.shape)}")
    else:
        items = list(scores)
        if not items:
            raise ValueError("combine_scores needs at least one scores array")
        shapes = {tuple(x.shape) for x in items}
        if len(shapes) != 1:
            raise ValueError(f"all scores must have the same shape, got {sorted(shapes)}")
        stack = torch.stack([torch.as_tensor(x) for x in items]) if isinstance(items[0], torch.Tensor) \
            else np.stack([np.asarray(x) for x in items])
    out = stack.sum(0) if reduce == "sum" else stack.mean(0)
    return out
