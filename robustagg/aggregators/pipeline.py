"""Composition of pre-aggregators and a final rule."""

from __future__ import annotations

from typing import Any

import torch

from robustagg._validation import check_f_bound
from robustagg.aggregators import ops
from robustagg.aggregators.base import Aggregator, PreAggregator
from robustagg.aggregators.convert import as_matrix


class Pipeline(Aggregator):
    r"""``pipeline(p_1, ..., p_k, rule)(x) = rule(p_k(...p_1(x)))``.

    Every stage but the last must be a :class:`PreAggregator`. Non-finite rows are
    dropped once, before the first stage, and count against every stage's ``f``.
    Each stage checks its own bound on the number of rows it receives and the ``f`` left
    after the drop (as a rule called alone does).

    >>> import robustagg as ra
    >>> ra.pipeline(ra.get("nnm", f=2), ra.get("trimmed-mean", f=2))
    Pipeline(NNM(f=2), TrimmedMean(f=2))
    """

    def __init__(self, *stages: Aggregator) -> None:
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        for i, stage in enumerate(stages):
            if not isinstance(stage, Aggregator):
                raise TypeError(f"stage {i} is a {type(stage).__name__}, not a robustagg rule")
            if i < len(stages) - 1 and not isinstance(stage, PreAggregator):
                raise TypeError(
                    f"stage {i} ({stage.name}) returns one vector, so only the last stage can be it; "
                    "earlier stages must be pre-aggregators (nnm, bucketing, clipping, arc)"
                )
        super().__init__(stages[0].f)
        self.stages = tuple(stages)
        self.name = " -> ".join(s.name for s in stages)
        self.bound = stages[0].bound
        self.uses_gram = stages[0].uses_gram

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(map(repr, self.stages))})"

    @property
    def last(self) -> dict:
        return getattr(self.stages[-1], "last", {})

    def reset(self) -> None:
        for stage in self.stages:
            stage.reset()

    def min_inputs(self) -> int:
        for n in range(1, 1 << 16):
            rows, ok = n, True
            for stage in self.stages:
                if rows < stage.min_inputs():
                    ok = False
                    break
                rows = stage.output_rows(rows) if hasattr(stage, "output_rows") else rows
            if ok:
                return n
        raise ValueError("no number of inputs satisfies every stage")

    def __call__(self, updates: Any) -> Any:
        X, restore = as_matrix(updates)
        return restore(self.aggregate(X))

    def aggregate(self, X: torch.Tensor) -> torch.Tensor:
        first = self.stages[0]
        X, f, G = first._prepare(X)
        dropped = first.f - f
        X = first._aggregate(X, f, G)
        for stage in self.stages[1:]:
            if stage.f < dropped:
                raise ValueError(
                    f"{dropped} non-finite updates were dropped but stage {stage.name} declares f={stage.f}"
                )
            # like a rule called alone: the bound holds for the rows left and the f left
            check_f_bound(stage.name, X.shape[0], stage.f - dropped, bound=stage.bound)
            G = ops.gram(X) if stage.uses_gram else None
            X = stage._aggregate(X, stage.f - dropped, G)
        return X


def pipeline(*stages: Aggregator) -> Pipeline:
    """Compose pre-aggregators and a final rule: ``pipeline(get("nnm", f=3), get("krum", f=3))``."""
    return Pipeline(*stages)
