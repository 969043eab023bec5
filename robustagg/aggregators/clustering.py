"""Clipped clustering: clip to the median norm seen so far, keep the larger cosine cluster."""

from __future__ import annotations

import numpy as np
import torch

from robustagg._validation import Real
from robustagg.aggregators import ops
from robustagg.aggregators.base import Aggregator, _check_keys
from robustagg.aggregators.registry import register


@register("clipped-clustering", "clippedclustering")
class ClippedClustering(Aggregator):
    r"""Clipped clustering: clip every input to the median of all norms seen so far, split the
    inputs into two clusters by cosine distance, average the larger cluster.

    .. math:: \tau = \min\big(\mathrm{median}(\text{norms of this and earlier calls}),
              \tau_{\max}\big), \quad \tilde x_i = x_i \min\Big(1, \frac{\tau}{\|x_i\|}\Big)

    then average-linkage agglomerative clustering of the :math:`1 - \cos(x_i, x_j)` distances
    into two clusters (clipping does not change the cosines), and the mean of the
    :math:`\tilde x_i` of the larger cluster. On equal sizes the cluster of smaller mean
    within-cluster distance wins (then the one holding the lowest index), so the output does not
    depend on the input order. Norms and cosines come from the Gram matrix; the data is read for
    it and for the final ``(n,) @ (n, d)`` product. The norm history is state
    (:meth:`state_dict`, :meth:`reset`). ``last["selected"]`` lists the averaged inputs.

    References
    ----------
    Li, Xie, Zhang, "An Experimental Study of Byzantine-Robust Aggregation Schemes in
    Federated Learning", IEEE Trans. Big Data 2023.
    """

    #: one line for the rule table of docs/index.md
    summary = "clip to the running median norm, mean of the larger of two cosine clusters (average linkage)"

    bound = "n > 2f"
    uses_gram = True
    decomposition = "gram-weights"
    _parameter_constraints = {**Aggregator._parameter_constraints,
                              "max_tau": Real(minimum=0.0, strict_min=True)}

    def __init__(self, f: int = 0, max_tau: float = 1e5) -> None:
        super().__init__(f)
        self.max_tau = self._check("max_tau", max_tau)
        self.reset()

    def reset(self) -> None:
        self._norms = torch.zeros(0, dtype=torch.float64)

    def state_dict(self) -> dict:
        """``{"norms": every norm seen so far}``."""
        return {"norms": self._norms.clone()}

    def load_state_dict(self, state: dict) -> None:
        _check_keys(self, state, ("norms",))
        self._norms = torch.as_tensor(state["norms"], dtype=torch.float64).clone()

    def _statistic(self, X, G):
        # cosines need the plain Gram matrix (not the centred one sq_distances may return)
        return (ops.gram(X) if G is None else G).detach()

    def _decide(self, G, f):
        from scipy.cluster.hierarchy import fcluster, linkage

        G = G.to(torch.float64).cpu()
        n = G.shape[0]
        norms = torch.diagonal(G).clamp_min(0).sqrt()
        self._norms = torch.cat([self._norms, norms])
        tau = min(float(np.median(self._norms.numpy())), self.max_tau)
        scales = ops.clip_scales(norms, tau) if tau > 0 else torch.zeros(n, dtype=torch.float64)
        safe = norms.clamp_min(torch.finfo(torch.float64).tiny)
        dist = (1.0 - G / safe[:, None] / safe[None, :]).clamp(0.0, 2.0)
        dist[norms == 0, :] = 1.0
        dist[:, norms == 0] = 1.0
        dist.fill_diagonal_(0.0)
        if n < 2:
            chosen = torch.arange(n)
        else:
            iu = np.triu_indices(n, 1)
            labels = fcluster(linkage(dist.numpy()[iu], method="average"), 2, criterion="maxclust")
            labels = torch.as_tensor(labels)
            groups = [torch.nonzero(labels == k).flatten() for k in torch.unique(labels)]
            spread = [float(dist[g][:, g].sum()) / max(g.numel() * (g.numel() - 1), 1) for g in groups]
            key = lambda k: (-groups[k].numel(), spread[k], int(groups[k][0]))  # noqa: E731
            chosen = groups[min(range(len(groups)), key=key)]
        w = torch.zeros(n, dtype=torch.float64)
        w[chosen] = scales[chosen] / chosen.numel()
        self.last = {"selected": self._original(chosen.tolist()), "tau": tau}
        return w.to(G.device)
