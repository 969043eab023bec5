"""Shared kernels: every rule builds on these, none loops in Python over coordinates or pairs.

* :func:`gram` and :func:`sq_distances`: all pairwise squared distances from
  one Gram matrix, clamped at 0 with an exact zero diagonal, recomputed on
  centred rows when the norms are so large that ``|x|^2 + |y|^2 - 2 x.y``
  would cancel (model parameters are the usual case).
* :func:`coordinate_median`, :func:`coordinate_trimmed_mean`,
  :func:`coordinate_mean_around_median`: order statistics per coordinate via
  pruned sorting networks on column chunks (``_networks.py``), fused into one
  compiled pass on CPU when numba is present (``_jit.py``); inputs that require a
  gradient take a differentiable ``torch.sort`` path instead.
* :func:`mix_nearest`: NNM's output as one shared sum with ``f``-sparse corrections, a
  compiled pass over column blocks (``_jit.py``).
* :func:`nonfinite_rows`, :func:`row_norms`, :func:`combine_rows`,
  :func:`krum_scores`, :func:`nearest_weights`: the small pieces the rules share.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable, Optional, Tuple

import torch

from robustagg.aggregators import _jit, _networks

#: Use the compiled kernels for inputs with at least this many entries.
JIT_MIN_ENTRIES = int(os.environ.get("ROBUSTAGG_JIT_MIN_ENTRIES", 1 << 17))
_backend = "auto"


def set_backend(name: str) -> None:
    """Choose the coordinate-wise backend: ``"auto"`` (default), ``"torch"`` or ``"jit"``."""
    global _backend
    if name not in ("auto", "torch", "jit"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'jit', got {name!r}")
    _backend = name


def get_backend() -> str:
    return _backend


# ---------------------------------------------------------------- rows --------


def nonfinite_rows(X: torch.Tensor) -> torch.Tensor:
    """Indices of rows holding NaN or +-Inf.

    One read: a row with a non-finite entry has a non-finite sum; the few rows whose sum is
    not finite (that includes finite rows whose sum overflows) are then checked exactly."""
    suspect = torch.nonzero(~torch.isfinite(X.sum(dim=1))).flatten()
    if suspect.numel() == 0:
        return suspect
    exact = ~torch.isfinite(X[suspect]).all(dim=1)
    return suspect[exact]


def all_finite(v: torch.Tensor) -> bool:
    """Whether every entry of ``v`` is finite, in one summing pass when it is (``torch.isfinite``
    builds a boolean tensor as large as ``v``, several times slower); a sum that overflows on
    finite entries falls back to the exact check."""
    return bool(torch.isfinite(v.sum())) or bool(torch.isfinite(v).all())


def row_norms(X: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each row."""
    return torch.linalg.vector_norm(X, dim=1)


def combine_rows(weights: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """``weights @ X`` for a weight vector ``(n,)`` or matrix ``(m, n)``, in ``X``'s dtype."""
    return weights.to(dtype=X.dtype, device=X.device) @ X


# ------------------------------------------------------------ distances -------


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype inner products of ``dtype`` rows are accumulated in: float32 for the 16-bit
    floats (float16 squares overflow past 256, bfloat16 keeps 3 digits), else ``dtype``."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def gram(X: torch.Tensor) -> torch.Tensor:
    """``X @ X.T``, exactly symmetric (in float32 for 16-bit inputs, column chunk by chunk).

    On CPU with long rows: for ``n <= 64`` it sums per-block products (``bmm``), which BLAS
    runs several times faster than one skinny product and which also accumulates more
    accurately; for larger ``n`` it calls BLAS ``syrk`` (half the flops of ``X @ X.T``; at
    n = 60 it is no faster than ``bmm`` and, run by scipy's BLAS beside torch's thread pool,
    its time varies by up to 2x). Kernels
    may round ``G_ij`` and ``G_ji`` differently; the result is symmetrised, since exact ties
    (Krum's lowest index wins) need ``D_ij == D_ji``."""
    n, d = X.shape
    blocks = 64
    acc = accumulation_dtype(X.dtype)
    if acc != X.dtype:
        G = torch.zeros((n, n), dtype=acc, device=X.device)
        for c0 in range(0, d, 1 << 16):
            block = X[:, c0 : c0 + (1 << 16)].to(acc)
            G.addmm_(block, block.T)
    elif X.device.type != "cpu" or d < 1 << 16:
        G = X @ X.T
    elif n > 64:
        G = _syrk(X)
    else:
        width = d // blocks
        head = X[:, : width * blocks].view(n, blocks, width).transpose(0, 1)
        G = torch.bmm(head, head.transpose(1, 2)).sum(dim=0)
        if width * blocks < d:
            tail = X[:, width * blocks :]
            G += tail @ tail.T
    return (G + G.T) * 0.5


def _syrk(X: torch.Tensor) -> torch.Tensor:
    """``X @ X.T`` by BLAS ``syrk`` (one triangle: half the flops of a general product)."""
    try:
        from scipy.linalg import blas
    except ImportError:  # pragma: no cover - scipy is a dependency
        return X @ X.T
    if not X.is_contiguous() or X.dtype not in (torch.float32, torch.float64) or X.requires_grad:
        return X @ X.T
    routine = blas.ssyrk if X.dtype == torch.float32 else blas.dsyrk
    upper = torch.from_numpy(routine(1.0, X.detach().numpy().T, trans=1))  # (d, n) F-order view: no copy
    return upper.triu() + upper.triu(1).T


def _dists_from_gram(G: torch.Tensor) -> torch.Tensor:
    diag = torch.diagonal(G)
    D = (diag[:, None] + diag[None, :] - 2 * G).clamp_min_(0)
    D.fill_diagonal_(0)
    return D


def _centred_gram(X: torch.Tensor, ref: int, chunk: int = 1 << 16) -> torch.Tensor:
    n, d = X.shape
    acc = accumulation_dtype(X.dtype)
    G = torch.zeros((n, n), dtype=acc, device=X.device)
    for c0 in range(0, d, chunk):
        block = X[:, c0 : c0 + chunk].to(acc) - X[ref, c0 : c0 + chunk].to(acc)
        G.addmm_(block, block.T)
    return (G + G.T) * 0.5


def sq_distances(X: torch.Tensor, G: Optional[torch.Tensor] = None,
                 reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pairwise squared distances ``D`` and the Gram matrix they came from.

    ``reduce`` completes a sum over coordinates when ``X`` holds only some columns of the
    inputs (:mod:`robustagg.collective`): it is applied to every Gram matrix computed here.

    ``D_ij = G_ii + G_jj - 2 G_ij`` loses all precision when ``|x_i|^2 + |x_j|^2`` dwarfs
    ``D_ij`` (float32 keeps ~7 digits). When some pair is that close relative to its norms,
    the Gram matrix is recomputed on rows centred at the medoid (the row with the smallest
    total distance), which makes every distance accurate again; the returned ``G`` is then
    that centred Gram matrix (distances and any convex combination are unchanged by it).
    """
    if reduce is None:
        reduce = _identity
    if G is None:
        G = reduce(gram(X))
    D = _dists_from_gram(G)
    n = X.shape[0]
    if n > 1:
        diag = torch.diagonal(G)
        scale = diag[:, None] + diag[None, :]
        eps = torch.finfo(G.dtype).eps
        off = ~torch.eye(n, dtype=torch.bool, device=X.device)
        # estimated relative error of D_ij is about 16 eps scale_ij / D_ij; keep it below 1e-3
        unsafe = (D[off] < (16 * eps / 1e-3) * scale[off]).any()
        if bool(unsafe):
            ref = int(torch.argmin(D.sum(dim=1)))
            G = reduce(_centred_gram(X, ref))
            D = _dists_from_gram(G)
    return D, G


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def krum_scores(D: torch.Tensor, neighbours: int) -> torch.Tensor:
    """Sum of each row's ``neighbours`` smallest distances to the *other* rows."""
    n = D.shape[0]
    if neighbours <= 0:
        return torch.zeros(n, dtype=D.dtype, device=D.device)
    masked = D.clone()
    masked.fill_diagonal_(float("inf"))
    return torch.topk(masked, neighbours, dim=1, largest=False, sorted=False).values.sum(dim=1)


def nearest_weights(D: torch.Tensor, k: int) -> torch.Tensor:
    """Averaging matrix ``W`` with ``W_ij = 1/k`` when ``j`` is among the ``k`` nearest rows of ``i``
    (itself first, then by distance, lower index on ties)."""
    n = D.shape[0]
    keyed = D.to(torch.float64).clone()
    keyed.fill_diagonal_(-1.0)
    order = torch.sort(keyed, dim=1, stable=True).indices[:, :k]
    W = torch.zeros((n, n), dtype=torch.float64, device=D.device)
    W.scatter_(1, order, 1.0 / k)
    return W


# ---------------------------------------------------- coordinate-wise ---------


def _run(X: torch.Tensor, plan: _networks.Plan, rows: Optional[torch.Tensor]) -> torch.Tensor:
    if X.shape[1] == 0:  # no columns (an empty coordinate shard)
        return X.new_empty((0,))
    if X.requires_grad and torch.is_grad_enabled():
        return _networks.run_plan_sorted(X, plan, rows)
    use_jit = (
        _backend != "torch"
        and X.device.type == "cpu"
        and X.dtype in (torch.float32, torch.float64)
        and not X.requires_grad
        and _jit.available()
        and (_backend == "jit" or plan.n * X.shape[1] >= JIT_MIN_ENTRIES)
    )
    if use_jit:
        try:
            return _jit.run_plan_jit(X, plan, rows)
        except Exception as exc:  # pragma: no cover - a broken numba install
            if _backend == "jit":
                raise
            warnings.warn(f"robustagg: compiled kernel failed ({exc}); using the torch path", RuntimeWarning)
    return _networks.run_plan_torch(X, plan, rows)


def _count(X: torch.Tensor, rows: Optional[torch.Tensor]) -> int:
    return X.shape[0] if rows is None else int(rows.numel())


def coordinate_median(X: torch.Tensor, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Median of each column (mean of the two middle values for even ``n``)."""
    return _run(X, _networks.make_plan(_count(X, rows), "median"), rows)


def coordinate_trimmed_mean(X: torch.Tensor, trim: int, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean of each column after dropping its ``trim`` largest and ``trim`` smallest values."""
    return _run(X, _networks.make_plan(_count(X, rows), "trimmed", trim), rows)


def coordinate_mean_around_median(X: torch.Tensor, k: int, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean of the ``k`` values of each column closest to that column's median."""
    return _run(X, _networks.make_plan(_count(X, rows), "around", k), rows)


def sq_distances_to(X: torch.Tensor, v: Optional[torch.Tensor], chunk: int = 1 << 16) -> torch.Tensor:
    """``||x_i - v||^2`` for every row in float64, from explicit differences on column chunks
    (``v=None``: the squared norms ``||x_i||^2``, without a float64 copy of ``X``)."""
    dtype = torch.float64 if v is None else accumulation_dtype(X.dtype)
    acc = torch.zeros(X.shape[0], dtype=torch.float64, device=X.device)
    for c0 in range(0, X.shape[1], chunk):
        block = X[:, c0 : c0 + chunk].to(dtype)
        if v is not None:
            block = block - v[c0 : c0 + chunk].to(dtype)
        acc += (block * block).sum(dim=1, dtype=torch.float64)
    return acc


def distances_to(X: torch.Tensor, v: torch.Tensor, chunk: int = 1 << 16) -> torch.Tensor:
    """``||x_i - v||`` for every row, from explicit differences on column chunks (no cancellation)."""
    return sq_distances_to(X, v, chunk).sqrt().to(accumulation_dtype(X.dtype))


def clip_scales(norms: torch.Tensor, c: float) -> torch.Tensor:
    """The factors ``min(1, c / ||x_i||)`` that clip rows of norms ``norms`` to norm ``c``."""
    return torch.clamp(c / norms.clamp_min(torch.finfo(norms.dtype).tiny), max=1.0)


def scale_rows(X: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``x_i * scales_i`` for every row (a new tensor)."""
    return X * scales[:, None]


def clip_rows(X: torch.Tensor, c: float, norms: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Scale each row to norm at most ``c``: ``x_i * min(1, c / ||x_i||)`` (a new tensor)."""
    return scale_rows(X, clip_scales(row_norms(X) if norms is None else norms, c))


def coordinate_mean_nearest(X: torch.Tensor, centre: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the ``k`` values of each column nearest to ``centre`` (one value per column).

    The ``k`` nearest values of a column are ``k`` consecutive sorted values: the window whose
    farther end is closest to the centre; on equal distances the window of smaller values
    wins. One sort and an ``(n, d)`` mask: no loop over coordinates or windows."""
    n = X.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}], got {k}")
    S = torch.sort(X, dim=0).values
    c = centre.to(dtype=S.dtype, device=S.device)
    cost = torch.maximum(c - S[: n - k + 1], S[k - 1 :] - c)  # (n - k + 1, d): window starting at row s
    start = torch.argmin(cost, dim=0)  # the first (lowest) window on ties
    rows = torch.arange(n, device=S.device)[:, None]
    mask = (rows >= start) & (rows < start + k)
    acc = accumulation_dtype(S.dtype)
    return ((S.to(acc) * mask).sum(dim=0) / k).to(S.dtype)


# ------------------------------------------------------- subset rules (Gram space) ----


def selection_weights(n: int, chosen, device=None) -> torch.Tensor:
    """Coefficients ``(n,)`` of the mean of the rows ``chosen``."""
    chosen = torch.as_tensor(chosen, dtype=torch.long)
    w = torch.zeros(n, dtype=torch.float64, device=device)
    w[chosen] = 1.0 / chosen.numel()
    return w


def centred_gram(G: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    r"""The Gram matrix of the rows centred at their ``c``-weighted mean, scaled by the weights:
    :math:`K = W^{1/2} P G P^\top W^{1/2}` with :math:`P = I - \mathbf{1} c^\top / \sum c`,
    :math:`W = \mathrm{diag}(c)`. Its eigenvalues divided by :math:`\sum c` are those of the
    weighted covariance :math:`\sum_i c_i (x_i - \mu_c)(x_i - \mu_c)^\top / \sum c` (the other
    ``d - n`` are zero). ``G`` and ``c`` may carry leading batch dimensions."""
    c = c.to(G.dtype)
    p = c / c.sum(dim=-1, keepdim=True)
    Gp = G @ p.unsqueeze(-1)  # (.., n, 1)
    pGp = (p.unsqueeze(-2) @ Gp)  # (.., 1, 1)
    K = G - Gp - Gp.transpose(-1, -2) + pGp
    s = c.clamp_min(0).sqrt()
    return s.unsqueeze(-1) * K * s.unsqueeze(-2)


def removal_sets(n: int, r: int, chunk: int = 2048):
    """Every set of ``r`` indices out of ``n``, lexicographically, as boolean keep-masks ``(m, n)``
    in chunks of at most ``chunk`` rows."""
    import itertools

    combos = itertools.combinations(range(n), r)
    while True:
        block = list(itertools.islice(combos, chunk))
        if not block and r > 0:
            return
        keep = torch.ones((max(len(block), 1), n), dtype=torch.bool)
        if r > 0:
            idx = torch.tensor(block, dtype=torch.long)
            keep.scatter_(1, idx, False)
        yield keep
        if r == 0:
            return


def lexicographic_argmin(*keys: torch.Tensor) -> int:
    """Index of the smallest entry of ``keys[0]``, ties broken by ``keys[1]``, ..., then the lowest index."""
    candidates = torch.arange(keys[0].numel())
    for key in keys:
        sub = key[candidates]
        candidates = candidates[sub == sub.min()]
    return int(candidates[0])


def largest_eigenpair(K: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The largest eigenvalue and its eigenvector of the symmetric ``(.., n, n)`` matrix ``K`` (float64)."""
    values, vectors = torch.linalg.eigh(K.to(torch.float64))
    return values[..., -1], vectors[..., :, -1]


# ------------------------------------------------------------ NNM at its floor ----


def farthest_sets(D: torch.Tensor, f: int) -> torch.Tensor:
    """``(n, f)`` indices of the rows outside each row's ``n - f`` nearest (itself first, then by
    distance, lower index on ties): the complement of :func:`nearest_weights`' choice."""
    n = D.shape[0]
    keyed = D.to(torch.float64).clone()
    keyed.fill_diagonal_(-1.0)
    return torch.sort(keyed, dim=1, stable=True).indices[:, n - f :]


#: Rows whose norm exceeds this multiple of the median row norm never enter :func:`mix_nearest`'s
#: shared sum (a row of norm ``R`` in it costs every output ``~eps R`` of rounding).
MIX_NORM_RATIO = 4.0


def mix_nearest(X: torch.Tensor, far: torch.Tensor, norms: Optional[torch.Tensor] = None) -> torch.Tensor:
    r"""Row ``i``: the mean of the ``n - f`` rows not in ``far[i]`` (``far`` from :func:`farthest_sets`).

    ``O(n f d)``, not an ``(n x n) @ (n x d)`` product: with :math:`S` the sum of the *small* rows
    (norm at most ``MIX_NORM_RATIO`` times the median of ``norms``, the row norms, computed when
    not given), :math:`y_i = (S - \sum_{j \in F_i,\, j \text{ small}} x_j + \sum_{j \notin F_i,\,
    j \text{ large}} x_j) / (n - f)`, or the plain sum of the ``n - f`` kept rows where that has
    fewer terms. A large row (an outlier) is thus never added into a sum it is later subtracted
    from: the rounding of every output stays that of sums of rows at most ``MIX_NORM_RATIO``
    times the median norm. One compiled pass over column blocks (CPU, float32/64, numba); the
    dense product otherwise (GPU, 16-bit floats, gradients, small inputs)."""
    n, f = far.shape
    kept = torch.ones((n, n), dtype=torch.bool)
    kept.scatter_(1, far.cpu(), False)
    use_jit = (_backend != "torch" and X.device.type == "cpu" and X.dtype in (torch.float32, torch.float64)
               and not X.requires_grad and _jit.available() and (_backend == "jit" or X.numel() >= JIT_MIN_ENTRIES))
    if not use_jit:
        return combine_rows(kept.to(torch.float64) / (n - f), X)
    norms = (row_norms(X) if norms is None else norms).detach().cpu().to(torch.float64)
    large = ~(norms <= MIX_NORM_RATIO * norms.median())  # NaN / inf norms count as large
    # terms of row i from S: the small far rows (-1) and the large kept rows (+1)
    from_sum = (~kept & ~large) | (kept & large)
    base = from_sum.sum(dim=1) < n - f
    terms = torch.where(base[:, None], from_sum, kept)
    key = torch.where(terms, kept.to(torch.int8), 2)  # subtracted rows first, then added ones
    idx = torch.argsort(key, dim=1, stable=True)[:, : max(int(terms.sum(dim=1).max()), 1)]
    summed = torch.nonzero(~large if bool(base.any()) else torch.zeros(n, dtype=torch.bool)).flatten()
    return _jit.run_mix_jit(X, summed, base, idx, (terms & ~kept).sum(dim=1), terms.sum(dim=1), n - f)
