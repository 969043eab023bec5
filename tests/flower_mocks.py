"""Mocked Flower reply Messages for the RobustStrategy tests (no Ray, no network)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

import robustagg as ra

SHAPES = {"conv.weight": (4, 3), "conv.bias": (4,), "fc.weight": (2, 4)}
NODES = [101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111]


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Messages need a run id outside of a Flower run (run_simulation sets these)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)


class FakeGrid:
    def __init__(self, nodes):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return list(self.nodes)


def make_global(seed=0, buffer=True):
    rng = np.random.default_rng(seed)
    arrays = {k: Array(rng.standard_normal(s).astype(np.float32)) for k, s in SHAPES.items()}
    if buffer:
        arrays["bn.num_batches_tracked"] = Array(np.array(7, dtype=np.int64))
    return ArrayRecord(arrays)


def flat(record):
    return np.concatenate([record[k].numpy().ravel() for k in SHAPES])


def reply_arrays(glob, update):
    """The arrays a client sends: global + update, per key, in float32."""
    out, o = {}, 0
    for k, s in SHAPES.items():
        size = int(np.prod(s))
        out[k] = Array((glob[k].numpy() + update[o:o + size].reshape(s)).astype(np.float32))
        o += size
    if "bn.num_batches_tracked" in glob:
        out["bn.num_batches_tracked"] = Array(np.array(9, dtype=np.int64))
    return ArrayRecord(out)


def reply(node, arrays=None, metrics=None, error=None, extra_records=None):
    instruction = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=node,
                          message_type="train")
    if error is not None:
        return Message(Error(code=0, reason=error), reply_to=instruction)
    content = {}
    if arrays is not None:
        content["arrays"] = arrays
    content["metrics"] = MetricRecord({"num-examples": 10} if metrics is None else metrics)
    content.update(extra_records or {})
    return Message(RecordDict(content), reply_to=instruction)


def replies_for(glob, U, nodes=None, metrics=None):
    nodes = NODES[: len(U)] if nodes is None else nodes
    return [reply(node, reply_arrays(glob, u), None if metrics is None else metrics[i])
            for i, (node, u) in enumerate(zip(nodes, U))]


def expected_updates(glob, U):
    """What the server sees: decoded float32 replies minus the float32 global."""
    return np.stack([flat(reply_arrays(glob, u)) for u in U]) - flat(glob)


def updates(n, seed=1, scale=0.1):
    d = sum(int(np.prod(s)) for s in SHAPES.values())
    return (scale * np.random.default_rng(seed).standard_normal((n, d))).astype(np.float32)


def run_round(strategy, glob, replies, rnd=1):
    strategy.set_global(glob)
    return strategy.aggregate_train(rnd, replies)


def _rule(name, f):
    factory = ra.aggregators.REGISTRY.resolve(name)
    params = {"f": f}
    if "seed" in inspect.signature(factory).parameters:
        params["seed"] = 0
    rule = ra.get(name, **params)
    if isinstance(rule, ra.PreAggregator):
        rule = ra.pipeline(rule, ra.get("trimmed-mean", f=f if name != "bucketing" else 1))
    return rule

