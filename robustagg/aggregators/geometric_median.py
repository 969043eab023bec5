"""Geometric median by smoothed Weiszfeld, run entirely in the ``n x n`` Gram space."""

from __future__ import annotations

import numpy as np
import torch

from robustagg._validation import check_choice, check_float, check_int
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
    all (one Gram matrix, one final combination). It stops when an iteration lowers the
    objective by less than ``tol / 10`` relatively (so the objective is within about
    ``tol`` of its minimum), or after ``max_iter`` iterations. ``nu`` is relative to the
    median pairwise distance. ``solver="cvxpy"`` solves the same problem with cvxpy
    (a reference for small inputs; needs the ``dev`` extra). Needs ``n > 2f``.
    ``last`` holds the weights ``alpha``, the iteration count and the objective.

    References
    ----------
    Weiszfeld, "Sur le point pour lequel la somme des distances de n points donnés est
    minimum", Tohoku Math. J. 1937.
    Pillutla, Kakade, Harchaoui, "Robust Aggregation for Federated Learning",
    IEEE Trans. Signal Processing 2022.
    """

    bound = "n > 2f"
    uses_gram = True

    def __init__(self, f: int = 0, tol: float = 1e-6, max_iter: int = 1000, nu: float = 1e-6,
                 solver: str = "weiszfeld") -> None:
        super().__init__(f)
        self.tol = check_float(tol, "tol", minimum=0.0, strict_min=True)
        self.max_iter = check_int(max_iter, "max_iter", minimum=1)
        self.nu = check_float(nu, "nu", minimum=0.0, strict_min=True)
        self.solver = check_choice(solver, "solver", ("weiszfeld", "cvxpy"))
        self.last: dict = {}

    def _aggregate(self, X, f, G):
        if self.solver == "cvxpy":
            return self._cvxpy(X)
        n = X.shape[0]
        D, G = ops.sq_distances(X, G)
        G64 = G.to(torch.float64)
        diag = torch.diagonal(G64)
        off = D[~torch.eye(n, dtype=torch.bool, device=D.device)]
        scale = float(off.to(torch.float64).median().sqrt()) if off.numel() else 0.0
        nu = self.nu * (scale if scale > 0 else 1.0)
        alpha = torch.full((n,), 1.0 / n, dtype=torch.float64, device=X.device)

        def distances(a):
            Ga = G64 @ a
            return (a @ Ga - 2 * Ga + diag).clamp_min(0).sqrt()

        dist = distances(alpha)
        objective = float(dist.sum())
        iterations = 0
        for iterations in range(1, self.max_iter + 1):
            w = 1.0 / dist.clamp_min(nu)
            alpha_new = w / w.sum()
            dist_new = distances(alpha_new)
            new_objective = float(dist_new.sum())
            if new_objective > objective:  # rounding noise at the optimum: keep the better point
                break
            alpha, dist = alpha_new, dist_new
            done = objective - new_objective <= 0.1 * self.tol * new_objective
            objective = new_objective
            if done:
                break
        self.last = {"weights": alpha, "iterations": iterations, "objective": objective}
        return ops.combine_rows(alpha, X)

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
