"""RobustStrategy's anarchic modes (AFA-CD, AFA-CS) and its reply decoding, on mocked reply
Messages (no Ray, no network)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord

import robustagg as ra
from federated import RobustStrategy
from federated._updates import Layout
from flower_mocks import (NODES, SHAPES, FakeGrid, expected_updates, flat, make_global,  # noqa: F401
                          replies_for, run_round, task_identity, updates)


# --------------------------------------------------------------------- anarchic modes
def test_afa_cd_averages_per_step_updates():
    glob, U = make_global(), updates(4)
    steps = [{"num-examples": 5, "local-steps": k} for k in (1, 2, 4, 8)]
    strategy = RobustStrategy("mean", mode="afa-cd", server_lr=3.0)
    arrays, _ = run_round(strategy, glob, replies_for(glob, U, metrics=steps))
    E = expected_updates(glob, U) / np.array([1, 2, 4, 8], dtype=np.float32)[:, None]
    np.testing.assert_allclose(flat(arrays), flat(glob) + 3.0 * E.mean(axis=0), atol=1e-6)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), [1, 2]])
def test_afa_rejects_invalid_local_steps(bad):
    glob, U = make_global(), updates(4)
    metrics = [{"num-examples": 5, "local-steps": bad}] + [{"num-examples": 5, "local-steps": 2}] * 3
    strategy = RobustStrategy("mean", mode="afa-cd")
    run_round(strategy, glob, replies_for(glob, U, metrics=metrics))
    assert "local-steps" in strategy.history[-1]["rejected"][NODES[0]]


def test_afa_cs_keeps_the_latest_update_of_every_known_node():
    glob = make_global()
    U = updates(4, seed=11)
    strategy = RobustStrategy("mean", mode="afa-cs")
    strategy.configure_train(1, glob, ConfigRecord(), FakeGrid(NODES[:4]))
    a1, _ = strategy.aggregate_train(1, replies_for(glob, U[:2], nodes=NODES[:2]))
    E1 = expected_updates(glob, U[:2])
    np.testing.assert_allclose(flat(a1), flat(glob) + E1.sum(axis=0) / 4, atol=1e-6)  # M = 4, two zeros
    strategy.configure_train(2, a1, ConfigRecord(), FakeGrid(NODES[:4]))
    a2, _ = strategy.aggregate_train(2, replies_for(a1, U[2:3], nodes=NODES[2:3]))
    E2 = expected_updates(a1, U[2:3])
    np.testing.assert_allclose(flat(a2), flat(a1) + (E1.sum(axis=0) + E2[0]) / 4, atol=1e-6)
    strategy.configure_train(3, a2, ConfigRecord(), FakeGrid(NODES[:4]))
    a3, _ = strategy.aggregate_train(3, [])  # nobody arrives: the stored updates still move the model
    np.testing.assert_allclose(flat(a3), flat(a2) + (E1.sum(axis=0) + E2[0]) / 4, atol=1e-6)
    assert strategy.history[-1]["accepted"] == []


def test_afa_cs_store_grows_with_late_nodes_and_survives_in_place_clipping():
    # the store is kept across rounds: a node first seen in round 2 gets a new row, and a stage
    # that scales its input in place (clipping, inplace=True) must not rewrite the stored updates
    glob = make_global()
    U = updates(4, seed=12)
    rule = ra.pipeline(ra.get("clipping", c=1e-3, inplace=True), ra.get("mean"))
    strategy = RobustStrategy(rule, mode="afa-cs")
    strategy.configure_train(1, glob, ConfigRecord(), FakeGrid(NODES[:2]))
    a1, _ = strategy.aggregate_train(1, replies_for(glob, U[:2], nodes=NODES[:2]))
    E1 = expected_updates(glob, U[:2])
    np.testing.assert_allclose(strategy._store[:2].numpy(), E1, rtol=1e-6)
    strategy.configure_train(2, a1, ConfigRecord(), FakeGrid(NODES[:4]))
    strategy.aggregate_train(2, replies_for(a1, U[2:4], nodes=NODES[2:4]))
    E2 = expected_updates(a1, U[2:4])
    np.testing.assert_allclose(strategy._store[:4].numpy(), np.concatenate([E1, E2]), rtol=1e-6)


def test_layout_fast_and_slow_decoding_agree():
    glob = make_global()
    layout = Layout(glob)
    fortran = ArrayRecord({k: Array(np.array(glob[k].numpy(), order="F")) for k in glob.keys()})
    np.testing.assert_array_equal(layout.flatten(fortran), layout.flatten(glob))
    assert layout.d == sum(int(np.prod(s)) for s in SHAPES.values()) and layout.float_keys == list(SHAPES)
