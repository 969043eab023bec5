"""RobustStrategy as a drop-in for FedAvg (issue 17) and Flower reply accounting (issue 12, item 6).

A quickstart-style app (``tests/flower_quickstart_app``: ServerApp with ``FedAvg``, ClientApp
with ``@app.train()`` / ``@app.evaluate()``, list and scalar metrics, ``ConfigRecord`` with
``lr``) runs unchanged under FedAvg and with ``RobustStrategy`` swapped in; the results
must have the same shape key by key.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from flwr.supercore.task_identity import TaskIdentity
from test_flower_strategy import flat, make_global, replies_for, reply, reply_arrays, run_round, updates

from federated import InlineGrid, RobustStrategy, make_client_app, mean_metrics, run_app
from federated.inline import task_identity

APP = Path(__file__).resolve().parent / "flower_quickstart_app"
EXTRA_TRAIN_KEYS = {"num-accepted", "num-rejected", "num-absent", "skipped"}

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(autouse=True)
def identity(monkeypatch):
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)


def _shape(value):
    return ("list", len(value)) if isinstance(value, list) else type(value).__name__


# ------------------------------------------------------------------ the quickstart app, both strategies
def test_quickstart_app_runs_unchanged_with_the_same_result_shape_as_fedavg():
    fedavg = run_app(APP, None, num_supernodes=5)
    robust = run_app(APP, "trimmed-mean", f=1, num_supernodes=5)
    assert type(fedavg.strategy).__mro__[1] is FedAvg and isinstance(robust.strategy, RobustStrategy)
    assert list(robust.arrays.keys()) == list(fedavg.arrays.keys())
    for key in fedavg.arrays.keys():
        ours, theirs = robust.arrays[key], fedavg.arrays[key]
        assert (ours.shape, ours.dtype) == (theirs.shape, theirs.dtype), key
    for name in ("train_metrics_clientapp", "evaluate_metrics_clientapp", "evaluate_metrics_serverapp"):
        ours, theirs = getattr(robust, name), getattr(fedavg, name)
        assert sorted(ours) == sorted(theirs), name
        for rnd in theirs:
            extra = EXTRA_TRAIN_KEYS if name == "train_metrics_clientapp" else set()
            assert set(ours[rnd].keys()) == set(theirs[rnd].keys()) | extra, (name, rnd)
            for key in theirs[rnd].keys():
                assert _shape(ours[rnd][key]) == _shape(theirs[rnd][key]), (name, rnd, key)
    assert "num-examples" not in robust.train_metrics_clientapp[3]
    assert robust.evaluate_metrics_clientapp[3]["class_acc"] == pytest.approx(
        fedavg.evaluate_metrics_clientapp[3]["class_acc"], abs=0.05)  # equal counts: same means, close models
    assert robust.evaluate_metrics_serverapp[3]["accuracy"] >= 0.9


def test_one_attacking_node_fedavg_vs_robust():
    attacked = {"attacker": 0, "num-server-rounds": 2}
    fedavg = run_app(APP, None, run_config=attacked)
    robust = run_app(APP, "trimmed-mean", f=1, run_config=attacked)
    assert robust.evaluate_metrics_serverapp[1]["accuracy"] > fedavg.evaluate_metrics_serverapp[1]["accuracy"] + 0.1


def test_run_app_checks_the_run_config_and_the_swap(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        run_app(APP, "median", run_config={"batch_size": 3})
    with pytest.raises(ValueError, match="pyproject.toml"):
        run_app(tmp_path, "median")


# ------------------------------------------------------------------ metrics in FedAvg's shape
def _content(metrics):
    return RecordDict({"metrics": MetricRecord(metrics)})


def test_list_metrics_are_averaged_element_wise_and_the_count_is_dropped():
    records = [_content({"num-examples": 10, "acc": 0.5, "per-class": [1.0, 0.0]}),
               _content({"num-examples": 10, "acc": 0.7, "per-class": [0.0, 1.0]})]
    ours = mean_metrics(records, "num-examples")
    theirs = aggregate_metricrecords(records, "num-examples")  # equal counts: FedAvg's mean is ours
    assert set(ours.keys()) == set(theirs.keys()) == {"acc", "per-class"}
    assert ours["per-class"] == pytest.approx(theirs["per-class"]) and ours["acc"] == pytest.approx(0.6)
    lying = [_content({"num-examples": 10 ** 9, "acc": 0.0, "per-class": [0.0, 0.0]})] + records
    assert mean_metrics(lying, "num-examples")["acc"] == pytest.approx(0.4)  # unweighted


def test_train_round_logs_fedavgs_received_line_and_drops_the_count(caplog):
    glob, U = make_global(), updates(5)
    strategy = RobustStrategy("median", f=1)
    with caplog.at_level(logging.INFO, logger="flwr"):
        _, metrics = run_round(strategy, glob, replies_for(glob, U) + [reply(300, error="boom")])
    assert "aggregate_train: Received 5 results and 1 failures" in caplog.text
    assert "num-examples" not in metrics.keys()


def test_weighted_by_key_no_reply_has_raises_like_fedavg():
    glob, U = make_global(), updates(5)
    strategy = RobustStrategy("median", f=1, weighted_by_key="foo")
    with pytest.raises(InconsistentMessageReplies, match="foo"):
        run_round(strategy, glob, replies_for(glob, U))
    with pytest.raises(InconsistentMessageReplies, match="foo"):
        strategy.aggregate_evaluate(1, [reply(101, None, metrics={"num-examples": 3, "acc": 1.0})])
    # one client leaving it out cannot stop the server (FedAvg would raise)
    strategy = RobustStrategy("median", f=1)
    replies = replies_for(glob, U[:4]) + [reply(105, reply_arrays(glob, U[4]), metrics={"loss": 1.0})]
    arrays, _ = run_round(strategy, glob, replies)
    assert arrays is not None


def test_fedavg_arguments_positionally_after_the_rule():
    s = RobustStrategy("median", 0.5, 0.0, 3, 2, 4, f=1)
    assert (s.fraction_train, s.fraction_evaluate, s.min_train_nodes, s.min_available_nodes) == (0.5, 0.0, 3, 4)
    assert s.train_metrics_aggr_fn is mean_metrics
    with pytest.raises(TypeError, match="FedAvg arguments"):
        RobustStrategy("median", 0.5, fraction_train=0.4)


# ------------------------------------------------------------------ sampling, skipped rounds, failing clients
def _quick_client(fail=()):
    app = ClientApp()

    @app.train()
    def train(msg, context):
        if context.node_config["partition-id"] in fail:
            raise KeyError("arrays")
        arrays = msg.content["arrays"]
        new = ArrayRecord({k: Array(arrays[k].numpy() + 0.01) for k in arrays.keys()})
        return Message(RecordDict({"arrays": new, "metrics": MetricRecord({"num-examples": 5})}), reply_to=msg)

    return app


def _start(strategy, grid, rounds=2):
    with task_identity():
        return strategy.start(grid, make_global(buffer=False), num_rounds=rounds, evaluate_fn=None)


def test_a_sampling_that_can_never_feed_the_rule_is_refused_at_start():
    strategy = RobustStrategy("trimmed-mean", f=1, fraction_train=0.4, min_train_nodes=2, min_available_nodes=5,
                              fraction_evaluate=0.0)
    with pytest.raises(ValueError, match=r"fraction_train=0.4 with min_train_nodes=2 samples 2 of the 5 .* at least 3"):
        _start(strategy, InlineGrid(_quick_client(), 5))
    ok = RobustStrategy("trimmed-mean", f=1, fraction_train=0.6, min_train_nodes=2, min_available_nodes=5,
                        fraction_evaluate=0.0)
    assert len(_start(ok, InlineGrid(_quick_client(), 5)).arrays) == 3


def test_client_exceptions_become_error_replies_and_skipped_runs_return_the_last_model():
    strategy = RobustStrategy("median", f=1, min_train_nodes=5, min_available_nodes=5, fraction_evaluate=0.0)
    result = _start(strategy, InlineGrid(_quick_client(fail={0}), 5))  # was: KeyError escaping start()
    assert [len(e["accepted"]) for e in strategy.history] == [4, 4] and strategy.history[0]["absent"] == [0]
    everyone_fails = RobustStrategy("median", f=1, min_train_nodes=5, min_available_nodes=5, fraction_evaluate=0.0)
    result = _start(everyone_fails, InlineGrid(_quick_client(fail=set(range(5))), 5))
    assert all(e["skipped"] for e in everyone_fails.history)
    np.testing.assert_array_equal(flat(result.arrays), flat(make_global(buffer=False)))  # never empty


def test_history_names_partitions_from_make_client_app_replies():
    import torch

    from robustagg import models

    model_fn = models.model_fn("logistic", input_shape=(4,), num_classes=2, seed=0)
    X, y = torch.randn(40, 4), torch.randint(0, 2, (40,))
    client = make_client_app(model_fn, lambda p, n: (X[p::n], y[p::n]), local_steps=2, lr=0.1, batch_size=4)
    grid = InlineGrid(client, 5)
    grid.partition_ids = {}  # the grid does not tell: the replies' "node" records do
    strategy = RobustStrategy("krum", f=1, min_train_nodes=5, min_available_nodes=5, fraction_evaluate=0.0)
    with task_identity():
        strategy.start(grid, ArrayRecord(model_fn().state_dict()), num_rounds=1)
    entry = strategy.history[-1]
    assert entry["ids"] == "partition" and sorted(entry["accepted"]) == [0, 1, 2, 3, 4]
    assert set(entry["trusted"]) <= set(range(5)) and entry["node_ids"] == {p: 1000 + p for p in range(5)}


# ------------------------------------------------------------------ issue 12 item 6
def test_a_node_is_counted_once_per_round_with_its_first_valid_reply():
    glob, U = make_global(), updates(5)
    good = replies_for(glob, U)
    malformed = reply(101, ArrayRecord({"conv.weight": Array(np.zeros((4, 3), np.float32))}))
    strategy = RobustStrategy("median", f=1)
    arrays, metrics = run_round(strategy, glob, [malformed] + good + [reply(101, None, error="late")])
    entry = strategy.history[-1]
    assert 101 in entry["accepted"] and 101 not in entry["rejected"] and 101 not in entry["absent"]
    assert entry["replayed"] == [101] and metrics["num-rejected"] == 0 and metrics["num-accepted"] == 5


def test_an_array_with_trailing_bytes_is_rejected():
    glob, U = make_global(), updates(5)
    replies = replies_for(glob, U)
    arrays = reply_arrays(glob, U[0])
    buf = io.BytesIO()
    np.save(buf, arrays["fc.weight"].numpy(), allow_pickle=False)
    padded = Array(dtype="float32", shape=(2, 4), stype="numpy.ndarray", data=buf.getvalue() + b"\0" * 8)
    arrays["fc.weight"] = padded
    bad = reply(120, arrays)
    assert np.array_equal(padded.numpy(), reply_arrays(glob, U[0])["fc.weight"].numpy())  # np.load accepts it
    strategy = RobustStrategy("median", f=1)
    run_round(strategy, glob, replies + [bad])
    assert "8 byte(s) after its data" in strategy.history[-1]["rejected"][120]


# ------------------------------------------------------------------ logs and progress (issue 13 item 5)
@pytest.mark.parametrize("verbose", [False, True])
def test_verbose_false_keeps_flowers_info_log_quiet(caplog, verbose):
    # records, not the terminal: Flower's console handler keeps the stream it found at import
    run_app(APP, "median", f=1, verbose=verbose, run_config={"num-server-rounds": 2})
    info = [r.getMessage() for r in caplog.records if r.name.startswith("flwr") and r.levelno == logging.INFO]
    if verbose:
        assert len(info) > 50  # Flower's strategy log: rounds, samples, metrics
    else:
        assert info == [], info[:5]


def test_cli_runs_an_app_dir_and_the_config_path_shows_progress(capsys):
    from robustagg.cli import main

    assert main(["flower", "--app", str(APP), "--rule", "krum", "--f", "1", "--num-supernodes", "5",
                 "--run-config", "num-server-rounds=2"]) == 0
    out = capsys.readouterr().out
    assert "RobustStrategy(krum, f=1) round 2: accuracy" in out
    assert "round 2: accepted partitions [" in out and "trusted [" in out
    assert main(["flower", "--app", str(APP), "--run-config", "nope=1"]) == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.timeout(300)
def test_the_app_dir_runs_on_ray_with_its_run_config(in_fresh_process):
    pytest.importorskip("ray")
    if in_fresh_process:
        return
    from federated.app import shutdown_ray

    try:  # the app reads context.run_config["batch-size"], ... (run_simulation alone gives {})
        result = run_app(APP, "trimmed-mean", f=1, backend="ray", num_supernodes=3, num_cpus=1,
                         run_config={"num-server-rounds": 2, "min-nodes": 3})
    finally:
        shutdown_ray()
    assert sorted(result.evaluate_metrics_serverapp) == [0, 1, 2]
    assert result.evaluate_metrics_serverapp[2]["accuracy"] >= 0.9
    assert [len(e["accepted"]) for e in result.strategy.history] == [3, 3]
    assert len(result.evaluate_metrics_clientapp[2]["class_acc"]) == 3
