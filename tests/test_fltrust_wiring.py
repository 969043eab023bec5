"""FLTrust wired to the server's own gradient (issue 15): the parameter server computes it on
its root data (``aggregator.root_samples``), ``federated.RobustStrategy`` takes it from
``reference_fn``."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord
from test_flower_strategy import SHAPES, expected_updates, flat, make_global, replies_for, run_round
from test_flower_strategy import task_identity  # noqa: F401 - its autouse fixture: Messages need a run id

import robustagg as ra
from federated import RobustStrategy
from robustagg.train import ParameterServer, TrainConfig
from robustagg.train.components import partition, root_indices

BASE = {"workers": {"n": 10, "f": 6, "batch_size": 32}, "attack": {"name": "reverse"},
        "model": {"name": "logistic"}, "optimizer": {"lr": 0.5},
        "run": {"steps": 30, "eval_every": 30, "out_dir": "", "seed": 3}}


def config(**aggregator):
    return {**BASE, "aggregator": aggregator}


def test_server_gradient_survives_a_majority_reverse_attack():
    """6 of 10 workers send the reversed honest mean: with the server's gradient FLTrust gives
    them zero trust and trains; with its median stand-in (no root data) it follows them."""
    ps = ParameterServer(config(name="fltrust", root_samples=50))
    acc = ps.run().last()["accuracy"]
    assert ps.rule.last["reference"] == "server"
    assert float(ps.rule.last["trust"][4:].max()) == 0.0  # the attackers (rows 4..9) are not trusted
    assert acc > 0.8
    fallback = ParameterServer(config(name="mean"), aggregator=ra.get("fltrust", f=6))
    assert fallback.root_loader is None
    acc_median = fallback.run().last()["accuracy"]
    assert fallback.rule.last["reference"] == "median"
    assert acc_median < 0.3


def test_root_data_is_held_out_from_the_workers_and_seeded():
    cfg = TrainConfig.from_dict(config(name="fltrust", root_samples=40))
    ps = ParameterServer(cfg)
    root = root_indices(cfg, ps.dataset)
    assert len(root) == 40 and len(np.unique(root)) == 40
    parts = partition(cfg, ps.dataset)
    held = np.concatenate(parts)
    assert not np.intersect1d(held, root).size
    assert len(held) + len(root) == len(ps.dataset.y_train)  # nothing else is lost
    again = TrainConfig.from_dict(config(name="fltrust", root_samples=40))
    np.testing.assert_array_equal(root_indices(again, ps.dataset), root)
    other = TrainConfig.from_dict({**config(name="fltrust", root_samples=40),
                                   "run": {**BASE["run"], "seed": 4}})
    assert not np.array_equal(root_indices(other, ps.dataset), root)


def test_reference_matches_what_workers_send_in_each_mode():
    """fedavg workers send the sum of their K local gradients, the other modes the mean:
    the server's reference follows (same root batches, so exactly K times)."""
    refs = {}
    for mode in ("fedavg", "afa-cd"):
        cfg = {**config(name="fltrust", root_samples=50), "mode": mode,
               "workers": {**BASE["workers"], "local_steps": 3}}
        ps = ParameterServer(cfg)
        refs[mode] = ps.server_reference(0).clone()
        assert torch.equal(ps.fltrust.reference, refs[mode])
    torch.testing.assert_close(refs["fedavg"], 3 * refs["afa-cd"])


def test_pipeline_whose_last_stage_is_fltrust_gets_the_reference():
    ps = ParameterServer({**config(pipeline=[{"name": "clipping", "params": {"c": 10.0}}, {"name": "fltrust"}],
                                   root_samples=50), "run": {**BASE["run"], "steps": 3}})
    ps.run()
    assert ps.rule.stages[-1].last["reference"] == "server"


def test_resume_continues_the_root_batches():
    cfg = {**config(name="fltrust", root_samples=50), "workers": {**BASE["workers"], "f": 2}}
    straight = ParameterServer(cfg)
    for _ in range(6):
        straight.step()
    first = ParameterServer(cfg)
    for _ in range(3):
        first.step()
    state = first.state_dict()
    resumed = ParameterServer(cfg)
    resumed.load_state_dict(state)
    for _ in range(3):
        resumed.step()
    assert torch.equal(resumed.x, straight.x)


@pytest.mark.parametrize("aggregator, match", [
    ({"name": "fltrust"}, r"aggregator 'fltrust' needs the server's own gradient: set aggregator.root_samples"),
    ({"pipeline": [{"name": "nnm"}, {"name": "fltrust"}]}, r"needs the server's own gradient"),
    ({"name": "median", "root_samples": 10}, r"aggregator.root_samples = 10 is read only by fltrust"),
    ({"name": "fltrust", "root_samples": -1}, r"aggregator.root_samples must be >= 0"),
])
def test_configuration_errors(aggregator, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict(config(**aggregator))


def test_root_samples_type_and_size_errors():
    with pytest.raises(TypeError, match="aggregator.root_samples"):
        TrainConfig.from_dict(config(name="fltrust", root_samples=1.5))
    with pytest.raises(ValueError, match="root_samples = 100000 leaves no training data"):
        ParameterServer(config(name="fltrust", root_samples=100000))
    with pytest.raises(ValueError, match="does not use aggregator.root_samples"):
        TrainConfig.from_dict({"trainer": "p2p", "workers": {"n": 7, "f": 1},
                               "aggregator": {"root_samples": 5}})


# --------------------------------------------------------------------- Flower: reference_fn


def majority_attack(seed=1):
    """11 updates: 5 honest ones around a direction, 6 sending -3x their mean; the server's
    own update is another honest draw."""
    rng = np.random.default_rng(seed)
    d = sum(int(np.prod(s)) for s in SHAPES.values())
    direction = rng.standard_normal(d)
    honest = direction + 0.3 * rng.standard_normal((5, d))
    U = np.vstack([honest, np.tile(-3 * honest.mean(0), (6, 1))]).astype(np.float32)
    server = (direction + 0.3 * rng.standard_normal(d)).astype(np.float32)
    return U, server


def as_record(vector):
    out, o = {}, 0
    for k, s in SHAPES.items():
        size = int(np.prod(s))
        out[k] = Array(vector[o:o + size].reshape(s).copy())
        o += size
    return ArrayRecord(out)


@pytest.mark.parametrize("form", ["vector", "tensor", "dict", "record"])
def test_reference_fn_gives_fltrust_the_servers_update(form):
    glob = make_global()
    U, server = majority_attack()
    calls = []

    def reference_fn(arrays, server_round):
        calls.append((server_round, flat(arrays).copy()))
        record = as_record(server)
        return {"vector": server, "tensor": torch.from_numpy(server), "record": record,
                "dict": {k: record[k].numpy() for k in SHAPES}}[form]

    strategy = RobustStrategy("fltrust", f=6, reference_fn=reference_fn, fraction_evaluate=0.0)
    arrays, metrics = run_round(strategy, glob, replies_for(glob, U), rnd=4)
    assert metrics["skipped"] == 0 and len(calls) == 1
    assert calls[0][0] == 4
    np.testing.assert_array_equal(calls[0][1], flat(glob))  # called with the global arrays x_t
    X = torch.from_numpy(expected_updates(glob, U))
    want = flat(glob) + ra.get("fltrust", f=6, reference=torch.from_numpy(server)).aggregate(X).numpy()
    np.testing.assert_allclose(flat(arrays), want, rtol=0, atol=1e-6)
    assert strategy.history[-1]["reference"] == "server"
    assert float(strategy.rule.last["trust"][5:].max()) == 0.0  # the 6 attackers get no trust


def test_without_reference_fn_the_median_stands_in_and_follows_the_majority(caplog):
    glob = make_global()
    U, server = majority_attack()
    with caplog.at_level("WARNING", logger="flwr.robustagg"):
        strategy = RobustStrategy("fltrust", f=6, fraction_evaluate=0.0)
    assert "fltrust without reference_fn" in caplog.text
    arrays, _ = run_round(strategy, glob, replies_for(glob, U))
    assert strategy.history[-1]["reference"] == "median"
    step = flat(arrays) - flat(glob)
    assert float(np.dot(step, server)) < 0  # it moved against the honest direction


def test_reference_fn_per_layer_and_after_pre_aggregation():
    glob = make_global()
    U, server = majority_attack(seed=2)
    X = torch.from_numpy(expected_updates(glob, U))
    g0 = torch.from_numpy(server)
    per_layer = RobustStrategy("fltrust", f=6, per_layer=True, reference_fn=lambda a, r: server,
                               fraction_evaluate=0.0)
    arrays, _ = run_round(per_layer, glob, replies_for(glob, U))
    o = 0
    for k, s in SHAPES.items():
        sl = slice(o, o + int(np.prod(s)))
        want = ra.get("fltrust", f=6, reference=g0[sl]).aggregate(X[:, sl].contiguous()).numpy()
        np.testing.assert_allclose(arrays[k].numpy().ravel() - glob[k].numpy().ravel(), want, rtol=0, atol=1e-6)
        o = sl.stop
    piped = RobustStrategy("fltrust", pre="clipping", f=2, reference_fn=lambda a, r: server, fraction_evaluate=0.0)
    run_round(piped, glob, replies_for(glob, U))
    assert piped.history[-1]["reference"] == "server"


@pytest.mark.parametrize("returned, reason", [
    (lambda s: s[:-1], r"reference_fn failed: ValueError: got shape \(\d+,\), expected"),
    (lambda s: np.full_like(s, np.nan), "reference_fn failed: ValueError: the update holds NaN/Inf"),
    (lambda s: {"conv.weight": np.zeros((4, 3))}, "reference_fn failed: ValueError: the update has no array 'conv.bias'"),
    (lambda s: {k: np.zeros(2) for k in SHAPES}, "reference_fn failed: ValueError: array 'conv.weight' has shape"),
    (lambda s: 1 / 0, "reference_fn failed: ZeroDivisionError"),
])
def test_a_bad_reference_skips_the_round(returned, reason):
    glob = make_global()
    U, server = majority_attack()
    strategy = RobustStrategy("fltrust", f=6, reference_fn=lambda a, r: returned(server), fraction_evaluate=0.0)
    arrays, metrics = run_round(strategy, glob, replies_for(glob, U))
    assert arrays is None and metrics["skipped"] == 1
    assert re.match(reason, strategy.history[-1]["reason"]), strategy.history[-1]["reason"]


def test_reference_fn_argument_errors():
    with pytest.raises(ValueError, match="reference_fn is read only by fltrust .* not by 'median'"):
        RobustStrategy("median", f=1, reference_fn=lambda a, r: None)
    with pytest.raises(TypeError, match="reference_fn must be callable"):
        RobustStrategy("fltrust", f=1, reference_fn=[1.0])


def test_flower_simulation_trains_fltrust_on_the_servers_root_samples():
    """``aggregator.root_samples`` on Flower: held out of the nodes' partitions, and the
    strategy gets the server's update on them every round (in-process backend)."""
    from federated import TrainData, simulate
    from federated._reference import RootReference

    cfg = {"data": {"name": "digits"}, "model": {"name": "logistic"}, "workers": {"n": 6, "f": 3, "local_steps": 2},
           "attack": {"name": "reverse"}, "aggregator": {"name": "fltrust", "root_samples": 50},
           "optimizer": {"lr": 0.5, "local_lr": 0.2}, "run": {"steps": 3, "eval_every": 3, "out_dir": ""}}
    train = TrainConfig.from_dict(cfg)
    data = TrainData(train)
    held = np.concatenate(data.parts())
    assert not np.intersect1d(held, root_indices(train, data.load())).size
    out = simulate(cfg, flower={"backend": "inline"})
    assert [e["reference"] for e in out["strategy"]] == ["server"] * 3
    assert out["accuracy"][-1] > out["accuracy"][0] + 0.2
    # in the anarchic modes the updates are per local step: so is the server's
    from robustagg.train.components import model_factory

    model_fn = model_factory(train, data.load())
    arrays = ArrayRecord(model_fn().state_dict())
    kw = dict(steps=2, lr=0.2, batch_size=32, seed=0)
    total = RootReference(model_fn, *data.root(), **kw)(arrays, 1)
    per_step = RootReference(model_fn, *data.root(), per_step=True, **kw)(arrays, 1)
    for key in total:
        np.testing.assert_allclose(per_step[key] * 2, total[key], rtol=1e-6)


def test_flower_compare_entry_cannot_draw_other_root_samples():
    from federated import config as fconfig

    cfg = {"data": {"name": "digits"}, "model": {"name": "logistic"}, "workers": {"n": 6, "f": 1},
           "aggregator": {"name": "median"}, "run": {"steps": 1, "out_dir": ""}}
    with pytest.raises(ValueError, match=r"flower.compare\[0\]: aggregator.root_samples = 20 differs from the main"):
        fconfig.read(cfg, flower={"compare": [{"aggregator": {"name": "fltrust", "root_samples": 20}}]})
