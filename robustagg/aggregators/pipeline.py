"""Composition of pre-aggregators and a final rule."""

from __future__ import annotations

from typing import Any

import torch

from robustagg.aggregators.base import Aggregator, PreAggregator, _check_keys


class Pipeline(Aggregator):
    r"""``pipeline(p_1, ..., p_k, rule)(x) = rule(p_k(...p_1(x)))``.

    Every stage but the last must be a :class:`PreAggregator`. Each stage receives its input
    through :meth:`Aggregator.aggregate`, the path a rule called alone takes: it drops the
    non-finite rows of what it receives (and, for distance rules, rows whose norms overflow:
    a bucket average holding a 1e20 row is itself a bad row), and checks its bound on the rows
    it receives and the ``f`` left, its own ``f`` minus the rows earlier stages dropped.

    After a call, ``last`` holds the final stage's ``last`` and, under ``"stages"``, every
    stage's; its ``"selected"`` indices are in the caller's numbering when every earlier stage
    ``preserves_rows`` (else in the numbering of the final stage's input). ``dropped`` counts
    the rows all stages dropped; ``kept`` is the first stage's.

    >>> import robustagg as ra
    >>> ra.pipeline(ra.get("nnm", f=2), ra.get("trimmed-mean", f=2))
    Pipeline(NNM(f=2), TrimmedMean(f=2))
    """

    _document_bound = False  # each stage has its own

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

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(map(repr, self.stages))})"

    def reset(self) -> None:
        for stage in self.stages:
            stage.reset()

    def state_dict(self) -> dict:
        return {"stages": [stage.state_dict() for stage in self.stages]}

    def load_state_dict(self, state: dict) -> None:
        _check_keys(self, state, ("stages",))
        if len(state["stages"]) != len(self.stages):
            raise ValueError(
                f"{self.name}: the state has {len(state['stages'])} stage(s), the pipeline has {len(self.stages)}"
            )
        for stage, sub in zip(self.stages, state["stages"]):
            stage.load_state_dict(sub)

    def min_inputs(self) -> int:
        for n in range(1, 1 << 16):
            rows, ok = n, True
            for stage in self.stages:
                if rows < stage.min_inputs():
                    ok = False
                    break
                rows = stage.output_rows(rows) if isinstance(stage, PreAggregator) else rows
            if ok:
                return n
        raise ValueError("no number of inputs satisfies every stage")

    def aggregate(self, X: torch.Tensor, *, spent: int = 0) -> torch.Tensor:
        dropped = spent
        for stage in self.stages:
            X = stage.aggregate(X, spent=dropped)
            dropped += stage.dropped
        self.kept, self.dropped = self.stages[0].kept, dropped - spent
        final = self.stages[-1]
        self.last = {**final.last, "stages": [stage.last for stage in self.stages]}
        if "selected" in final.last and all(s.preserves_rows for s in self.stages[:-1]):
            self.last["selected"] = [self._to_caller(i) for i in final.last["selected"]]
        return X

    def _to_caller(self, index: int) -> int:
        """Row ``index`` of the final stage's input, numbered as the pipeline's input."""
        for stage in reversed(self.stages[:-1]):
            if stage.kept is not None:
                index = int(stage.kept[index])
        return index


def pipeline(*stages: Aggregator) -> Pipeline:
    """Compose pre-aggregators and a final rule: ``pipeline(get("nnm", f=3), get("krum", f=3))``."""
    return Pipeline(*stages)
