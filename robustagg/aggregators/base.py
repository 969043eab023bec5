"""The aggregator contract: input conversion, ``f`` bounds, non-finite rows, state, output conversion.

Every call, of a rule alone or of a pipeline's stage, takes one path: :meth:`Aggregator.aggregate`
converts the input, checks the bound with the ``f`` left, drops non-finite rows (and, for rules
that use pairwise distances, rows whose norms overflow), records ``kept``/``dropped`` and calls
the rule's ``_aggregate(X, f, G)`` on a clean float ``(n, d)`` tensor where ``f`` already counts
the dropped rows.

A rule is written as a *statistic* of the whole input (the Gram matrix, the row norms, or
nothing), a small *decision* taken from it alone, and the decision's *application* to the rows
(``_statistic`` -> ``_decide`` -> ``_apply``); ``decomposition`` names the family. Rules whose
shape does not fit (coordinate-wise ones, iterative ones) override ``_aggregate`` instead.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Optional, Tuple

import torch

from robustagg._registry import ParamsRepr
from robustagg._validation import Integer, check_f_bound, min_inputs
from robustagg.aggregators import ops
from robustagg.aggregators.convert import as_matrix

#: How a rule splits over coordinate shards: what its statistic is, what it decides, how it applies.
DECOMPOSITIONS = {
    "coordinate-wise": "no statistic; the rule runs on each coordinate (column) independently",
    "gram-selection": "Gram matrix -> a set of selected rows -> their mean (or a coordinate rule on them)",
    "gram-weights": "Gram matrix (nothing, for bucketing) -> coefficients (n,) or (n', n) -> coefficients @ rows",
    "norms-scales": "row norms -> one scale per row -> scaled rows",
    "iterative": "several rounds of a statistic and a decision (state between calls)",
}


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

    Attributes
    ----------
    last : dict
        What the last call exposed (rule-specific: Krum's ``"selected"``, the geometric
        median's ``"weights"``...); empty before the first call and for rules that expose
        nothing. Indices in it are in the caller's numbering.
    kept : torch.Tensor or None
        Indices of the rows the last call used, or ``None`` when it used all of them.
    dropped : int
        Number of rows the last call dropped (and counted against ``f``).

    Subclasses set ``bound`` (the requirement on ``n`` and ``f``, e.g. ``"n > 2f"``),
    ``decomposition`` (a key of :data:`DECOMPOSITIONS`), ``_parameter_constraints`` (one
    constraint of :mod:`robustagg._validation` per constructor parameter, read by
    :meth:`_check`), and implement ``_decide``/``_apply`` or ``_aggregate(X, f, G)``.
    Stateful rules override :meth:`state_dict`, :meth:`load_state_dict` and :meth:`reset`.
    """

    name: str = ""
    bound: str = "n > f"
    decomposition: str = "iterative"
    #: whether the rule needs pairwise distances (then non-finite rows show in the Gram diagonal).
    uses_gram: bool = False
    #: whether any non-finite input entry makes the output non-finite (then the input is only
    #: checked when the output is not finite: one pass over the input instead of two).
    nonfinite_shows_in_output: bool = False
    _parameter_constraints: Dict[str, Any] = {"f": Integer(minimum=0)}

    def __init__(self, f: int = 0) -> None:
        self.f = self._check("f", f)
        self.last: dict = {}
        self.kept: Optional[torch.Tensor] = None
        self.dropped: int = 0
        self._warned = False

    @classmethod
    def _check(cls, name: str, value: Any) -> Any:
        """``value`` validated against the declared constraint of parameter ``name``."""
        return cls._parameter_constraints[name].check(value, name)

    # -- public API -------------------------------------------------------------
    def __call__(self, updates: Any) -> Any:
        X, restore = as_matrix(updates)
        return restore(self.aggregate(X))

    def aggregate(self, X: torch.Tensor, *, spent: int = 0) -> torch.Tensor:
        """The rule on an ``(n, d)`` float tensor; returns a tensor (no type conversion).

        ``spent`` counts Byzantine rows already removed before this call (a pipeline passes
        the rows its earlier stages dropped): the rule tolerates ``f - spent`` bad rows.
        """
        if not isinstance(X, torch.Tensor) or X.dim() != 2:
            X, _ = as_matrix(X)
        n, f = X.shape[0], self.f - spent
        if n == 0:
            raise ValueError("got no updates (n = 0)")
        if f < 0:
            raise ValueError(f"{spent} non-finite updates were dropped but stage {self._label} declares f={self.f}")
        check_f_bound(self._label, n, f, bound=self.bound)
        self.last = {}
        if self.nonfinite_shows_in_output:
            # a rule whose output is non-finite wherever an input is (a plain sum): compute it
            # first and check the d outputs instead of the n x d inputs; redo it otherwise
            out = self._aggregate(X, f, None)
            if ops.all_finite(out):
                self.kept, self.dropped = None, 0
                return out
        X, f, G = self._clean(X, f)
        return self._aggregate(X, f, G)

    def min_inputs(self) -> int:
        """Smallest number of inputs the rule accepts with its ``f``."""
        return min_inputs(self.bound, self.f)

    def reset(self) -> None:
        """Forget any state kept between calls (no-op for stateless rules)."""

    def state_dict(self) -> dict:
        """The state kept between calls (tensors, numbers, ``None``), as torch optimizers give it.

        Hyper-parameters and per-call results (``last``) are not state: a rule built with the
        same parameters and given this through :meth:`load_state_dict` continues identically.
        Empty for stateless rules."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        _check_keys(self, state, ())

    # -- the one preparation ----------------------------------------------------
    @property
    def _label(self) -> str:
        return self.name or type(self).__name__

    def _clean(self, X: torch.Tensor, f: int) -> Tuple[torch.Tensor, int, Optional[torch.Tensor]]:
        """Drop the rows no rule can use; one pass over ``X`` (or none past the Gram matrix)."""
        G = None
        if self.uses_gram:
            G = ops.gram(X)
            # rows whose squared norm is not finite, or so large that |x|^2 + |y|^2 - 2 x.y
            # overflows (inf - inf = NaN), cannot enter distances; NaN fails the comparison too
            bad = torch.nonzero(~(torch.diagonal(G) <= torch.finfo(G.dtype).max / 4)).flatten()
        else:
            bad = ops.nonfinite_rows(X)
        self.kept, self.dropped = None, 0
        b = int(bad.numel())
        if b == 0:
            return X, f, G
        if b > f:
            raise ValueError(
                f"{self._label}: {b} updates are non-finite (NaN/Inf"
                f"{' or overflowing norm' if self.uses_gram else ''}) but f={f}; "
                "declare f >= the number of faulty workers"
            )
        if not self._warned:
            warnings.warn(
                f"{self._label}: dropped {b} non-finite update(s) (rows {bad.tolist()}), counted against f",
                NonFiniteUpdateWarning,
                stacklevel=4,
            )
            self._warned = True
        keep = torch.ones(X.shape[0], dtype=torch.bool, device=X.device)
        keep[bad] = False
        idx = torch.nonzero(keep).flatten()
        self.kept, self.dropped = idx, b
        X = X.index_select(0, idx)
        if G is not None:
            G = G.index_select(0, idx).index_select(1, idx)
        return X, f - b, G

    def _original(self, indices) -> list:
        """Map row indices of the cleaned input back to the caller's numbering."""
        if self.kept is None:
            return [int(i) for i in indices]
        return [int(self.kept[int(i)]) for i in indices]

    # -- statistic -> decision -> application ------------------------------------
    def _aggregate(self, X: torch.Tensor, f: int, G: Optional[torch.Tensor]) -> torch.Tensor:
        return self._apply(X, self._decide(self._statistic(X, G), f))

    def _statistic(self, X: torch.Tensor, G: Optional[torch.Tensor]) -> Any:
        """The summary of the whole input the decision needs: ``(D, G)`` for distance rules."""
        return ops.sq_distances(X, G) if self.uses_gram else None

    def _decide(self, statistic: Any, f: int) -> Any:
        """The decision, from the statistic alone (the same on every coordinate shard)."""
        raise NotImplementedError

    def _apply(self, X: torch.Tensor, decision: Any) -> torch.Tensor:
        """The decision applied to the rows; by default coefficients ``decision @ X``."""
        return ops.combine_rows(decision, X)


class PreAggregator(Aggregator):
    """A map from ``(n, d)`` to ``(n', d)`` applied before a rule (NNM, bucketing, clipping, ARC).

    Called alone it returns the transformed matrix (in the input's type); in a
    :class:`~robustagg.aggregators.pipeline.Pipeline` it feeds the next stage.
    ``preserves_rows`` says whether output row ``i`` stands for input row ``i`` (NNM,
    clipping, ARC; not bucketing, which shuffles and merges rows).
    """

    preserves_rows: bool = True

    def output_rows(self, n: int) -> int:
        """Number of rows the map returns for ``n`` (finite) inputs."""
        return n

    def transform(self, X: torch.Tensor) -> torch.Tensor:
        return self.aggregate(X)


def _check_keys(rule: Aggregator, state: Any, keys) -> None:
    if not isinstance(state, dict):
        raise TypeError(f"{rule._label}: a state dict must be a dict, got {type(state).__name__}")
    unknown = sorted(set(state) - set(keys))
    if unknown:
        raise ValueError(f"{rule._label}: unknown state key(s) {unknown}; expected {sorted(keys)}")
    missing = sorted(set(keys) - set(state))
    if missing:
        raise ValueError(f"{rule._label}: state dict lacks {missing}")
