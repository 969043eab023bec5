"""Decoding a round's training replies into one update matrix (used by ``RobustStrategy``)."""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np
import torch
from flwr.app import Message

from robustagg.aggregators import ops

from federated._metrics import node_partition
from federated._updates import MalformedReply, metric_scalar, split_records

#: the metric a client reports its number of local steps under (AFA modes)
LOCAL_STEPS_KEY = "local-steps"
#: the metric a client that chose not to train this round sets (anarchic participation)
SKIPPED_KEY = "skipped"


def collect(strategy: Any, replies: List[Message]):
    """Decode the replies into an ``(n, d)`` update matrix, rejecting malformed ones.

    Each node counts once per round: accepted with its first valid reply (later replies
    are ignored and listed as ``replayed``), else rejected (first reason), else absent.
    """
    layout = strategy._layout
    X = strategy._rows(len(replies))
    nodes: List[int] = []
    contents: List[Any] = []
    steps: List[float] = []
    rejected: Dict[int, str] = {}
    absent: List[int] = []
    replayed: List[int] = []
    seen = set()
    for msg in replies:
        node = int(msg.metadata.src_node_id)
        strategy._known_nodes.setdefault(node, None)
        if node in seen:
            replayed.append(node)
            continue
        if msg.has_error() or not msg.has_content():
            absent.append(node)
            continue
        content = msg.content
        try:
            records, metric_records = split_records(content)
            metrics = metric_records[0] if len(metric_records) == 1 else {}
            if not records and metric_scalar(metrics, SKIPPED_KEY):
                absent.append(node)
                continue
            if len(records) != 1:
                raise MalformedReply(f"expected one ArrayRecord, got {len(records)}")
            k = 1.0
            if strategy.mode != "sync":
                k = metric_scalar(metrics, LOCAL_STEPS_KEY)
                raw = metrics.get(LOCAL_STEPS_KEY) if hasattr(metrics, "get") else None
                if k is None and raw is None:
                    k = 1.0
                elif k is None or k < 1:
                    raise MalformedReply(f"invalid {LOCAL_STEPS_KEY!r}: {raw!r}")
            layout.decode_views(records[0], strategy._row_views[len(nodes)], strategy._global_views)
            if not ops.all_finite(torch.from_numpy(X[len(nodes)])):  # one pass over the row
                raise MalformedReply("non-finite values (NaN/Inf)")
        except MalformedReply as exc:
            rejected.setdefault(node, str(exc))
            continue
        seen.add(node)
        nodes.append(node)
        contents.append((content, metric_records))
        steps.append(k)
        partition = node_partition(content)
        if partition is not None:
            strategy.partitions.setdefault(node, partition)
    X = X[: len(nodes)]
    rejected = {n: r for n, r in rejected.items() if n not in seen}
    absent = [n for n in dict.fromkeys(absent) if n not in seen and n not in rejected]
    if strategy.mode != "sync" and any(k != 1.0 for k in steps):
        X /= np.asarray(steps, dtype=X.dtype)[:, None]
    return torch.from_numpy(X), nodes, contents, rejected, absent, replayed
