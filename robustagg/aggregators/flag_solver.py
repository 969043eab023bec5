"""Flag Aggregator solvers: the IRLS in the ``p x p`` Gram space, and the literal SVD path.

Notation (see ``docs/flag.md``): ``U = [u_1 .. u_p]`` the ``d x p`` unit vectors
(``u_i = 0`` for a zero input), ``K = U^T U``, ``H = U^T Y Y^T U`` (so
``v_i = H_ii = ||Y^T u_i||^2``).

One IRLS step builds ``A A^T = U M U^T`` with the ``p x p`` matrix
``M = diag(w) + 2 (diag(C 1) - C)`` (``w_i`` and ``c_ij`` the squared column scales;
each unordered pair appears twice among the ordered pairs). With ``M = L L^T``
(Cholesky) and the eigendecomposition ``L^T K L = V diag(s) V^T``, the top-``m``
left singular vectors of ``A`` are ``Y = U L V_m diag(s_m)^{-1/2}``. Nothing needs
``Y`` itself:

* ``Y^T U = diag(s_m)^{1/2} V_m^T L^{-1}``, so ``H = F F^T`` with ``F = L^{-T} V_m diag(s_m)^{1/2}``;
* ``Y Y^T U b = U L V_m V_m^T L^{-1} b`` for any ``b`` (the final aggregate).

Neither formula divides by an eigenvalue, so directions of (near-)zero eigenvalue,
which the SVD fills with arbitrary vectors orthogonal to ``span(U)``, contribute
(almost) nothing; those below the Gram matrix's resolution are dropped exactly.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch

#: rows of the random init drawn per block (the stream does not depend on it).
RANDOM_BLOCK = 1 << 15


def random_init_blocks(d: int, m: int, seed: int, block: int = RANDOM_BLOCK, lo: int = 0,
                       hi: Optional[int] = None,
                       states: Optional[Dict[tuple, torch.Tensor]] = None) -> Iterator[Tuple[int, int, torch.Tensor]]:
    """Yield ``(start, stop, W[start:stop])`` of ``W = torch.rand(d, m) - 0.5`` after
    ``torch.manual_seed(seed)`` (the reference's init, before its QR), block by block,
    for the rows in ``[lo, hi)`` only (a coordinate shard).

    The CPU generator fills rows in order, so the blocks concatenate to the one-shot draw:
    the same ``W`` on every device, without holding the ``d x m`` matrix. Its Mersenne Twister
    cannot jump ahead, so the rows before ``lo`` (whole blocks) are drawn and discarded;
    ``states`` (a dict kept by the caller) remembers the generator's state at the block where
    ``lo`` falls, so that later calls with the same ``(m, seed, lo)`` start there: they draw
    only rows of ``[lo, hi)``'s blocks, and the same ones."""
    hi = d if hi is None else hi
    gen = torch.Generator(device="cpu").manual_seed(seed)
    first = min(lo, hi) // block * block  # every block before it is whole
    key = (m, seed, block, first)
    if first and states is not None and key in states:
        gen.set_state(states[key])
    else:
        for _ in range(0, first, block):
            torch.rand(block, m, generator=gen)
        if first and states is not None:
            states[key] = gen.get_state()
    for start in range(first, hi, block):
        stop = min(d, start + block)
        W = torch.rand(stop - start, m, generator=gen) - 0.5
        a, b = max(start, lo), min(stop, hi)
        if a < b:
            yield a, b, W[a - start : b - start]


def random_init_matrix(d: int, m: int, seed: int) -> torch.Tensor:
    """The whole ``d x m`` matrix ``W`` of :func:`random_init_blocks` (float32, CPU)."""
    return torch.cat([w for _, _, w in random_init_blocks(d, m, seed)])


# ------------------------------------------------------------------ Gram form --------


class Span:
    """``Y Y^T`` restricted to ``span(U)``: ``Y Y^T U = U L V V^T L^{-1}``."""

    def __init__(self, L: torch.Tensor, V: torch.Tensor) -> None:
        self.L, self.V = L, V

    def coefficients(self, b: torch.Tensor) -> torch.Tensor:
        """``a`` with ``Y Y^T U b = U a``."""
        z = torch.linalg.solve_triangular(self.L, b[:, None], upper=False)
        return (self.L @ (self.V @ (self.V.T @ z)))[:, 0]


def objective(H: torch.Tensor) -> float:
    """Data term ``E = sum_i sqrt(max(0, 1 - ||Y^T u_i||^2))``."""
    return float(torch.sqrt(torch.clamp(1.0 - torch.diagonal(H.detach()), min=0.0)).sum())


def irls_weights(H: torch.Tensor, eps: float) -> torch.Tensor:
    """Squared worker column scales ``w_i = (|1 - v_i| + eps)^{-1/2}``."""
    return ((1.0 - torch.diagonal(H)).abs() + eps) ** -0.5


def gram_step(K: torch.Tensor, H: torch.Tensor, m: int, lam: float, eps: float,
              drop: float) -> Tuple[Span, torch.Tensor]:
    """One IRLS iteration from the projections ``H`` of the current ``Y``; returns the new
    subspace and its ``H``. ``drop``: eigenvalues ``<= drop * max`` count as zero."""
    p = K.shape[0]
    w = irls_weights(H, eps)
    if lam > 0 and p > 1:
        v = torch.diagonal(H)
        q = v[:, None] + v[None, :] - 2.0 * H  # ||Y^T (u_i - u_j)||^2
        c = (lam / (p * (p - 1))) ** 2 * ((1.0 - q).abs() + eps) ** -0.5
        c.fill_diagonal_(0.0)
        M = torch.diag(w + 2.0 * c.sum(dim=1)) - 2.0 * c
        L = torch.linalg.cholesky(M)
    else:
        L = torch.diag(w.sqrt())
    B = L.T @ K @ L
    vals, vecs = torch.linalg.eigh(0.5 * (B + B.T))
    vals, vecs = vals[-m:], vecs[:, -m:]
    keep = vals > drop * max(float(vals[-1].detach()), 0.0) if vals.numel() else vals > 0
    vals, V = vals[keep], vecs[:, keep]
    F = torch.linalg.solve_triangular(L.T, V * vals.sqrt(), upper=True)
    return Span(L, V), F @ F.T


def irls_loop(state, E0: float, step: Callable, iters: int, tol: float):
    """The reference's loop: iterate while ``iters`` allows, the last decrease is ``> tol``
    and the objective is ``> tol``; an iteration that did not lower the objective is undone.

    ``step(state) -> (state, E)``. Returns ``(state, objectives, undone)``: the
    objectives of the accepted iterates (non-increasing), whether the last was undone."""
    objectives: List[float] = [E0]
    previous, diff, done = state, math.inf, 0
    while done < iters and diff > tol and objectives[-1] > tol:
        previous = state
        state, E = step(state)
        diff = objectives[-1] - E
        objectives.append(E)
        done += 1
    if diff <= 0:
        return previous, objectives[:-1], True
    return state, objectives, False


def init_gram(Z: torch.Tensor, S: torch.Tensor, inv: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``H0 = T^T S^{-1} T`` for an init with columns ``W`` (``Y0 Y0^T = W S^{-1} W^T``),
    from ``Z = X W`` (``p x m``), ``S = W^T W`` and the inverse norms. Returns ``(H0, T)``."""
    T = Z.T * inv[None, :]
    R = torch.linalg.cholesky(S)
    P = torch.linalg.solve_triangular(R, T, upper=False)  # R^{-1} T
    return P.T @ P, T


# ------------------------------------------------------------------ SVD path ---------


def svd_solve(Urows: torch.Tensor, Y0: Optional[torch.Tensor], m: int, lam: float, eps: float,
              iters: int, tol: float):
    """The reference iterations, literally: an SVD of the ``d x p`` (``lam = 0``) or
    ``d x p^2`` column stack per iteration. ``Urows``: ``p x d`` unit vectors; ``Y0 = None``
    stands for an init orthogonal to every input. Returns ``(Y, objectives, undone)``."""
    p = Urows.shape[0]
    pairs = [(i, j) for i in range(p) for j in range(p) if i != j] if lam > 0 and p > 1 else []

    def sq_proj(V, Y):
        if Y is None:
            return torch.zeros(V.shape[0], dtype=torch.float64, device=V.device)
        return ((V @ Y).to(torch.float64) ** 2).sum(dim=1)

    def E(Y):
        return float(torch.sqrt(torch.clamp(1.0 - sq_proj(Urows, Y), min=0.0)).sum())

    def step(Y):
        scale = ((1.0 - sq_proj(Urows, Y)).abs() + eps) ** -0.25
        columns = [Urows * scale.to(Urows.dtype)[:, None]]
        if pairs:
            i, j = (torch.tensor(ix, device=Urows.device) for ix in zip(*pairs))
            diffs = Urows[i] - Urows[j]
            s = ((1.0 - sq_proj(diffs, Y)).abs() + eps) ** -0.25 * (lam / (p * (p - 1)))
            columns.append(diffs * s.to(Urows.dtype)[:, None])
        A = torch.cat(columns).T
        Y = torch.linalg.svd(A, full_matrices=False).U[:, :m]
        return Y, E(Y)

    return irls_loop(Y0, E(Y0), step, iters, tol)
