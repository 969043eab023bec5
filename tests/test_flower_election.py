"""ElectionStrategy: certificates computed through Flower equal those computed offline (no Ray).

Seven in-process nodes (``federated.InlineGrid`` delivers the messages to the real
``ClientApp``) each train their own logistic-regression base model on their digits partition,
node 6 on label-flipped data; the strategy keeps the ensemble and certifies its run-off
election. Offline, the same seven base models are trained with ``federated.client.local_train``
and the same seeds (node ``p``, round ``t``: ``derive_seed(seed, p, t)``), scored and certified
with ``robustagg.election``: scores, predictions and certificates must be identical.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from federated import ElectionStrategy, InlineGrid, PartitionData, make_client_app
from federated._roles import derive_seed
from federated.client import local_train
from federated.inline import task_identity
from robustagg import election, models, poisoning

K, SEED, STEPS, LR, ROUNDS = 7, 3, 15, 0.3, 2


@pytest.fixture(autouse=True)
def node_context(one_thread):
    """One torch thread (tests/conftest.py) inside a Flower task identity, as on a node."""
    with task_identity():
        yield


@pytest.fixture(scope="module")
def setup():
    data_fn = PartitionData("digits", seed=0)
    model_fn = models.model_fn("logistic", input_shape=(1, 8, 8), num_classes=10, seed=0)
    return model_fn, data_fn


def offline_scores(model_fn, data_fn, poisoned):
    """The seven base models trained outside Flower, scored on the test set: (K, N, C)."""
    X_test, _ = data_fn.test()
    out = []
    for p in range(K):
        X, y = data_fn(p, K)
        if p in poisoned:
            X, y, _ = poisoning.get("label-flip", seed=derive_seed(SEED, p) % (2 ** 32))(X, y)
        state = model_fn().state_dict()
        for rnd in range(1, ROUNDS + 1):
            state, _ = local_train(model_fn, state, X, y, steps=STEPS, lr=LR, batch_size=32, momentum=0.0,
                                   seed=derive_seed(SEED, p, rnd))
        model = model_fn()
        model.load_state_dict(state)
        model.eval()
        with torch.no_grad():
            out.append(model(X_test).float().numpy())
    return np.stack(out)


def test_certificates_through_flower_equal_offline(setup):
    model_fn, data_fn = setup
    app = make_client_app(model_fn, data_fn, local_steps=STEPS, lr=LR, seed=SEED, threads=1,
                          roles={6: {"poison": "label-flip"}})
    strategy = ElectionStrategy(model_fn, data_fn.test(), vote="run-off", min_nodes=K)
    grid = InlineGrid(app, K)
    result = strategy.start(grid, ArrayRecord(model_fn().state_dict()), num_rounds=ROUNDS)

    X_test, y_test = data_fn.test()
    scores = offline_scores(model_fn, data_fn, poisoned={6})
    labels = y_test.numpy()
    certs = election.certify(scores, labels, "dpa+roe")
    assert strategy.members == [1000 + p for p in range(K)]
    np.testing.assert_array_equal(strategy.scores, scores)
    np.testing.assert_array_equal(strategy.predictions, election.run_off(scores))
    np.testing.assert_array_equal(strategy.certificates, certs)

    final = result.evaluate_metrics_serverapp[ROUNDS]
    for r in range(4):  # radii 0 .. (K - 1) // 2
        assert final[f"certified-accuracy-{r}"] == pytest.approx(election.certified_accuracy(certs, r))
    assert final["accuracy"] == pytest.approx(float((election.run_off(scores) == labels).mean()))
    # the ensemble is useful, and the poisoned client spoiled only its own base model
    own = (scores.argmax(axis=2) == labels).mean(axis=1)
    assert final["accuracy"] >= 0.85 and final["certified-accuracy-1"] >= 0.6, dict(final)
    assert own[6] < 0.2 < 0.7 < own[:6].min(), own
    assert all(e["accepted"] == strategy.members and not e["rejected"] for e in strategy.history)
    # what a caller gets back: the models themselves, re-scorable offline
    states = strategy.ensemble()["state_dicts"]
    again = []
    for state in states:
        model = model_fn()
        model.load_state_dict(state)
        again.append(model.eval()(X_test).detach().numpy())
    np.testing.assert_array_equal(np.stack(again), scores)


class Nodes:
    def __init__(self, ids):
        self.ids = list(ids)

    def get_node_ids(self):
        return list(self.ids)


def reply(msg, arrays=None, metrics=None, error=False):
    if error:
        return Message(Error(code=0, reason="boom"), reply_to=msg)
    content = {}
    if arrays is not None:
        content["arrays"] = arrays
    content["metrics"] = MetricRecord(metrics or {"num-examples": 10})
    return Message(RecordDict(content), reply_to=msg)


def test_failed_members_keep_their_model_and_still_vote(setup):
    model_fn, data_fn = setup
    strategy = ElectionStrategy(model_fn, data_fn.test(), vote="plurality", min_nodes=4, radii=[0, 1])
    initial = ArrayRecord(model_fn().state_dict())
    strategy._num_rounds = 1
    messages = {m.metadata.dst_node_id: m
                for m in strategy.configure_train(1, initial, ConfigRecord(), Nodes([7, 5, 9, 8]))}
    assert strategy.members == [5, 7, 8, 9] and sorted(messages) == [5, 7, 8, 9]
    trained = {k: Array(v.numpy() + 1.0) for k, v in initial.items()}
    nan = {k: Array(np.full(v.shape, np.nan, dtype=np.float32)) for k, v in initial.items()}
    replies = [reply(messages[5], ArrayRecord(trained)), reply(messages[7], ArrayRecord(nan)),
               reply(messages[8], error=True), reply(messages[9], metrics={"skipped": 1})]
    arrays, metrics = strategy.aggregate_train(1, replies)
    entry = strategy.history[-1]
    assert arrays is None and entry["accepted"] == [5] and list(entry["rejected"]) == [7]
    assert sorted(entry["absent"]) == [8, 9] and metrics["num-rejected"] == 1
    states = strategy.state_dicts()
    for key, value in initial.items():
        np.testing.assert_array_equal(states[0][key].numpy(), value.numpy() + 1.0)
        for j in (1, 2, 3):
            np.testing.assert_array_equal(states[j][key].numpy(), value.numpy())
    result = strategy.evaluate(1)
    assert set(result) == {"accuracy", "certified-accuracy-0", "certified-accuracy-1"}
    assert strategy.scores.shape[:2] == (4, len(data_fn.test()[1])) and strategy.method == "dpa"
    np.testing.assert_array_equal(strategy.certificates,
                                  election.certify(strategy.scores, strategy.y_test, "dpa"))
    assert strategy.evaluate(0) is None
