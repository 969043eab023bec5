"""FLTrust wired to the server's own gradient (issue 15): the parameter server computes it on
its root data (``aggregator.root_samples``), ``federated.RobustStrategy`` takes it from
``reference_fn``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import robustagg as ra
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
