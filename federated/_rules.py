"""Building the server's rule from names or objects, and reading what it trusted."""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

import robustagg as ra
from robustagg.aggregators import Aggregator, Pipeline, PreAggregator

RuleSpec = Union[str, Aggregator]


def _one(spec: Any, f: int, what: str) -> Aggregator:
    if isinstance(spec, Aggregator):
        return spec
    if isinstance(spec, str):
        return ra.get(spec, f=f)
    raise TypeError(f"{what} must be a robustagg rule or a registered name (see robustagg.available()), "
                    f"got {type(spec).__name__}")


def build_rule(aggregator: RuleSpec, pre: Any = None, f: int = 0) -> Aggregator:
    """The rule the strategy calls: ``aggregator`` (a name or a rule), behind the ``pre`` stages.

    Names are built with ``robustagg.get(name, f=f)``; objects are used as they are. ``pre``
    is ``None``, one pre-aggregator or a sequence of them (names or objects).
    """
    rule = _one(aggregator, f, "aggregator")
    if pre is None:
        return rule
    stages: Sequence[Any] = [pre] if isinstance(pre, (str, Aggregator)) else list(pre)
    built = [_one(s, f, "pre") for s in stages]
    for s in built:
        if not isinstance(s, PreAggregator):
            raise TypeError(f"pre stage {s!r} is a rule, not a pre-aggregator (nnm, bucketing, clipping, arc)")
    if isinstance(rule, Pipeline):
        return ra.pipeline(*built, *rule.stages)
    return ra.pipeline(*built, rule)


def rows_preserved(rule: Aggregator) -> bool:
    """Whether the indices ``rule.last`` names are the caller's inputs.

    True for a rule alone and for a pipeline whose earlier stages all keep row ``i`` as
    input ``i`` (``PreAggregator.preserves_rows``; bucketing shuffles and averages rows).
    """
    if not isinstance(rule, Pipeline):
        return True
    return all(stage.preserves_rows for stage in rule.stages[:-1])


def trusted(rule: Aggregator, node_ids: List[int]) -> Dict[str, Any]:
    """What the rule exposed about the last call, mapped to node ids.

    ``selected`` (Krum, Multi-Krum, Bulyan) becomes ``{"trusted": [node ids]}``; per-input
    ``weights`` (Flag Aggregator, geometric median) become ``{"weights": {node id: w}}``.
    Nothing is returned when the rule exposes nothing or its final stage saw different rows.
    """
    last = rule.last
    n = len(node_ids)
    if not isinstance(last, dict) or not rows_preserved(rule):
        return {}
    out: Dict[str, Any] = {}
    selected = last.get("selected")
    if selected is not None:
        try:
            out["trusted"] = [node_ids[int(i)] for i in selected]
        except (IndexError, TypeError, ValueError):
            pass
    weights = last.get("weights")
    if weights is not None:
        w = torch.as_tensor(weights).detach().flatten().cpu()
        if w.numel() == n:
            out["weights"] = {node_ids[i]: float(w[i]) for i in range(n)}
    return out


def per_layer_rules(rule: Aggregator, keys: List[str], cache: Optional[Dict[str, Aggregator]]) -> Dict[str, Aggregator]:
    """One independent copy of ``rule`` per layer (stateful rules keep a state per layer)."""
    cache = {} if cache is None else cache
    for key in keys:
        if key not in cache:
            cache[key] = copy.deepcopy(rule)
    return cache


def name_nodes(entry: Dict[str, Any], partitions: Dict[int, int]) -> Dict[str, Any]:
    """A history ``entry`` with node ids replaced by partition ids when all of them are known.

    ``entry["ids"]`` says which ones it names (``"partition"`` or ``"node"``); with partition
    ids, ``entry["node_ids"]`` maps each partition back to its node id.
    """
    found = set(entry["accepted"]) | set(entry["rejected"]) | set(entry["absent"]) | set(entry["replayed"])
    found |= set(entry.get("trusted", [])) | set(entry.get("weights", {}))
    for layer in entry.get("per_layer", {}).values():
        found |= set(layer.get("trusted", [])) | set(layer.get("weights", {}))
    if not found or not found <= set(partitions):
        entry["ids"] = "node"
        return entry

    def one(exposed: Dict[str, Any]) -> Dict[str, Any]:
        out = dict(exposed)
        if "trusted" in out:
            out["trusted"] = [partitions[n] for n in out["trusted"]]
        if "weights" in out:
            out["weights"] = {partitions[n]: w for n, w in out["weights"].items()}
        return out

    named = one(entry)
    named.update(accepted=[partitions[n] for n in entry["accepted"]],
                 rejected={partitions[n]: r for n, r in entry["rejected"].items()},
                 absent=[partitions[n] for n in entry["absent"]], replayed=[partitions[n] for n in entry["replayed"]],
                 ids="partition", node_ids={partitions[n]: n for n in sorted(found)})
    if "per_layer" in entry:
        named["per_layer"] = {k: one(v) for k, v in entry["per_layer"].items()}
    return named
