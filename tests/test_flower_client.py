"""make_client_app roles and the full Strategy.start loop, run in-process (no Ray).

``InlineGrid`` plays Flower's grid: it delivers each message to the ``ClientApp`` of its
node, in this process, with one ``Context`` per node that persists across rounds (as the
simulation's node store does).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from federated import PartitionData, RobustStrategy, central_evaluate_fn, make_client_app
from federated._roles import derive_seed, node_role
from federated._updates import Layout
from federated.client import local_train
from robustagg import models

N = 5


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    data_fn = PartitionData("digits", seed=0)
    model_fn = models.model_fn("logistic", input_shape=(1, 8, 8), num_classes=10, seed=0)
    return model_fn, data_fn


class InlineGrid:
    def __init__(self, app, n, node_config=None):
        self.app = app
        self.contexts = {1000 + p: Context(run_id=1, node_id=1000 + p,
                                           node_config={"partition-id": p, "num-partitions": n,
                                                        **(node_config or {}).get(p, {})},
                                           state=RecordDict(), run_config={}) for p in range(n)}

        self.log = []

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        replies = [self.app(m, self.contexts[m.metadata.dst_node_id]) for m in messages]
        self.log.extend(replies)
        return replies


def one_round(app, strategy, n=N, node_config=None, arrays=None, model_fn=None, rnd=1):
    grid = InlineGrid(app, n, node_config)
    arrays = arrays if arrays is not None else ArrayRecord(model_fn().state_dict())
    messages = list(strategy.configure_train(rnd, arrays, ConfigRecord(), grid))
    replies = grid.send_and_receive(messages)
    return arrays, {r.metadata.src_node_id - 1000: r for r in replies}


def update_of(reply, glob):
    layout = Layout(glob)
    return layout.flatten(next(iter(reply.content.array_records.values()))) - layout.flatten(glob)


def test_honest_nodes_train_locally(setup):
    model_fn, data_fn = setup
    app = make_client_app(model_fn, data_fn, local_steps=3, lr=0.2, batch_size=16, seed=4)
    glob, replies = one_round(app, FedAvg(fraction_evaluate=0.0, min_available_nodes=N, min_train_nodes=N),
                              model_fn=model_fn)
    X, y = data_fn(2, N)
    trained, _ = local_train(model_fn, glob.to_torch_state_dict(), X, y, steps=3, lr=0.2, batch_size=16,
                             momentum=0.0, seed=derive_seed(4, 2, 1))
    expect = Layout(glob).flatten(ArrayRecord(trained)) - Layout(glob).flatten(glob)
    np.testing.assert_allclose(update_of(replies[2], glob), expect, atol=1e-6)
    metrics = next(iter(replies[2].content.metric_records.values()))
    assert metrics["num-examples"] == len(X) and metrics["local-steps"] == 3 and metrics["staleness"] == 0


def test_omniscient_reverse_attack_uses_the_honest_updates(setup):
    model_fn, data_fn = setup
    app = make_client_app(model_fn, data_fn, local_steps=3, lr=0.2, roles={0: {"byzantine": "reverse"}},
                          omniscient=True)
    glob, replies = one_round(app, FedAvg(fraction_evaluate=0.0, min_available_nodes=N, min_train_nodes=N),
                              model_fn=model_fn)
    honest = np.stack([update_of(replies[p], glob) for p in range(1, N)])
    np.testing.assert_allclose(update_of(replies[0], glob), -10 * honest.mean(axis=0), rtol=1e-4, atol=1e-6)


def test_node_config_overrides_roles_and_can_lie_about_counts(setup):
    model_fn, data_fn = setup
    app = make_client_app(model_fn, data_fn, local_steps=2, roles={0: {"byzantine": "reverse"}})
    config = {0: {"byzantine": "sign-flip", "byzantine-num-examples": 1e6}, 1: {"byzantine": "zero"}}
    glob, replies = one_round(app, FedAvg(fraction_evaluate=0.0, min_available_nodes=N, min_train_nodes=N),
                              node_config=config, model_fn=model_fn)
    assert next(iter(replies[0].content.metric_records.values()))["num-examples"] == 1e6
    np.testing.assert_array_equal(update_of(replies[1], glob), 0)
    role = node_role(0, {"byzantine": "alie", "byzantine-z": 1.5, "fault": "drop", "fault-q": 0.5},
                     {0: {"byzantine": "reverse", "poison": "label-flip"}})
    assert (role.byzantine, role.byzantine_params, role.poison, role.fault, role.fault_params) == (
        "alie", {"z": 1.5}, "label-flip", "drop", {"q": 0.5})


def test_faults_and_participation_reach_the_strategy(setup):
    model_fn, data_fn = setup
    roles = {0: {"fault": "drop", "fault-q": 1.0}, 1: {"fault": "nonfinite"},
             2: {"participation": "anarchic", "participation-p": 0.0},
             3: {"participation": "anarchic", "participation-p": 1.0, "participation-min-steps": 2,
                 "participation-max-steps": 4}}
    app = make_client_app(model_fn, data_fn, local_steps=3, roles=roles)
    strategy = RobustStrategy("median", f=1, mode="afa-cd", min_available_nodes=6, min_train_nodes=6)
    glob, replies = one_round(app, strategy, n=6, model_fn=model_fn)
    arrays, metrics = strategy.aggregate_train(1, list(replies.values()))
    entry = strategy.history[-1]
    assert sorted(p - 1000 for p in entry["absent"]) == [0, 2]
    assert [p - 1000 for p in entry["rejected"]] == [1] and "non-finite" in entry["rejected"][1001]
    assert 2 <= next(iter(replies[3].content.metric_records.values()))["local-steps"] <= 4
    assert arrays is not None and metrics["num-accepted"] == 3


def test_poisoned_node_trains_on_flipped_labels(setup):
    model_fn, data_fn = setup
    app = make_client_app(model_fn, data_fn, local_steps=3, roles={1: {"poison": "label-flip"}})
    plain = make_client_app(model_fn, data_fn, local_steps=3)
    fedavg = FedAvg(fraction_evaluate=0.0, min_available_nodes=N, min_train_nodes=N)
    glob, poisoned = one_round(app, fedavg, model_fn=model_fn)
    _, clean = one_round(plain, fedavg, model_fn=model_fn, arrays=glob)
    np.testing.assert_allclose(update_of(poisoned[2], glob), update_of(clean[2], glob), atol=1e-7)
    assert np.abs(update_of(poisoned[1], glob) - update_of(clean[1], glob)).max() > 1e-3


def test_stale_updates_come_from_older_global_models(setup):
    model_fn, data_fn = setup
    roles = {0: {"participation": "anarchic", "participation-p": 1.0, "participation-max-delay": 2}}
    app = make_client_app(model_fn, data_fn, local_steps=2, roles=roles)
    strategy = RobustStrategy("mean", fraction_evaluate=0.0, min_available_nodes=2, min_train_nodes=2)
    grid = InlineGrid(app, 2)
    strategy.start(grid, ArrayRecord(model_fn().state_dict()), num_rounds=6)
    stale = [next(iter(m.content.metric_records.values())).get("staleness") for m in grid.log
             if m.metadata.src_node_id == 1000 and m.metadata.message_type == "train"]
    assert len(stale) == 6 and set(stale) <= {0, 1, 2} and max(stale) > 0
    kept = __import__("pickle").loads(grid.contexts[1000].state["robustagg"]["blob"])["history"]
    assert set(kept) <= {3, 4, 5} and max(kept) == 5  # at most max_delay + 1 global models kept


def test_robust_strategy_beats_fedavg_in_process(setup):
    """The simulation test's scenario without Ray: 6 nodes, node 0 sends `reverse`."""
    model_fn, data_fn = setup
    app = make_client_app(model_fn, data_fn, local_steps=20, lr=0.3, roles={0: {"byzantine": "reverse"}},
                          omniscient=True)
    evaluate = central_evaluate_fn(model_fn, *data_fn.test())
    accuracy = {}
    for name, strategy in [("robust", RobustStrategy("trimmed-mean", f=1, fraction_evaluate=0.0)),
                           ("fedavg", FedAvg(fraction_evaluate=0.0))]:
        strategy.min_available_nodes = strategy.min_train_nodes = 6
        result = strategy.start(InlineGrid(app, 6), ArrayRecord(model_fn().state_dict()), num_rounds=5,
                                evaluate_fn=evaluate)
        accuracy[name] = float(result.evaluate_metrics_serverapp[5]["accuracy"])
    assert accuracy["robust"] >= 0.8 and accuracy["fedavg"] < 0.5, accuracy


def test_simulate_rejects_bad_configs_before_starting_ray():
    from federated import simulate

    with pytest.raises(ValueError, match="unknown key 'aggregater'"):
        simulate({"aggregater": {"name": "krum"}})
    with pytest.raises(ValueError, match="needs Byzantine workers"):
        simulate({"attack": {"name": "reverse"}})
    with pytest.raises(ValueError, match="compare"):
        simulate({}, flower={"compare": [{"workers": {"n": 3}}]})
