"""RobustStrategy on mocked reply Messages (no Ray, no network).

Where RobustStrategy and Flower's own strategies agree and where they cannot:

* ``krum`` = Flower's ``Krum``: both score with the ``n - f - 2`` nearest neighbours;
  distances between weights equal distances between updates (same global subtracted), so
  the same client wins and the new model is its arrays.
* ``multi-krum`` = Flower's ``MultiKrum`` only when every client reports the same
  ``num-examples``: Flower averages the selected arrays weighted by the reported counts,
  RobustStrategy never does (a client can lie about its count).
* ``median`` = ``FedMedian``: the coordinate-wise median commutes with subtracting the
  global model.
* ``trimmed-mean`` with ``f`` = ``FedTrimmedAvg(beta)`` when ``f = floor(beta * n)``: Flower
  trims a *fraction* of the replies received, robustagg a declared *count* ``f``.
* ``bulyan`` is not compared: Flower's ``Bulyan`` selects its ``n - 2f`` inputs with one
  Multi-Krum scoring of all inputs, robustagg's (El Mhamdi et al., 2018) re-scores with
  Krum after each pick, so the selected sets can differ.
* ``mean`` = ``FedAvg`` only with equal reported counts.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum

import robustagg as ra
from federated import RobustStrategy
from flower_mocks import (NODES, SHAPES, FakeGrid, _rule, expected_updates, flat,  # noqa: F401
                          make_global, reply, reply_arrays, replies_for, run_round, task_identity, updates)


# --------------------------------------------------------------------- equality with robustagg
@pytest.mark.parametrize("name", ra.available())
def test_each_rule_equals_robustagg_on_the_updates(name):
    glob, U = make_global(), updates(11)
    strategy = RobustStrategy(_rule(name, 2), fraction_evaluate=0.0)
    arrays, metrics = run_round(strategy, glob, replies_for(glob, U))
    assert arrays is not None and metrics["skipped"] == 0
    want = flat(glob) + _rule(name, 2).aggregate(torch.from_numpy(expected_updates(glob, U))).numpy()
    np.testing.assert_allclose(flat(arrays), want, rtol=0, atol=1e-6)
    assert arrays["bn.num_batches_tracked"].numpy() == 7  # integer buffers keep the global value
    assert {k: arrays[k].numpy().dtype for k in SHAPES} == {k: np.dtype(np.float32) for k in SHAPES}


def test_reused_buffer_across_rounds_and_without_configure_train():
    """The update buffer is reused: rounds with fewer replies, a Krum pick (a row of the
    buffer), and a second aggregate_train without set_global (replies compared with the model
    the first one produced) all match the rule applied to fresh arrays."""
    glob, U = make_global(), updates(9)
    strategy = RobustStrategy("krum", f=2)
    first, _ = run_round(strategy, glob, replies_for(glob, U))
    want = flat(glob) + ra.get("krum", f=2).aggregate(torch.from_numpy(expected_updates(glob, U))).numpy()
    np.testing.assert_allclose(flat(first), want, atol=1e-6)
    V = updates(7, seed=5)
    second, _ = strategy.aggregate_train(2, replies_for(first, V))  # no set_global: compared with `first`
    want = flat(first) + ra.get("krum", f=2).aggregate(torch.from_numpy(expected_updates(first, V))).numpy()
    np.testing.assert_allclose(flat(second), want, atol=1e-6)
    np.testing.assert_allclose(flat(first), flat(glob) + ra.get("krum", f=2).aggregate(
        torch.from_numpy(expected_updates(glob, U))).numpy(), atol=1e-6)  # the first result is untouched


def test_rule_by_name_with_pre_and_f():
    glob, U = make_global(), updates(9)
    strategy = RobustStrategy("trimmed-mean", pre="nnm", f=2)
    arrays, _ = run_round(strategy, glob, replies_for(glob, U))
    rule = ra.pipeline(ra.get("nnm", f=2), ra.get("trimmed-mean", f=2))
    want = flat(glob) + rule.aggregate(torch.from_numpy(expected_updates(glob, U))).numpy()
    np.testing.assert_allclose(flat(arrays), want, atol=1e-6)
    with pytest.raises(TypeError, match="pre-aggregator"):
        RobustStrategy("mean", pre="median")
    with pytest.raises(ValueError, match="unknown aggregator"):
        RobustStrategy("no-such-rule")


def test_per_layer_uses_one_rule_per_layer():
    glob, U = make_global(), updates(7)
    strategy = RobustStrategy("krum", f=1, per_layer=True)
    arrays, _ = run_round(strategy, glob, replies_for(glob, U))
    E = expected_updates(glob, U)
    o, want = 0, []
    for k, s in SHAPES.items():
        size = int(np.prod(s))
        want.append(ra.get("krum", f=1).aggregate(torch.from_numpy(E[:, o:o + size].copy())).numpy())
        o += size
    np.testing.assert_allclose(flat(arrays), flat(glob) + np.concatenate(want), atol=1e-6)
    assert set(strategy.history[-1]["per_layer"]) == set(SHAPES)


def test_server_lr_and_momentum():
    glob, U1, U2 = make_global(), updates(5, seed=1), updates(5, seed=2)
    strategy = RobustStrategy("median", f=1, server_lr=0.5, server_momentum=0.9)
    a1, _ = run_round(strategy, glob, replies_for(glob, U1), 1)
    m1 = np.median(expected_updates(glob, U1), axis=0)
    np.testing.assert_allclose(flat(a1), flat(glob) + 0.5 * m1, atol=1e-6)
    a2, _ = run_round(strategy, a1, replies_for(a1, U2), 2)
    m2 = 0.9 * m1 + np.median(expected_updates(a1, U2), axis=0)
    np.testing.assert_allclose(flat(a2), flat(a1) + 0.5 * m2, atol=1e-6)


# --------------------------------------------------------------------- Flower's own strategies
def _flower(strategy, glob, U, metrics=None):
    return strategy.aggregate_train(1, replies_for(glob, U, metrics=metrics))[0]


def test_krum_agrees_with_flower_krum():
    glob, U = make_global(buffer=False), updates(9, seed=3)
    ours, _ = run_round(RobustStrategy("krum", f=2), glob, replies_for(glob, U))
    theirs = _flower(Krum(num_malicious_nodes=2), glob, U)
    np.testing.assert_allclose(flat(ours), flat(theirs), atol=1e-6)


def test_multikrum_agrees_with_flower_only_with_equal_counts():
    glob, U = make_global(buffer=False), updates(9, seed=4)
    ours, _ = run_round(RobustStrategy(ra.get("multi-krum", f=2, m=4)), glob, replies_for(glob, U))
    theirs = _flower(MultiKrum(num_malicious_nodes=2, num_nodes_to_select=4), glob, U)
    np.testing.assert_allclose(flat(ours), flat(theirs), atol=1e-6)
    counts = [{"num-examples": 1 + 100 * i} for i in range(9)]
    ours2, _ = run_round(RobustStrategy(ra.get("multi-krum", f=2, m=4)), glob, replies_for(glob, U, metrics=counts))
    theirs2 = _flower(MultiKrum(num_malicious_nodes=2, num_nodes_to_select=4), glob, U, metrics=counts)
    np.testing.assert_allclose(flat(ours2), flat(ours), atol=1e-7)  # counts ignored
    assert np.abs(flat(theirs2) - flat(ours)).max() > 1e-3  # Flower weights by the counts


def test_median_agrees_with_fedmedian():
    glob, U = make_global(buffer=False), updates(8, seed=5)
    ours, _ = run_round(RobustStrategy("median", f=3), glob, replies_for(glob, U))
    theirs = _flower(FedMedian(), glob, U)
    np.testing.assert_allclose(flat(ours), flat(theirs), atol=1e-6)


@pytest.mark.parametrize("n, beta", [(10, 0.2), (9, 0.25), (7, 0.1)])
def test_trimmed_mean_agrees_with_fedtrimmedavg_when_f_is_floor_beta_n(n, beta):
    glob, U = make_global(buffer=False), updates(n, seed=6)
    f = int(beta * n)
    ours, _ = run_round(RobustStrategy("trimmed-mean", f=f), glob, replies_for(glob, U))
    theirs = _flower(FedTrimmedAvg(beta=beta), glob, U)
    np.testing.assert_allclose(flat(ours), flat(theirs), atol=1e-6)


def test_mean_ignores_reported_counts_unlike_fedavg():
    glob, U = make_global(buffer=False), updates(5, seed=7)
    U[0] = 50.0  # the outlier also claims a huge dataset
    counts = [{"num-examples": 1e9}] + [{"num-examples": 10}] * 4
    ours, _ = run_round(RobustStrategy("mean"), glob, replies_for(glob, U, metrics=counts))
    np.testing.assert_allclose(flat(ours), flat(glob) + expected_updates(glob, U).mean(axis=0), atol=1e-5)
    fedavg = _flower(FedAvg(), glob, U, metrics=counts)
    np.testing.assert_allclose(flat(fedavg), flat(glob) + 50.0, atol=1e-3)  # the liar takes over FedAvg
    equal = _flower(FedAvg(), glob, U)
    np.testing.assert_allclose(flat(equal), flat(ours), atol=1e-5)


# --------------------------------------------------------------------- failures
def test_too_few_replies_skips_the_round(caplog):
    glob, U = make_global(), updates(6)
    strategy = RobustStrategy("bulyan", f=1)  # needs 4f + 3 = 7
    with caplog.at_level(logging.WARNING, logger="flwr.robustagg"):
        arrays, metrics = run_round(strategy, glob, replies_for(glob, U))
    assert arrays is None and metrics["skipped"] == 1 and metrics["num-accepted"] == 6
    assert strategy.history[-1]["skipped"] and "needs at least 7" in strategy.history[-1]["reason"]
    assert "skipped, model unchanged" in caplog.text
    np.testing.assert_array_equal(strategy._global, flat(glob))


def test_rejections_can_cause_a_skip():
    glob, U = make_global(), updates(7)
    good = replies_for(glob, U[:5])
    bad = [reply(NODES[5], reply_arrays(glob, U[5] * np.nan)), reply(NODES[6], error="crashed")]
    arrays, metrics = run_round(RobustStrategy("bulyan", f=1), glob, good + bad)
    assert arrays is None and metrics["skipped"] == 1
    assert metrics["num-rejected"] == 1 and metrics["num-absent"] == 1


def _malformed(glob, u):
    """Replies no server may accept, with a word the rejection reason must contain."""
    ok = reply_arrays(glob, u)
    missing = ArrayRecord({k: ok[k] for k in list(ok.keys())[1:]})
    extra = ArrayRecord({**{k: ok[k] for k in ok.keys()}, "extra": Array(np.zeros(2, np.float32))})
    shape = ArrayRecord({**{k: ok[k] for k in ok.keys()}, "conv.bias": Array(np.zeros(5, np.float32))})
    dtype = ArrayRecord({**{k: ok[k] for k in ok.keys()},
                         "conv.bias": Array(ok["conv.bias"].numpy().astype(np.float64))})
    garbage = ArrayRecord({**{k: ok[k] for k in ok.keys()},
                           "fc.weight": Array(dtype="float32", shape=(2, 4), stype="numpy.ndarray",
                                              data=b"\x93NUMPY not really" + bytes(40))})
    stype = ArrayRecord({**{k: ok[k] for k in ok.keys()},
                         "fc.weight": Array(dtype="float32", shape=(2, 4), stype="torch.raw", data=bytes(32))})
    inf = reply_arrays(glob, u)
    inf["conv.weight"] = Array(np.full((4, 3), np.inf, np.float32))
    return [
        (reply(201, missing), "keys"), (reply(202, extra), "keys"), (reply(203, shape), "shape"),
        (reply(204, dtype), "dtype"), (reply(205, garbage), "decoded"), (reply(206, stype), "serialization"),
        (reply(207, inf), "non-finite"), (reply(208, reply_arrays(glob, u * np.nan)), "non-finite"),
        (reply(209, None), "ArrayRecord"),
        (reply(210, ok, extra_records={"more": reply_arrays(glob, u)}), "ArrayRecord"),
    ]


def test_malformed_replies_are_rejected_per_client(caplog):
    glob, U = make_global(), updates(7)
    bad = _malformed(glob, U[0])
    good = replies_for(glob, U)
    duplicate = reply(NODES[0], reply_arrays(glob, U[0] + 5))  # a second (replayed) reply of node 101
    strategy = RobustStrategy("trimmed-mean", f=2)
    with caplog.at_level(logging.WARNING, logger="flwr.robustagg"):
        arrays, metrics = run_round(strategy, glob, good[:3] + [m for m, _ in bad] + good[3:] + [duplicate])
    entry = strategy.history[-1]
    assert entry["accepted"] == NODES[:7]
    for (msg, word), node in zip(bad, range(201, 211)):
        assert word in entry["rejected"][node], (node, entry["rejected"][node])
    assert NODES[0] not in entry["rejected"] and entry["replayed"] == [NODES[0]]  # issue 12: counted once
    assert metrics["num-rejected"] == len(bad)
    want = flat(glob) + ra.get("trimmed-mean", f=2).aggregate(torch.from_numpy(expected_updates(glob, U))).numpy()
    np.testing.assert_allclose(flat(arrays), want, atol=1e-6)
    assert caplog.text.count("rejected the reply of node") == len(bad)
    assert "ignored further replies of node(s) [101]" in caplog.text


def test_absent_replies_errors_and_skips():
    glob, U = make_global(), updates(5)
    skipped = reply(301, None, metrics={"num-examples": 0, "skipped": 1})
    strategy = RobustStrategy("median", f=1)
    arrays, metrics = run_round(strategy, glob, replies_for(glob, U) + [reply(300, error="timeout"), skipped])
    assert strategy.history[-1]["absent"] == [300, 301] and metrics["num-absent"] == 2
    np.testing.assert_allclose(flat(arrays), flat(glob) + np.median(expected_updates(glob, U), axis=0), atol=1e-6)


def test_the_rule_failing_skips_the_round():
    glob, U = make_global(), updates(5)

    class Broken(ra.aggregators.Mean):
        def _aggregate(self, X, f, G):
            raise ValueError("boom")

    class Nan(ra.aggregators.Mean):
        def _aggregate(self, X, f, G):
            return X[0] * float("nan")

    strategy = RobustStrategy(Broken())
    arrays, metrics = run_round(strategy, glob, replies_for(glob, U))
    assert arrays is None and metrics["skipped"] == 1 and "boom" in strategy.history[-1]["reason"]
    strategy = RobustStrategy(Nan())
    arrays, metrics = run_round(strategy, glob, replies_for(glob, U))
    assert arrays is None and "non-finite" in strategy.history[-1]["reason"]
    np.testing.assert_array_equal(strategy._global, flat(glob))


def test_needs_the_global_arrays_first():
    with pytest.raises(RuntimeError, match="configure_train"):
        RobustStrategy("mean").aggregate_train(1, [])


def test_configure_train_remembers_the_global_and_the_nodes():
    glob, U = make_global(), updates(5)
    strategy = RobustStrategy("mean", fraction_evaluate=0.0)
    messages = list(strategy.configure_train(1, glob, ConfigRecord(), FakeGrid(NODES[:5])))
    assert sorted(m.metadata.dst_node_id for m in messages) == NODES[:5]
    replies = [Message(RecordDict({"arrays": reply_arrays(glob, U[i]), "metrics": MetricRecord({"num-examples": 1})}),
                       reply_to=m) for i, m in enumerate(sorted(messages, key=lambda m: m.metadata.dst_node_id))]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(flat(arrays), flat(glob) + expected_updates(glob, U).mean(axis=0), atol=1e-6)
    assert list(strategy._known_nodes) == NODES[:5]


# --------------------------------------------------------------------- trusted clients
def test_logs_which_clients_krum_trusted(caplog):
    glob, U = make_global(), updates(7, seed=8)
    U[3] *= 0.01  # the most central update
    strategy = RobustStrategy("krum", f=1)
    with caplog.at_level(logging.INFO, logger="flwr.robustagg"):
        run_round(strategy, glob, replies_for(glob, U))
    assert strategy.history[-1]["trusted"] == [NODES[3]]
    assert f"trusted node(s) [{NODES[3]}]" in caplog.text
    strategy = RobustStrategy("bulyan", f=1)
    run_round(strategy, glob, replies_for(glob, U))
    assert len(strategy.history[-1]["trusted"]) == 5 and set(strategy.history[-1]["trusted"]) <= set(NODES)


def test_logs_per_client_weights_when_exposed():
    glob, U = make_global(), updates(7, seed=9)
    strategy = RobustStrategy("geometric-median", f=1)
    run_round(strategy, glob, replies_for(glob, U))
    weights = strategy.history[-1]["weights"]
    assert set(weights) == set(NODES[:7]) and abs(sum(weights.values()) - 1) < 1e-4
