"""Distance-based selection rules: Krum, Multi-Krum, Bulyan (one Gram matrix each)."""

from __future__ import annotations

from typing import Optional

import torch

from robustagg._validation import Integer
from robustagg.aggregators import ops
from robustagg.aggregators.base import Aggregator
from robustagg.aggregators.registry import register


@register("krum")
class Krum(Aggregator):
    r"""Krum: the input whose ``n - f - 2`` nearest neighbours are closest.

    .. math:: s_i = \sum_{j \in N_i} \|x_i - x_j\|^2, \qquad \mathrm{Krum}(x) = x_{i^*},
              \quad i^* = \operatorname*{arg\,min}_i s_i

    where :math:`N_i` holds the ``n - f - 2`` inputs :math:`j \ne i` closest to :math:`x_i`.
    The lowest index wins ties (with ``n - f - 2 = 1`` the two closest inputs always tie),
    also among identical inputs whose scores differ by rounding.
    After a call, ``last["selected"]`` holds the chosen input's index
    (in the caller's numbering) and ``last["scores"]`` the scores of the finite inputs.

    References
    ----------
    Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries:
    Byzantine Tolerant Gradient Descent", NeurIPS 2017.
    """

    #: one line for the rule table of docs/index.md
    summary = ("the x_i minimising the sum of squared distances to its n − f − 2 nearest others "
               "(lowest index on ties)")

    bound = "n > 2f + 2"
    uses_gram = True
    decomposition = "gram-selection"

    def _decide(self, statistic, f):
        D, _ = statistic
        scores = ops.krum_scores(D, D.shape[0] - f - 2)
        best = int(torch.argmin(scores))
        # identical inputs have equal scores up to rounding: the lowest of them wins
        best = int(torch.nonzero((D[best] == 0) | (scores == scores[best]))[0])
        self.last = {"selected": self._original([best]), "scores": scores}
        return best

    def _apply(self, X, best):
        return X[best].clone()


@register("multi-krum", "multikrum")
class MultiKrum(Krum):
    r"""Multi-Krum: the mean of the ``m`` inputs with the lowest Krum scores.

    .. math:: \mathrm{MultiKrum}_m(x) = \frac{1}{m} \sum_{i \in M} x_i,
              \quad M = \text{the } m \text{ indices of smallest } s_i

    ``s_i`` as in :class:`Krum`; ties go to the lower index; ``m`` defaults to ``n - f``
    and is capped at the number of finite inputs.

    References
    ----------
    Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries:
    Byzantine Tolerant Gradient Descent", NeurIPS 2017.
    """

    #: one line for the rule table of docs/index.md
    summary = 'mean of the m (default n − f) lowest Krum scores'

    name = "multi-krum"
    _parameter_constraints = {**Krum._parameter_constraints, "m": Integer(minimum=1, optional=True)}

    def __init__(self, f: int = 0, m: Optional[int] = None) -> None:
        super().__init__(f)
        self.m = self._check("m", m)

    def _decide(self, statistic, f):
        D, _ = statistic
        n = D.shape[0]
        m = n - f if self.m is None else min(self.m, n)
        scores = ops.krum_scores(D, n - f - 2)
        chosen = torch.sort(scores, stable=True).indices[:m]
        weights = torch.zeros(n, dtype=torch.float64, device=D.device)
        weights[chosen] = 1.0 / m
        self.last = {"selected": self._original(chosen.tolist()), "scores": scores}
        return weights

    def _apply(self, X, weights):
        return ops.combine_rows(weights, X)


@register("bulyan")
class Bulyan(Aggregator):
    r"""Bulyan: iterated Krum selection, then a coordinate-wise mean around the median.

    1. Select :math:`\theta = n - 2f` inputs one at a time: each is the Krum winner of the
       inputs not selected yet, scored on that remaining set (``r`` inputs) with
       ``max(r - f - 2, 1)`` neighbours (Krum's count; at least one neighbour once the
       remaining set is too small for it), the lowest index on ties. With one neighbour
       the two closest inputs always tie, so for ``f <= 2`` the selection can depend on
       the order of the inputs.
    2. Per coordinate, average the :math:`\beta = \theta - 2f` selected values closest
       to their median:

    .. math:: [\mathrm{Bulyan}(x)]_k = \frac{1}{\beta} \sum_{i \in B_k} x_{i,k}

    ``last["selected"]`` lists the :math:`\theta` inputs of step 1.

    References
    ----------
    El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed Learning
    in Byzantium", ICML 2018.
    """

    #: one line for the rule table of docs/index.md
    summary = ("θ = n − 2f iterated Krum picks, then per coordinate the mean of the θ − 2f values "
               "closest to the median")

    bound = "n >= 4f + 3"
    uses_gram = True
    decomposition = "gram-selection"

    def _decide(self, statistic, f):
        D, _ = statistic
        n = D.shape[0]
        theta, beta = n - 2 * f, n - 4 * f
        remaining = torch.arange(n, device=D.device)
        selected = []
        for _ in range(theta):
            sub = D.index_select(0, remaining).index_select(1, remaining)
            scores = ops.krum_scores(sub, max(remaining.numel() - f - 2, 1))
            pick = int(torch.argmin(scores))
            selected.append(int(remaining[pick]))
            remaining = torch.cat([remaining[:pick], remaining[pick + 1 :]])
        self.last = {"selected": self._original(selected)}
        return torch.tensor(sorted(selected), dtype=torch.long), beta

    def _apply(self, X, decision):
        rows, beta = decision
        return ops.coordinate_mean_around_median(X, beta, rows=rows)
