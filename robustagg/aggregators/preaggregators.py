"""Pre-aggregators: maps from ``(n, d)`` to ``(n', d)`` that run before a rule."""

from __future__ import annotations

import math

import torch

from robustagg._validation import Integer, Opaque, Real
from robustagg.aggregators import ops
from robustagg.aggregators.base import PreAggregator, SeededGenerator
from robustagg.aggregators.registry import register


@register("nnm", "nearest-neighbor-mixing", "nearest-neighbour-mixing")
class NNM(PreAggregator):
    r"""Nearest-neighbour mixing: replace each input by the mean of its ``n - f`` nearest inputs.

    .. math:: y_i = \frac{1}{n-f} \sum_{j \in N_i} x_j

    where :math:`N_i` holds :math:`x_i` itself and its ``n - f - 1`` nearest other inputs
    (Euclidean; lower index on ties). One Gram matrix gives the distances and the row norms;
    the output then needs only an ``f``-sparse correction of one shared sum,

    .. math:: y_i = \frac{1}{n-f} \Big(S - \sum_{j \notin N_i,\, j \in A} x_j
              + \sum_{j \in N_i,\, j \notin A} x_j\Big), \quad S = \sum_{j \in A} x_j,

    where :math:`A` holds the inputs of norm at most 4 times the median norm (``O(n f d)``
    additions, not the ``O(n^2 d)`` of an ``(n x n) @ (n x d)`` product; a row uses the plain sum
    of :math:`N_i` where that has fewer terms). An outlier is never added into :math:`S` and
    subtracted again, so no output loses digits to one. See
    :func:`~robustagg.aggregators.ops.mix_nearest`.

    References
    ----------
    Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by Mixing: A Recipe
    for Optimal Byzantine ML under Heterogeneity", AISTATS 2023.
    """

    #: one line for the rule table of docs/index.md
    summary = 'x_i ← mean of its n − f nearest inputs (itself included)'

    bound = "n > 2f"
    uses_gram = True
    decomposition = "gram-weights"

    def _statistic(self, X, G):
        if G is None:
            G = self._gram_over_shards(ops.gram(X))
        D, _ = ops.sq_distances(X, G, reduce=self._gram_over_shards)
        return D, torch.diagonal(G).clamp_min(0).sqrt()  # the row norms (of the whole rows, over shards)

    def _decide(self, statistic, f):
        D, norms = statistic
        return ops.farthest_sets(D, f), norms

    def _apply(self, X, decision):
        return ops.mix_nearest(X, *decision)


@register("bucketing")
class Bucketing(SeededGenerator, PreAggregator):
    r"""Bucketing: shuffle the inputs, then average consecutive groups of ``s``.

    .. math:: y_j = \frac{1}{|B_j|} \sum_{i \in B_j} x_{\pi(i)}, \quad
              B_j = \{(j-1)s + 1, \dots, \min(js, n)\}

    for a uniformly random permutation :math:`\pi` drawn from a generator seeded with
    ``seed`` (each call draws a new one; :meth:`reset` restarts the sequence), giving
    :math:`\lceil n/s \rceil` outputs (the last bucket may be smaller). ``permutation`` (a
    sequence holding ``0 .. n-1`` once each) fixes :math:`\pi` instead of drawing it, as peer
    test suites do; it must then match the number of finite inputs of every call.

    References
    ----------
    Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via
    Bucketing", ICLR 2022.
    """

    #: one line for the rule table of docs/index.md
    summary = 'shuffle, average consecutive groups of s'

    bound = "n > f"
    decomposition = "gram-weights"  # no statistic: the weights come from the generator alone
    preserves_rows = False
    _parameter_constraints = {**PreAggregator._parameter_constraints, "s": Integer(minimum=1),
                              "seed": Integer(), "permutation": Opaque(invalid=["abc", [0, 0], [1.5, 0], [-1]])}

    def __init__(self, f: int = 0, s: int = 2, seed: int = 0, permutation=None) -> None:
        super().__init__(f)
        self.s = self._check("s", s)
        self.seed = self._check("seed", seed)
        self.permutation = None if permutation is None else _check_permutation(permutation)
        self.reset()

    def output_rows(self, n: int) -> int:
        return math.ceil(n / self.s)

    def _aggregate(self, X, f, G):
        n = X.shape[0]
        if self.permutation is None:
            perm = torch.randperm(n, generator=self._generator)
        elif self.permutation.numel() != n:
            raise ValueError(f"bucketing: permutation has {self.permutation.numel()} entries for {n} finite updates")
        else:
            perm = self.permutation
        buckets = self.output_rows(n)
        W = torch.zeros((buckets, n), dtype=torch.float64)
        for j in range(buckets):
            members = perm[j * self.s : (j + 1) * self.s]
            W[j, members] = 1.0 / members.numel()
        return self._apply(X, W.to(X.device))


@register("clipping", "static-clipping")
class Clipping(PreAggregator):
    r"""Static norm clipping of every input.

    .. math:: y_i = x_i \cdot \min\left(1, \frac{c}{\|x_i\|}\right)

    With ``inplace=True`` the rows are scaled in the caller's own tensor (or the NumPy array it
    views) and that tensor is returned: no copy, but the caller's updates are changed (as in
    ByzFL's ``Clipping``). Inputs that are converted (lists, other dtypes) or that lose
    non-finite rows are copied first, so only a clean float tensor/array is modified. The
    default keeps the input intact.

    References
    ----------
    Allouah, Guerraoui, Gupta, Jellouli, Rizk, Stephan, "Boosting Robustness by Clipping
    Gradients in Distributed Learning", arXiv:2405.14432, 2024 (static clipping baseline).
    """

    #: one line for the rule table of docs/index.md
    summary = 'x_i · min(1, c/‖x_i‖)'

    bound = "n > f"
    decomposition = "norms-scales"
    _parameter_constraints = {**PreAggregator._parameter_constraints, "c": Real(minimum=0.0, strict_min=True),
                              "inplace": Opaque(invalid=["yes", 1, None])}

    def __init__(self, f: int = 0, c: float = 1.0, inplace: bool = False) -> None:
        super().__init__(f)
        self.c = self._check("c", c)
        self.inplace = _check_bool(inplace, "inplace")

    def _statistic(self, X, G):
        return self._row_norms(X)

    def _decide(self, norms, f):
        return ops.clip_scales(norms, self.c)

    def _apply(self, X, scales):
        return _scale(X, scales, self.inplace)


@register("arc", "adaptive-robust-clipping")
class ARC(PreAggregator):
    r"""Adaptive robust clipping: clip every input to the ``(k+1)``-th largest input norm.

    .. math:: k = \left\lfloor 2 \frac{f}{n} (n - f) \right\rfloor, \quad
              \tau = \|x\|_{(k+1)}, \quad y_i = x_i \min\left(1, \frac{\tau}{\|x_i\|}\right)

    where :math:`\|x\|_{(1)} \ge \|x\|_{(2)} \ge \dots` are the norms in decreasing order
    (so the ``k`` largest are clipped). ``inplace=True`` scales the caller's rows in place, as
    for :class:`Clipping`.

    References
    ----------
    Allouah, Guerraoui, Gupta, Jellouli, Rizk, Stephan, "Boosting Robustness by Clipping
    Gradients in Distributed Learning", arXiv:2405.14432, 2024.
    """

    #: one line for the rule table of docs/index.md
    summary = 'clip all to the (k+1)-th largest norm, k = ⌊2(f/n)(n − f)⌋'

    bound = "n > 2f"
    decomposition = "norms-scales"
    _parameter_constraints = {**PreAggregator._parameter_constraints, "inplace": Opaque(invalid=["yes", 1, None])}

    def __init__(self, f: int = 0, inplace: bool = False) -> None:
        super().__init__(f)
        self.inplace = _check_bool(inplace, "inplace")

    def _statistic(self, X, G):
        return self._row_norms(X)

    def _decide(self, norms, f):
        n = norms.shape[0]
        k = math.floor(2 * f * (n - f) / n)
        tau = float(torch.sort(norms.detach(), descending=True).values[k])
        return ops.clip_scales(norms, tau)

    def _apply(self, X, scales):
        return _scale(X, scales, self.inplace)


def _scale(X: torch.Tensor, scales: torch.Tensor, inplace: bool) -> torch.Tensor:
    if inplace and not (X.requires_grad and torch.is_grad_enabled()):
        return X.mul_(scales.to(X.dtype)[:, None])
    return ops.scale_rows(X, scales)


def _check_bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def _check_permutation(value) -> torch.Tensor:
    try:
        perm = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"permutation must be a sequence of integers, got {value!r}") from None
    if perm.dim() != 1 or perm.is_floating_point() or perm.dtype == torch.bool:
        raise TypeError(f"permutation must be a 1-D sequence of integers, got {value!r}")
    perm = perm.to(torch.long)
    if not torch.equal(torch.sort(perm).values, torch.arange(perm.numel())):
        raise ValueError(f"permutation must hold 0 .. n-1 once each, got {perm.tolist()}")
    return perm
