"""Flag Aggregator: a Beta-likelihood subspace fit solved by IRLS in the ``p x p`` Gram space."""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import numpy as np
import torch

from robustagg._validation import Choice, Integer, Opaque, Real, check_choice
from robustagg.aggregators import flag_solver as fs
from robustagg.aggregators import ops
from robustagg.aggregators.base import Aggregator
from robustagg.aggregators.registry import register

_INITS = ("random", "data")


@register("flag", "flag-aggregator", "fa")
class FlagAggregator(Aggregator):
    r"""Flag Aggregator (FA): project the inputs on the flag median of their directions.

    With unit vectors :math:`u_i = g_i / \|g_i\|` and reconstruction ratios
    :math:`v_i(Y) = \|Y^\top u_i\|^2`, modelling :math:`v_i \sim \mathrm{Beta}(1, \tfrac12)`
    leads (after a first-order step on the log-likelihood) to the flag-median problem

    .. math:: \min_{Y \in \mathbb{R}^{d \times m},\, Y^\top Y = I}\;
              \sum_i \sqrt{1 - v_i(Y)} \;+\; \frac{\lambda}{p-1} \sum_{i \ne j}
              \sqrt{1 - \frac{\|Y^\top (g_i - g_j)\|^2}{\|g_i - g_j\|^2}}

    solved by IRLS: :math:`Y \leftarrow` the top-``m`` left singular vectors of the columns
    :math:`(s_i+\epsilon)^{-1/4} u_i` and, for :math:`\lambda > 0`, the ordered-pair columns
    :math:`\frac{\lambda}{p(p-1)} (s_{ij}+\epsilon)^{-1/4} (u_i - u_j)`, where
    :math:`s_i = |1 - \|Y^\top u_i\|^2|` and :math:`s_{ij} = |1 - \|Y^\top(u_i-u_j)\|^2|`
    (exactly the reference code's choices, including its stopping rule on the data term
    :math:`E(Y) = \sum_i \sqrt{\max(0, 1 - v_i)}`). The aggregate is

    .. math:: \text{output="reference"}:\; \frac1m Y Y^\top \sum_i u_i, \qquad
              \text{output="raw"}:\; \frac1p Y Y^\top \sum_i g_i .

    The default output is on another scale than the inputs (norm at most ``p / m``, about 2,
    whatever the inputs' norms): a direction, to be rescaled before it replaces a mean.
    ``"raw"`` (the paper's text; no code path of the authors uses it; formerly ``"paper"``,
    still accepted with a ``FutureWarning``) keeps the inputs' scale but is **not robust to
    scale**: rows of 1e20 pass into the output and a ``-50 mu`` attack flips its direction.

    Every iteration runs in the ``p x p`` Gram space of the unit vectors (``solver="gram"``):
    the data is read for the Gram matrix, once more for ``init="random"`` (the reference's
    seeded ``U[-1/2, 1/2]`` ``d x m`` draw), and once for the output. ``solver="svd"`` runs
    the reference iterations literally (an SVD of the ``d x p`` or ``d x p^2`` stack) and is
    meant for tests. See ``docs/flag.md`` for the derivation and the cost of each option.

    Parameters
    ----------
    f : int
        Declared Byzantine inputs (only used for non-finite rows; FA itself does not need it).
    m : int, optional
        Subspace dimension; default ``ceil((p + 1) / 2)`` for ``p`` finite inputs (capped at
        ``d``), or the number of columns of an explicit ``init``. Must be ``<= p`` and ``<= d``.
    lam : float
        Weight of the pairwise-difference terms (0: the paper's experiments).
    iters : int
        Maximum IRLS iterations (paper: 5; the authors' trained aggregator runs 1, which
        ``iters=1`` reproduces; ``docs/flag.md`` measures the difference).
    tol : float
        Stop when an iteration lowers :math:`E` by ``<= tol``; do not iterate when ``E <= tol``.
    eps : float
        Weight smoothing :math:`\epsilon`.
    init : "random", "data" or a ``(d, m)`` array with orthonormal columns
        ``"random"``: QR of ``torch.rand(d, m) - 0.5`` after ``torch.manual_seed(seed)`` (the
        reference; same draw on every device; costs ``d m`` serial CPU draws and a pass).
        ``"data"``: an init orthogonal to every input (the ``d -> oo`` limit of the random one;
        costs nothing; the first iteration lands on the top-``m`` principal subspace of the
        unit vectors for ``lam = 0``). Not the reference code's ``init='data'`` (one input).
    seed : int
        Seed of ``init="random"``.
    output : "reference" or "raw"
    solver : "gram" or "svd"

    After a call, ``last`` holds (per input, in the caller's numbering; ``nan`` for dropped
    non-finite rows): ``v`` (reconstruction ratios at the returned ``Y``), ``weights`` (the IRLS
    weights :math:`(s_i+\epsilon)^{-1/2}` at the returned ``Y``; 0 for zero inputs),
    ``coefficients`` (the output is :math:`\sum_i c_i g_i`; ``None`` when ``Y`` is the init or
    ``solver="svd"``), ``objective`` (:math:`E` of the init and of every accepted iterate),
    ``iterations``, ``undone`` (whether a last iteration was undone), ``m``, ``dropped``,
    ``zero``. Zero inputs get ``u_i = 0`` (the reference's ``F.normalize``): no column of
    their own, ``-u_j`` in their pair columns, a constant 1 in :math:`E`.

    References
    ----------
    Almasi, Mishra, Vamanan, Ravi, "Flag Aggregator: Scalable Distributed
    Training under Failures and Augmented Losses using Convex Optimization", ICLR 2024.
    Mankovich, King, Peterson, Kirby, "The Flag Median and FlagIRLS", CVPR 2022.
    """

    #: one line for the rule table of docs/index.md
    summary = (
        "(1/m) Y Yᵀ Σ_i x_i/‖x_i‖, Y the flag median of the inputs' directions (IRLS in Gram space; "
        "[flag.md](flag.md)). **The output is on another scale than the inputs** (unit vectors summed: "
        "norm at most p/m ≈ 2; 15 inputs of norm ~1040 gave 1.80): rescale it before using it in place "
        "of the mean. `output=\"raw\"` ((1/p) Y Yᵀ Σ_i x_i) keeps the inputs' scale but is **not robust "
        "to scale**: 2 rows of 1e20 among 15 put 1.3e19 entries into the output, and a −50·μ attack "
        "flips its direction (cosine −0.996)"
    )

    bound = "n > f"
    uses_gram = True
    decomposition = "gram-weights"  # statistic: the Gram matrix (and X W for init="random")
    _parameter_constraints = {
        **Aggregator._parameter_constraints, "m": Integer(minimum=1, optional=True), "lam": Real(minimum=0.0),
        "iters": Integer(minimum=0), "tol": Real(minimum=0.0), "eps": Real(minimum=0.0, strict_min=True),
        "init": Opaque(["bogus", 3, np.zeros((2, 3))]), "seed": Integer(minimum=0, maximum=2**63 - 1),
        "output": Choice("reference", "raw", "paper"), "solver": Choice("gram", "svd"),
    }

    def __init__(self, f: int = 0, m: Optional[int] = None, lam: float = 0.0, iters: int = 5,
                 tol: float = 1e-10, eps: float = 1e-7, init: Any = "random", seed: int = 1,
                 output: str = "reference", solver: str = "gram") -> None:
        super().__init__(f)
        self.m = self._check("m", m)
        self.lam = self._check("lam", lam)
        self.iters = self._check("iters", iters)
        self.tol = self._check("tol", tol)
        self.eps = self._check("eps", eps)
        self.seed = self._check("seed", seed)
        self.output = self._check("output", output)
        if self.output == "paper":
            warnings.warn('flag: output="paper" is now called output="raw"', FutureWarning, stacklevel=2)
            self.output = "raw"
        self.solver = self._check("solver", solver)
        self.init = self._check_init(init)
        #: the random init's generator state where a coordinate shard starts (see
        #: flag_solver.random_init_blocks): a rank of the collective draws its own rows only
        self._init_states: dict = {}

    def _check_init(self, init):
        if isinstance(init, str):
            return check_choice(init, "init", _INITS)
        if not isinstance(init, (torch.Tensor, np.ndarray)):
            raise TypeError(f"init must be 'random', 'data' or a (d, m) tensor/array, got {type(init).__name__}")
        Y0 = torch.as_tensor(init)
        if Y0.dim() != 2 or Y0.shape[1] < 1 or Y0.shape[0] < Y0.shape[1]:
            raise ValueError(f"init must be a (d, m) matrix with d >= m >= 1, got shape {tuple(Y0.shape)}")
        if not Y0.dtype.is_floating_point or not bool(torch.isfinite(Y0).all()):
            raise ValueError("init must hold finite real numbers")
        if self.m is not None and Y0.shape[1] != self.m:
            raise ValueError(f"init has {Y0.shape[1]} columns but m={self.m}")
        S = Y0.T.to(torch.float64) @ Y0.to(torch.float64)
        err = float((S - torch.eye(S.shape[0], dtype=torch.float64, device=S.device)).abs().max())
        limit = 1e-8 if Y0.dtype == torch.float64 else 1e-4
        if err > limit:
            raise ValueError(f"init must have orthonormal columns (max |Y0^T Y0 - I| = {err:.3g} > {limit:g})")
        self._init_S = S.cpu()
        return Y0

    # ------------------------------------------------------------------------------
    def _dimension(self, p: int, d: int) -> int:
        if isinstance(self.init, torch.Tensor):
            if self.init.shape[0] != d:
                raise ValueError(f"init has {self.init.shape[0]} rows but the updates have d={d} coordinates")
            m = self.init.shape[1]
        elif self.m is None:
            return max(1, min(math.ceil((p + 1) / 2), d))
        else:
            m = self.m
        if m > p:
            raise ValueError(f"m={m} exceeds the number of (finite) inputs p={p}")
        if m > d:
            raise ValueError(f"m={m} exceeds the dimension d={d}")
        return m

    def _aggregate(self, X, f, G):
        p, d = X.shape
        m = self._dimension(p, self._columns(d)[1])
        G64 = G.detach().to("cpu", torch.float64)
        sq = torch.diagonal(G64).clone()
        zero = sq <= 0
        norms = sq.clamp_min(0).sqrt()
        inv = torch.where(zero, torch.zeros_like(norms), 1.0 / torch.where(zero, torch.ones_like(norms), norms))
        b = torch.ones(p, dtype=torch.float64) / m if self.output == "reference" else norms / p
        b = torch.where(zero, torch.zeros_like(b), b)  # u_i = 0 adds nothing to Y Y^T U b
        if self.solver == "svd":
            if self._shards is not None:
                raise ValueError('flag: solver="svd" needs every coordinate in one process; use solver="gram"')
            out, v, extra = self._svd(X, inv, m, b)
        else:
            out, v, extra = self._gram(X, G64, inv, m, b)
        weights = torch.where(zero, torch.zeros_like(v), ((1.0 - v).abs() + self.eps) ** -0.5)
        v = torch.where(zero, torch.zeros_like(v), v)
        coefficients = extra.pop("coefficients")
        self.last = {
            "v": self._full(v, math.nan), "weights": self._full(weights, math.nan),
            "coefficients": None if coefficients is None else self._full(coefficients, 0.0),
            "m": m, "zero": self._original(torch.nonzero(zero).flatten().tolist()),
            "dropped": [] if self.kept is None else sorted(set(range(self._n_in)) - set(self.kept.tolist())),
            **extra,
        }
        return out

    @property
    def _n_in(self) -> int:
        """Number of rows of the last call's input, dropped ones included."""
        return int(self.kept.numel()) + self.dropped

    def _full(self, values: torch.Tensor, fill: float) -> torch.Tensor:
        """Per-input values in the caller's numbering (``fill`` for dropped rows)."""
        if self.kept is None:
            return values
        full = torch.full((self._n_in,), fill, dtype=values.dtype)
        full[self.kept.cpu()] = values
        return full

    # ------------------------------------------------------------------ fast form --
    def _gram(self, X, G64, inv, m, b):
        p, d = X.shape
        K = G64 * inv[:, None] * inv[None, :]
        K.diagonal().copy_((inv > 0).to(K.dtype))
        H0, T, R = self._init_projections(X, inv, m)
        drop = max(p, 1) * torch.finfo(X.dtype).eps

        def step(state):
            _, H = state
            span, H = fs.gram_step(K, H, m, self.lam, self.eps, drop)
            return (span, H), fs.objective(H)

        (span, H), objectives, undone = fs.irls_loop((None, H0), fs.objective(H0), step, self.iters, self.tol)
        extra = {"objective": objectives, "iterations": len(objectives) - 1, "undone": undone}
        if span is not None:
            a = span.coefficients(b) * inv
            extra["coefficients"] = a
            out = ops.combine_rows(a, X)
        else:  # the init itself: Y0 Y0^T U b = W S^{-1} T b
            extra["coefficients"] = None
            out = self._init_output(X, T, R, b, m)
        return out, torch.diagonal(H).clone(), extra

    def _init_projections(self, X, inv, m):
        """``H0``, ``T = W^T U`` and the Cholesky factor of ``S = W^T W`` of the init's columns ``W``."""
        p, d = X.shape
        offset, total = self._columns(d)
        if isinstance(self.init, torch.Tensor):
            Y0 = self.init[offset : offset + d].to(device=X.device, dtype=X.dtype)
            Z = self._sum_over_shards((X @ Y0).to("cpu", torch.float64))
            S = self._init_S
        elif self.init == "random":  # one pass: draw W block by block, accumulate X W and W^T W
            ZS = torch.zeros((p + m, m), dtype=torch.float64)
            for start, stop, W in fs.random_init_blocks(total, m, self.seed, lo=offset, hi=offset + d,
                                                          states=self._init_states):
                W = W.to(device=X.device, dtype=X.dtype)
                ZS[:p] += (X[:, start - offset : stop - offset] @ W).to("cpu", torch.float64)
                ZS[p:] += (W.T @ W).to("cpu", torch.float64)
            ZS = self._sum_over_shards(ZS)  # one reduction for both in a collective
            Z, S = ZS[:p], ZS[p:]
        else:  # "data": Y0 orthogonal to every input
            return torch.zeros((p, p), dtype=torch.float64), None, None
        H0, T = fs.init_gram(Z, S, inv)
        return H0, T, torch.linalg.cholesky(S)

    def _init_output(self, X, T, R, b, m):
        p, d = X.shape
        if T is None:
            return torch.zeros(d, dtype=X.dtype, device=X.device)
        c = torch.cholesky_solve((T @ b)[:, None], R)[:, 0]  # S^{-1} T b
        offset, total = self._columns(d)
        if isinstance(self.init, torch.Tensor):
            Y0 = self.init[offset : offset + d]
            return Y0.to(device=X.device, dtype=X.dtype) @ c.to(device=X.device, dtype=X.dtype)
        out = torch.empty(d, dtype=X.dtype, device=X.device)
        for start, stop, W in fs.random_init_blocks(total, m, self.seed, lo=offset, hi=offset + d,
                                                      states=self._init_states):
            out[start - offset : stop - offset] = W.to(device=X.device, dtype=X.dtype) @ c.to(device=X.device, dtype=X.dtype)
        return out

    # ------------------------------------------------------------------ SVD path ---
    def _svd(self, X, inv, m, b):
        p, d = X.shape
        Urows = X * inv.to(device=X.device, dtype=X.dtype)[:, None]
        if isinstance(self.init, torch.Tensor):
            Y0 = self.init.to(device=X.device, dtype=X.dtype)
        elif self.init == "random":
            W = fs.random_init_matrix(d, m, self.seed).to(device=X.device, dtype=X.dtype)
            Y0 = torch.linalg.qr(W).Q
        else:
            Y0 = None
        Y, objectives, undone = fs.svd_solve(Urows, Y0, m, self.lam, self.eps, self.iters, self.tol)
        if Y is None:
            out = torch.zeros(d, dtype=X.dtype, device=X.device)
            v = torch.zeros(p, dtype=torch.float64)
        else:
            P = Urows @ Y
            out = Y @ (P.T @ b.to(device=X.device, dtype=X.dtype))
            v = (P.to("cpu", torch.float64) ** 2).sum(dim=1)
        extra = {"objective": objectives, "iterations": len(objectives) - 1, "undone": undone,
                 "coefficients": None}
        return out, v, extra
