"""Geometric median by smoothed Weiszfeld, run entirely in the ``n x n`` Gram space."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from robustagg._validation import Choice, Integer, Opaque, Real
from robustagg.aggregators import ops
from robustagg.aggregators.base import Aggregator
from robustagg.aggregators.registry import register


@register("geometric-median", "geomed", "rfa")
class GeometricMedian(Aggregator):
    r"""Geometric median (spatial median, RFA).

    .. math:: \mathrm{GM}(x_1..x_n) = \operatorname*{arg\,min}_z \sum_{i=1}^n \|z - x_i\|_2

    Solved by the smoothed Weiszfeld iteration

    .. math:: z^{t+1} = \frac{\sum_i w_i x_i}{\sum_i w_i}, \quad
              w_i = \frac{1}{\max(\nu, \|z^t - x_i\|)}

    from the mean. Every iterate is a convex combination :math:`z = \sum_i \alpha_i x_i`,
    so :math:`\|z - x_i\|^2 = \alpha^\top G \alpha - 2 (G\alpha)_i + G_{ii}` comes from the
    Gram matrix ``G``: the iterations cost :math:`O(n^2)` and the data is read twice in
    all (one Gram matrix, one final combination). It stops when a lower bound on the
    minimum from the dual problem (:func:`_lower_bound`) certifies
    :math:`F(z) - \min F \le \mathrm{tol} \cdot \min F`, :math:`F` the objective above (each
    iteration also tests the input nearest to :math:`z`, since Weiszfeld only creeps towards
    an optimum that is an input), or after ``max_iter`` iterations. ``tol`` is relative to
    the objective, which far outliers dominate: ask for a smaller ``tol`` to pin the point
    down at the honest inputs' scale then. ``nu`` is relative to the median pairwise
    distance. ``solver="cvxpy"`` solves the same problem with cvxpy (a reference for small
    inputs; needs the ``dev`` extra).
    ``iters`` runs exactly that many Weiszfeld steps and no stopping test (the fixed count
    ByzFL's ``nb_iter`` and other peers use); with it, ``init`` starts the iteration from a given
    point :math:`z^0` (a vector of ``d`` entries) instead of the mean: its distances to the
    inputs take one pass over the data, after which every iterate is again a convex combination
    (with ``iters=0`` the output is ``init`` itself). The certified solver (``iters=None``)
    always starts from the mean.
    ``last`` holds the weights ``alpha``, the iteration count, the objective and its
    certified lower bound. A gradient flows through the final combination only (the
    weights count as constants).

    References
    ----------
    Weiszfeld, "Sur le point pour lequel la somme des distances de n points donnés est
    minimum", Tohoku Math. J. 1937.
    Pillutla, Kakade, Harchaoui, "Robust Aggregation for Federated Learning",
    IEEE Trans. Signal Processing 2022.
    """

    #: one line for the rule table of docs/index.md
    summary = 'argmin_z Σ‖z − x_i‖ (smoothed Weiszfeld in Gram space; `solver="cvxpy"`)'

    bound = "n > 2f"
    uses_gram = True
    decomposition = "gram-weights"
    _parameter_constraints = {**Aggregator._parameter_constraints, "tol": Real(minimum=0.0, strict_min=True),
                              "max_iter": Integer(minimum=1), "nu": Real(minimum=0.0, strict_min=True),
                              "solver": Choice("weiszfeld", "cvxpy"), "iters": Integer(minimum=0, optional=True),
                              "init": Opaque(invalid=["abc", [[1.0], [2.0]], [float("nan")]])}

    def __init__(self, f: int = 0, tol: float = 1e-6, max_iter: int = 1000, nu: float = 1e-6,
                 solver: str = "weiszfeld", iters: Optional[int] = None, init: Any = None) -> None:
        super().__init__(f)
        self.tol = self._check("tol", tol)
        self.max_iter = self._check("max_iter", max_iter)
        self.nu = self._check("nu", nu)
        self.solver = self._check("solver", solver)
        self.iters = self._check("iters", iters)
        self.init = None if init is None else _check_vector(init, "init")

    def _aggregate(self, X, f, G):
        if self.solver == "cvxpy":
            return self._cvxpy(X)
        if self.init is not None and self.iters == 0:
            self.last = {"iterations": 0}
            return self.init.to(dtype=X.dtype, device=X.device).clone()
        return super()._aggregate(X, f, G)

    def _statistic(self, X, G):
        D, G = ops.sq_distances(X.detach(), None if G is None else G.detach(), reduce=self._gram_over_shards)
        if self.init is None:
            return D, G, None
        offset, total = self._columns(X.shape[1])
        if self.init.numel() != total:
            raise ValueError(f"geometric-median: init has {self.init.numel()} entries, updates have {total}")
        start = self.init.flatten()[offset : offset + X.shape[1]].to(dtype=X.dtype, device=X.device)
        return D, G, self._sum_over_shards(ops.sq_distances_to(X.detach(), start)).sqrt()

    def _smoothing(self, D, G):
        """``G`` in float64, its diagonal, and ``nu`` scaled by the median pairwise distance."""
        n = D.shape[0]
        G64 = G.to(torch.float64)
        off = D[~torch.eye(n, dtype=torch.bool, device=D.device)]
        scale = float(off.to(torch.float64).median().sqrt()) if off.numel() else 0.0
        return G64, torch.diagonal(G64), self.nu * (scale if scale > 0 else 1.0)

    def _decide(self, statistic, f):
        D, G, init_dist = statistic
        if self.iters is not None:
            return self._fixed(D, G, init_dist)
        n = D.shape[0]
        G64, diag, nu = self._smoothing(D, G)
        # start at the mean of the n - f rows nearest a centre row, not at the mean of all rows: a
        # combination with weight on far rows (1e20 where the others are ~1) has a squared norm
        # alpha' G alpha whose terms cancel to ~1e23 of rounding; from this start every Weiszfeld
        # step keeps alpha_i |x_i| bounded. With f = 0 it is the mean, as before.
        # the centre row: the smallest sum of distances to its n - f - 1 nearest (Krum's score, blind
        # to the f farthest rows, whose 1e76-sized distances would swamp a plain sum)
        D64 = D.to(torch.float64)
        centre = int(torch.argmin(ops.krum_scores(D64, n - f - 1 if n - f > 1 else n - 1)))
        nearest = torch.argsort(D64[centre], stable=True)[: n - f]
        alpha = torch.zeros(n, dtype=torch.float64, device=D.device)
        alpha[nearest] = 1.0 / (n - f)

        def distances(a):
            Ga = G64 @ a
            return (a @ Ga - 2 * Ga + diag).clamp_min(0).sqrt()

        dist = distances(alpha)
        objective = float(dist.sum())
        lower = _lower_bound(G64, alpha, dist, nu)
        iterations = 0
        while objective - lower > self.tol * lower and iterations < self.max_iter:
            iterations += 1
            # the optimum may be an input (Weiszfeld only creeps towards it): test the nearest one
            vertex = torch.zeros_like(alpha)
            vertex[torch.argmin(dist)] = 1.0
            dist_v = distances(vertex)
            lower = max(lower, _lower_bound(G64, vertex, dist_v, nu))
            if float(dist_v.sum()) - lower <= self.tol * lower:
                alpha, dist, objective = vertex, dist_v, float(dist_v.sum())
                break
            w = 1.0 / dist.clamp_min(nu)
            alpha_new = w / w.sum()
            dist_new = distances(alpha_new)
            new_objective = float(dist_new.sum())
            if new_objective > objective:  # rounding noise at the optimum: keep the better point
                break
            alpha, dist, objective = alpha_new, dist_new, new_objective
            lower = max(lower, _lower_bound(G64, alpha, dist, nu))
        self.last = {"weights": alpha, "iterations": iterations, "objective": objective, "lower_bound": lower}
        return alpha

    def _fixed(self, D, G, init_dist):
        """Exactly ``self.iters`` smoothed Weiszfeld steps from the mean or from ``init``."""
        n = D.shape[0]
        G64, diag, nu = self._smoothing(D, G)
        alpha = torch.full((n,), 1.0 / n, dtype=torch.float64, device=D.device)
        dist = init_dist
        for step in range(self.iters):
            if dist is None:
                Ga = G64 @ alpha
                dist = (alpha @ Ga - 2 * Ga + diag).clamp_min(0).sqrt()
            w = 1.0 / dist.clamp_min(nu)
            alpha, dist = w / w.sum(), None
        self.last = {"weights": alpha, "iterations": self.iters}
        return alpha

    def _cvxpy(self, X):
        try:
            import cvxpy as cp
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError("solver='cvxpy' needs cvxpy: pip install robustagg[dev]") from exc
        data = X.detach().cpu().to(torch.float64).numpy()
        shift = np.median(data, axis=0)
        z = cp.Variable(data.shape[1])
        problem = cp.Problem(cp.Minimize(cp.sum(cp.norm(data - shift - z[None, :], 2, axis=1))))
        problem.solve(solver=cp.CLARABEL if "CLARABEL" in cp.installed_solvers() else None)
        out = torch.from_numpy(z.value + shift)
        self.last = {"objective": float(problem.value), "status": problem.status}
        return out.to(dtype=X.dtype, device=X.device)


def _lower_bound(G: torch.Tensor, alpha: torch.Tensor, dist: torch.Tensor, nu: float) -> float:
    r"""A lower bound on :math:`\min_z F(z)`, :math:`F(z) = \sum_i \|z - x_i\|`, from the dual problem
    at a point :math:`z = \sum_k \alpha_k x_k` (``dist`` holds :math:`\|z - x_i\|`).

    Any :math:`v_i` with :math:`\|v_i\| \le 1` and :math:`\sum_i v_i = 0` gives the lower bound
    :math:`L = \sum_i v_i \cdot (z - x_i) \le \min F`. We take :math:`u_i = (z - x_i)/\|z - x_i\|`
    for the inputs farther than ``nu`` (and not the nearest), give the remaining "near" inputs
    equal shares of :math:`-R`, :math:`R` the sum of the others (shrunk to norm <= 1 each), and
    centre and rescale: :math:`v_i = (u_i - g/n) / (1 + \|g\|/n)`, :math:`g = \sum_i u_i`.
    The bound is tight at the optimum, also when the optimum is an input. Every vector is a
    combination of the inputs with coefficients summing to 0, so inner products come from ``G``.
    """
    n = dist.numel()
    near = dist <= nu
    near[torch.argmin(dist)] = True
    m = int(near.sum())
    inv = torch.where(near, torch.zeros_like(dist), 1.0 / dist.clamp_min(nu))
    r = alpha * inv.sum() - inv  # coefficients of R = sum over far inputs of u_i
    Gr = G @ r
    norm_r = float((r @ Gr).clamp_min(0).sqrt())
    shrink = 1.0 / max(1.0, norm_r / m)  # each near input gets u = -shrink * R / m
    r_dot_z = float(Gr @ alpha)
    near_term = -(shrink / m) * (m * r_dot_z - float(Gr[near].sum()))
    inner = float(dist[~near].sum()) + near_term  # sum_i u_i . (z - x_i)
    g_scale = 1.0 - shrink  # g = g_scale * R
    g_dot = g_scale * (r_dot_z - float(Gr.sum()) / n)  # g . (z - mean of the inputs)
    lower = (inner - g_dot) / (1.0 + g_scale * norm_r / n)
    return lower


def _check_vector(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, str):
        raise TypeError(f"{name} must be a vector, got {value!r}")
    try:
        v = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a vector, got {type(value).__name__}") from None
    if v.dim() != 1:
        raise ValueError(f"{name} must be one vector (1-D), got shape {tuple(v.shape)}")
    v = v.to(torch.float64)
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{name} must be finite (it holds NaN/Inf)")
    return v
