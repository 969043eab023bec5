"""Subset rules: the mean of the ``n - f`` inputs that look most alike (CGE, MDA, SMEA).

Each decides from a small statistic (the row norms, or the Gram matrix) which rows to
average, then takes one ``(n,) @ (n, d)`` product: the input is read once or twice.
"""

from __future__ import annotations

from math import comb

import numpy as np
import scipy.linalg
import torch

from robustagg._validation import Integer
from robustagg.aggregators import ops
from robustagg.aggregators.base import Aggregator
from robustagg.aggregators.registry import register

#: default largest number of size-``(n - f)`` subsets MDA and SMEA enumerate exactly.
MAX_SUBSETS = 20_000
#: SMEA's greedy search treats removals whose top eigenvalues differ by less than this fraction
#: of the current top eigenvalue as ties (then the lowest index): their computed values differ
#: by rounding alone, so which one is smaller is not a property of the inputs.
TIE_RTOL = 1e-12


@register("cge", "comparative-gradient-elimination")
class CGE(Aggregator):
    r"""Comparative gradient elimination: drop the ``f`` inputs of largest norm, average the rest.

    .. math:: \mathrm{CGE}_f(x) = \frac{1}{n-f} \sum_{i \in S} x_i, \quad
              S = \text{the } n - f \text{ indices of smallest } \|x_i\|

    (lower index on equal norms). The paper sums the kept inputs; the mean here differs from it
    by the constant factor ``n - f`` and keeps the output on the inputs' scale like every other
    rule. Only the row norms are needed (the Gram diagonal): one pass to get them, one product
    to average. ``last["selected"]`` lists the kept inputs.

    References
    ----------
    Gupta, Vaidya, "Fault-Tolerance in Distributed Optimization: The Case of Redundancy",
    PODC 2020; Gupta, Liu, Vaidya, "Byzantine Fault-Tolerant Distributed Machine Learning
    with Norm-Based Comparative Gradient Elimination", DSN Workshops 2021.
    """

    #: one line for the rule table of docs/index.md
    summary = "mean of the n − f inputs of smallest norm"

    bound = "n > 2f"
    decomposition = "norms-scales"  # row norms -> a 0 or 1/(n - f) scale per row -> their sum

    def _statistic(self, X, G):
        return ops.row_norms(X)

    def _decide(self, norms, f):
        n = norms.shape[0]
        chosen = torch.sort(norms.detach(), stable=True).indices[: n - f]
        self.last = {"selected": self._original(sorted(chosen.tolist()))}
        return ops.selection_weights(n, chosen, norms.device)


class _SubsetRule(Aggregator):
    """Shared part of MDA and SMEA: exact enumeration while ``C(n, f) <= max_subsets``, a stated
    approximation beyond; both score keep-masks ``(m, n)`` with :meth:`_scores`."""

    bound = "n > 2f"
    uses_gram = True
    decomposition = "gram-selection"
    _parameter_constraints = {**Aggregator._parameter_constraints, "max_subsets": Integer(minimum=1)}

    def __init__(self, f: int = 0, max_subsets: int = MAX_SUBSETS) -> None:
        super().__init__(f)
        self.max_subsets = self._check("max_subsets", max_subsets)

    def _decide(self, statistic, f):
        D, G = (s.detach().to(torch.float64) for s in statistic)
        n = D.shape[0]
        exact = comb(n, f) <= self.max_subsets
        if exact:
            best, best_keys = None, None
            for keep in ops.removal_sets(n, f):
                keys = self._scores(D, G, keep)
                i = ops.lexicographic_argmin(*keys)
                cand = tuple(float(k[i]) for k in keys)
                if best_keys is None or cand < best_keys:
                    best, best_keys = keep[i], cand
            keep = best
        else:
            keep = self._approximate(D, G, f)
        chosen = torch.nonzero(keep).flatten()
        self.last = {"selected": self._original(chosen.tolist()), "exact": exact}
        return ops.selection_weights(n, chosen, D.device)


@register("mda", "minimum-diameter-averaging")
class MDA(_SubsetRule):
    r"""Minimum-diameter averaging: the mean of the ``n - f`` inputs of smallest diameter.

    .. math:: \mathrm{MDA}_f(x) = \frac{1}{n-f} \sum_{i \in S^*} x_i, \quad
              S^* = \operatorname*{arg\,min}_{|S| = n-f} \max_{i, j \in S} \|x_i - x_j\|

    Several subsets can share the smallest diameter (the same farthest pair): then the one of
    smallest sum of squared pairwise distances wins, so the output does not depend on the
    order of the inputs (then the lexicographically first removed set). The search works on the
    ``n x n`` distances alone. It is exact while the ``C(n, f)`` subsets number at most
    ``max_subsets`` (20,000: every ``f`` for ``n <= 16``, ``f <= 3`` up to ``n = 50``); beyond,
    it takes the best of the ``n`` balls "an input and its ``n - f - 1`` nearest": the optimal
    subset holds some input whose ``n - f`` nearest are within the optimal diameter, so that
    ball's diameter is at most twice the minimum. ``last["exact"]`` says which was done and
    ``last["selected"]`` lists the averaged inputs.

    References
    ----------
    El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed Learning in
    Byzantium", ICML 2018; El Mhamdi, Guerraoui, Guirguis, Hoang, Rouault, "Genuinely
    Distributed Byzantine Machine Learning", PODC 2020.
    """

    #: one line for the rule table of docs/index.md
    summary = "mean of the n − f inputs of smallest diameter (exact up to max_subsets subsets, else within 2x)"

    def _scores(self, D, G, keep):
        pair = keep[:, :, None] & keep[:, None, :]
        masked = D * pair
        return masked.amax(dim=(1, 2)), masked.sum(dim=(1, 2))

    def _approximate(self, D, G, f):
        n = D.shape[0]
        keep = ops.nearest_weights(D, n - f) > 0  # row i: input i and its n - f - 1 nearest
        keys = self._scores(D, G, keep)
        return keep[ops.lexicographic_argmin(*keys)]


@register("smea", "smallest-maximum-eigenvalue-averaging")
class SMEA(_SubsetRule):
    r"""Smallest maximum eigenvalue averaging: the mean of the ``n - f`` inputs whose empirical
    covariance has the smallest largest eigenvalue.

    .. math:: \mathrm{SMEA}_f(x) = \bar x_{S^*}, \quad S^* = \operatorname*{arg\,min}_{|S| = n-f}
              \lambda_{\max}\Big(\frac{1}{|S|} \sum_{i \in S} (x_i - \bar x_S)(x_i - \bar x_S)^\top\Big)

    The covariance's nonzero eigenvalues are those of the centred ``|S| x |S|`` Gram matrix
    :math:`P G_S P / |S|`, so each subset costs one small symmetric eigenvalue problem and the
    ``d``-dimensional data is read only for the Gram matrix and the final mean (the eigenvalues
    are exact, not power-iteration estimates). Exact search while ``C(n, f) <= max_subsets``
    (lowest removed set on ties); beyond, a greedy search removes ``f`` times the input whose
    removal lowers the largest eigenvalue most (no approximation factor is claimed for it).
    Each greedy round costs one eigendecomposition :math:`K_S = U \Lambda U^\top` of the kept
    rows' centred Gram matrix, not one per candidate: removing row ``k`` of ``m`` subtracts
    :math:`\frac{m}{m-1} y_k y_k^\top` from the scatter matrix, with :math:`y_k` at coordinates
    :math:`\sqrt{\lambda_j} U_{kj}` in its eigenbasis, so the new top eigenvalue is the root of a
    secular equation in :math:`[\lambda_2, \lambda_1]`, solved for every candidate at once to
    rounding (removals within ``1e-12`` of the top eigenvalue of each other are ties, won by the
    lowest index). ``last["exact"]`` says which was done.

    References
    ----------
    Allouah, Guerraoui, Gupta, Pinot, Stephan, "On the Privacy-Robustness-Utility Trilemma in
    Distributed Learning", ICML 2023.
    """

    #: one line for the rule table of docs/index.md
    summary = ("mean of the n − f inputs whose covariance has the smallest top eigenvalue "
               "(exact up to max_subsets subsets, else greedy)")

    def _scores(self, D, G, keep):
        K = ops.centred_gram(G.expand(keep.shape[0], -1, -1), keep.to(torch.float64))
        return (torch.linalg.eigvalsh(K)[:, -1],)

    def _approximate(self, D, G, f):
        n = D.shape[0]
        live = np.arange(n)
        Gn = G.cpu().numpy()
        for _ in range(f):
            m = live.size
            K = ops.centred_gram(torch.from_numpy(Gn[np.ix_(live, live)]), torch.ones(m, dtype=torch.float64))
            # scipy's LAPACK runs this small problem on one thread; torch's (MKL) may start its
            # OpenMP threads, whose barrier costs milliseconds per call on a busy machine
            lam, U = scipy.linalg.eigh(K.numpy(), driver="evd")
            top = _top_eigenvalue_without_each(lam, U, m / (m - 1))
            # equal up to rounding (TIE_RTOL of the current top eigenvalue): the lowest index
            live = np.delete(live, np.flatnonzero(top <= top.min() + TIE_RTOL * max(lam[-1], 0.0))[0])
        keep = torch.zeros(n, dtype=torch.bool, device=D.device)
        keep[torch.from_numpy(live).to(D.device)] = True
        return keep


def _top_eigenvalue_without_each(lam: np.ndarray, U: np.ndarray, c: float) -> np.ndarray:
    r"""For every row ``k``: the largest eigenvalue of :math:`\Lambda - c\, z_k z_k^\top`, where
    :math:`K = U \Lambda U^\top` (``lam`` ascending) and :math:`z_{kj} = \sqrt{\lambda_j} U_{kj}`.

    With ``K`` the centred Gram matrix of ``m`` rows, their scatter matrix :math:`M` has the same
    nonzero eigenvalues and row ``k`` has the coordinates :math:`z_k` in :math:`M`'s eigenbasis;
    removing row ``k`` leaves the scatter :math:`M - \frac{m}{m-1} y_k y_k^\top`. Its top eigenvalue
    :math:`t` lies in :math:`[\max(\lambda_2, \lambda_1 - c z_{k1}^2), \lambda_1]` and solves
    :math:`R(t) = \lambda_1 - t - c z_{k1}^2 / (1 - \phi(t)) = 0` with
    :math:`\phi(t) = c \sum_{j \ge 2} z_{kj}^2 / (\lambda_j - t)` (the secular equation, written
    without its pole at :math:`\lambda_1`; :math:`R` decreases). Newton steps from
    :math:`\lambda_1`, kept inside a shrinking bracket, for every ``k`` at once."""
    lam = np.clip(lam, 0.0, None)
    m = lam.size
    top = lam[-1]
    if m == 1 or lam[-2] >= top:  # one row, or a repeated top eigenvalue that a rank-one change keeps
        return np.full(m, top)
    Z2 = c * U**2 * lam  # (m, m): c z_kj^2
    z1, Zr, rest = Z2[:, -1], Z2[:, :-1], lam[None, :-1]
    lo = np.maximum(lam[-2], top - z1)
    hi = np.full(m, top)
    t = hi.copy()
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for _ in range(100):
            r = 1.0 / (rest - t[:, None])
            q = 1.0 - (Zr * r).sum(axis=1)
            R = (top - t) - z1 / q
            dR = -1.0 - z1 * (Zr * r * r).sum(axis=1) / (q * q)
            lo = np.where(R > 0, t, lo)
            hi = np.where(R > 0, hi, t)
            new = t - R / dR
            new = np.where((new >= lo) & (new <= hi), new, lo + 0.5 * (hi - lo))
            if np.all(np.abs(new - t) <= 4 * np.finfo(float).eps * top):
                break
            t = new
    return np.clip(new, lo, hi)
