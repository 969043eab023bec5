"""MoNNA as a rule: a peer's mixing of what it received, centred on its own vector."""

from __future__ import annotations

import torch

from robustagg._validation import Integer
from robustagg.aggregators import ops
from robustagg.aggregators.base import Aggregator
from robustagg.aggregators.registry import register


@register("monna")
class MoNNA(Aggregator):
    r"""MoNNA's nearest-neighbour averaging: the mean of the ``n - f`` inputs closest to the
    caller's own input ``x_index`` (itself included).

    .. math:: \mathrm{MoNNA}_{f, i}(x) = \frac{1}{n - f} \sum_{j \in N_i} x_j

    :math:`N_i` holds :math:`x_i` and its ``n - f - 1`` nearest other inputs (Euclidean, lower
    index on ties): row ``index`` of :class:`~robustagg.aggregators.preaggregators.NNM`, and the
    ``nna`` mixing of :mod:`robustagg.train.p2p` for node ``index``. Distances are measured
    from ``x_index`` only (one pass over the input, no Gram matrix). If the own row is
    non-finite (dropped, counted against ``f``), the centre is the coordinate-wise median of the
    rows kept instead. The squared distances come from one matrix-vector product and the row norms
(:math:`\|x_j\|^2 + \|x_i\|^2 - 2 x_j^\top x_i`), recomputed from explicit differences when some
distance is too small against the norms for that to be accurate. The output depends on which row is the caller's by design.
    ``last["selected"]`` lists the averaged inputs.

    Parameters
    ----------
    f : int
        Declared number of Byzantine inputs.
    index : int
        Row of the caller's own vector (0 by default, as in ByzFL's ``idx``).

    References
    ----------
    Farhadkhani, Guerraoui, Gupta, Hoang, Pinot, Stephan, "Robust Collaborative Learning with
    Linear Gradient Overhead", ICML 2023.
    """

    #: one line for the rule table of docs/index.md
    summary = "mean of the n − f inputs nearest the caller's own x_index (itself included)"

    bound = "n > 2f"
    decomposition = "gram-weights"  # statistic: row `index` of the distance matrix
    _parameter_constraints = {**Aggregator._parameter_constraints, "index": Integer(minimum=0)}

    def __init__(self, f: int = 0, index: int = 0) -> None:
        super().__init__(f)
        self.index = self._check("index", index)

    def _statistic(self, X, G):
        n_caller = X.shape[0] + self.dropped
        if self.index >= n_caller:
            raise ValueError(f"monna: index={self.index} but only {n_caller} updates were given")
        own = self.index if self.kept is None else torch.nonzero(self.kept == self.index).flatten()
        if self.kept is not None and own.numel() == 0:
            centre, own = ops.coordinate_median(X.detach()), None
        else:
            own = int(own)
            centre = X[own].detach()
        return _sq_distances_to(X.detach(), centre), own

    def _decide(self, statistic, f):
        dist, own = statistic
        n = dist.shape[0]
        keyed = dist.clone()
        if own is not None:
            keyed[own] = -1.0  # itself first
        chosen = torch.sort(keyed, stable=True).indices[: n - f]
        self.last = {"selected": self._original(sorted(chosen.tolist()))}
        return ops.selection_weights(n, chosen, dist.device)


def _sq_distances_to(X: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``||x_j - v||^2`` (float64) from ``X @ v`` and the norms; from explicit differences when
    cancellation would cost more than about 3 of the dtype's digits."""
    acc = ops.accumulation_dtype(X.dtype)
    Xa, va = (X, v) if acc == X.dtype else (X.to(acc), v.to(acc))
    dots = (Xa @ va).to(torch.float64)
    sq = ops.row_norms(Xa).to(torch.float64) ** 2
    sv = float(torch.linalg.vector_norm(va.to(torch.float64))) ** 2
    d2 = (sq + sv - 2 * dots).clamp_min(0)
    eps = torch.finfo(acc).eps
    if not bool(torch.isfinite(d2).all()) or bool((d2 < (16 * eps / 1e-3) * (sq + sv)).sum() > 1):
        d2 = ops.distances_to(X, v).to(torch.float64) ** 2  # (the centre itself is always "too close")
    return d2
