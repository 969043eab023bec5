"""The aggregator contract: input conversion, ``f`` bounds, non-finite rows, output conversion.

Subclasses implement ``_aggregate(X, f)`` (or ``_transform`` for pre-aggregators) on a clean
float ``(n, d)`` tensor, where every row is finite and ``f`` already counts the dropped rows.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional, Tuple

import torch

from robustagg._registry import ParamsRepr
from robustagg._validation import check_f_bound, check_int, min_inputs
from robustagg.aggregators import ops
from robustagg.aggregators.convert import as_matrix


class NonFiniteUpdateWarning(RuntimeWarning):
    """Some rows held NaN/Inf and were dropped (counted against ``f``)."""


class Aggregator(ParamsRepr):
    """Base class of every rule: ``rule(updates) -> aggregate``.

    Parameters
    ----------
    f : int
        The declared number of Byzantine inputs. Rows holding NaN/Inf are dropped and count
        against it; more than ``f`` of them is an error. Rules that use pairwise distances
        (``uses_gram``) also drop finite rows whose squared norm exceeds a quarter of the
        dtype's largest value (their distances would overflow).

    Subclasses set ``bound`` (the requirement on ``n`` and ``f``, e.g. ``"n > 2f"``) and
    implement ``_aggregate(X, f)``.
    """

    name: str = ""
    bound: str = "n > f"
    #: whether the rule detects non-finite rows from its Gram matrix (no extra pass).
    uses_gram: bool = False
    #: whether any non-finite input entry makes the output non-finite (then the input is only
    #: checked when the output is not finite: one pass over the input instead of two).
    nonfinite_shows_in_output: bool = False

    def __init__(self, f: int = 0) -> None:
        self.f = check_int(f, "f", minimum=0)
        self._warned = False
        self._kept: Optional[torch.Tensor] = None  # original indices of the rows kept by the last call

    # -- public API -------------------------------------------------------------
    def __call__(self, updates: Any) -> Any:
        X, restore = as_matrix(updates)
        return restore(self.aggregate(X))

    def aggregate(self, X: torch.Tensor) -> torch.Tensor:
        """The rule on an ``(n, d)`` float tensor; returns a tensor (no type conversion)."""
        if self.nonfinite_shows_in_output and isinstance(X, torch.Tensor) and X.dim() == 2 and X.shape[0] > 0:
            # a rule whose output is non-finite wherever an input is (a plain sum): compute it
            # first and check the d outputs instead of the n x d inputs; redo it otherwise
            check_f_bound(self.name or type(self).__name__, X.shape[0], self.f, bound=self.bound)
            out = self._aggregate(X, self.f, None)
            if ops.all_finite(out):
                self._kept = None
                return out
        X, f, G = self._prepare(X)
        return self._aggregate(X, f, G)

    def min_inputs(self) -> int:
        """Smallest number of inputs the rule accepts with its ``f``."""
        return min_inputs(self.bound, self.f)

    def reset(self) -> None:
        """Forget any state kept between calls (no-op for stateless rules)."""

    # -- the shared preparation -------------------------------------------------
    def _prepare(self, X: torch.Tensor) -> Tuple[torch.Tensor, int, Optional[torch.Tensor]]:
        if not isinstance(X, torch.Tensor) or X.dim() != 2:
            X, _ = as_matrix(X)
        n = X.shape[0]
        if n == 0:
            raise ValueError("got no updates (n = 0)")
        check_f_bound(self.name or type(self).__name__, n, self.f, bound=self.bound)
        G = None
        if self.uses_gram:
            G = ops.gram(X)
            diag = torch.diagonal(G)
            # rows whose squared norm is not finite, or so large that |x|^2 + |y|^2 - 2 x.y
            # overflows (inf - inf = NaN), cannot enter distances; NaN fails the comparison too
            bad = torch.nonzero(~(diag <= torch.finfo(G.dtype).max / 4)).flatten()
        else:
            bad = ops.nonfinite_rows(X)
        self._kept = None
        if bad.numel() == 0:
            return X, self.f, G
        return self._drop(X, G, bad)

    def _original(self, indices):
        """Map row indices of the cleaned input back to the caller's numbering."""
        if self._kept is None:
            return [int(i) for i in indices]
        return [int(self._kept[int(i)]) for i in indices]

    def _drop(self, X, G, bad):
        b = int(bad.numel())
        if b > self.f:
            raise ValueError(
                f"{self.name or type(self).__name__}: {b} updates are non-finite (NaN/Inf"
                f"{' or overflowing norm' if self.uses_gram else ''}) but f={self.f}; "
                "declare f >= the number of faulty workers"
            )
        if not self._warned:
            warnings.warn(
                f"{self.name}: dropped {b} non-finite update(s) (rows {bad.tolist()}), counted against f",
                NonFiniteUpdateWarning,
                stacklevel=4,
            )
            self._warned = True
        keep = torch.ones(X.shape[0], dtype=torch.bool, device=X.device)
        keep[bad] = False
        idx = torch.nonzero(keep).flatten()
        self._kept = idx
        X = X.index_select(0, idx)
        if G is not None:
            G = G.index_select(0, idx).index_select(1, idx)
        return X, self.f - b, G

    def _aggregate(self, X: torch.Tensor, f: int, G: Optional[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


class PreAggregator(Aggregator):
    """A map from ``(n, d)`` to ``(n', d)`` applied before a rule (NNM, bucketing, clipping, ARC).

    Called alone it returns the transformed matrix (in the input's type); in a
    :class:`~robustagg.aggregators.pipeline.Pipeline` it feeds the next stage.
    """

    def transform(self, X: torch.Tensor) -> torch.Tensor:
        return self.aggregate(X)

    def _aggregate(self, X, f, G):
        return self._transform(X, f, G)

    def _transform(self, X: torch.Tensor, f: int, G: Optional[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError
