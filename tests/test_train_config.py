"""Training configuration: reading, errors that name the key, overrides, TOML round trip."""

import math

import pytest

from robustagg.train import TrainConfig, learning_rate
from robustagg.train import _toml
from robustagg.train.optim import ServerSGD, resolve_schedule


def cfg(**sections):
    return TrainConfig.from_dict(sections)


def test_defaults_and_derived_values():
    c = cfg(workers={"n": 10, "f": 2}, aggregator={"name": "trimmed-mean"})
    assert c.trainer == "parameter-server" and c.mode == "sgd"
    assert c.rule_f == 2 and c.honest == 8 and not c.is_p2p
    assert cfg(trainer="p2p").is_p2p


@pytest.mark.parametrize("data,match", [
    ({"workers": {"nn": 10}}, r"unknown key 'workers.nn'\. Did you mean 'workers.n'\?"),
    ({"optimiser": {"lr": 0.1}}, r"unknown key 'optimiser'\. Did you mean 'optimizer'\?"),
    ({"run": {"step": 10}}, r"Did you mean 'run.steps'\?"),
    ({"faults": [{"nam": "drop"}]}, r"Did you mean 'faults\[0\].name'\?"),
    ({"participation": {"arrival": {"name": "bernoulli", "param": {}}}}, r"participation.arrival.params"),
])
def test_unknown_keys_suggest_the_closest(data, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict(data)


@pytest.mark.parametrize("data,match", [
    ({"workers": {"n": "10"}}, r"workers.n must be an integer, got str '10'"),
    ({"run": {"steps": 1.5}}, r"run.steps must be an integer"),
    ({"workers": {"n": True}}, r"workers.n must be an integer"),
    ({"optimizer": {"lr": "fast"}}, r"optimizer.lr must be a number"),
    ({"data": {"replacement": 1}}, r"data.replacement must be a boolean"),
    ({"model": {"params": [1]}}, r"model.params must be a table"),
    ({"faults": {"name": "drop"}}, r"faults must be an array"),
    ({"workers": 3}, r"workers must be a table"),
])
def test_wrong_types_name_the_key_and_the_type(data, match):
    with pytest.raises(TypeError, match=match):
        TrainConfig.from_dict(data)


def test_an_int_is_accepted_for_a_float():
    assert cfg(optimizer={"lr": 1}).optimizer.lr == 1.0
    assert isinstance(cfg(optimizer={"lr": 1}).optimizer.lr, float)


@pytest.mark.parametrize("data,error,match", [
    ({"workers": {"n": 10, "f": 4}, "aggregator": {"name": "krum"}}, ValueError,
     r"'krum' with f=4 needs at least 11 inputs.*workers.n = 10"),
    ({"workers": {"n": 10, "f": 2}, "aggregator": {"name": "bulyan"}}, ValueError, r"needs at least 11 inputs"),
    ({"workers": {"n": 10, "f": 1}, "aggregator": {"name": "median", "f": 5}}, ValueError, r"n > 2f"),
    ({"aggregator": {"name": "krumm"}}, ValueError, r"Did you mean 'krum'"),
    ({"aggregator": {"name": "centered-clipping", "params": {"taus": 1.0}}}, TypeError, r"Did you mean 'tau'"),
    ({"aggregator": {"name": "median", "params": {"f": 1}}}, ValueError, r"aggregator.f"),
    ({"workers": {"n": 5, "f": 5}}, ValueError, r"workers.f must be < workers.n"),
    ({"workers": {"n": 10, "f": 2}, "attack": {"name": "alei"}}, ValueError, r"Did you mean 'alie'"),
    ({"workers": {"n": 10, "f": 2}, "attack": {"name": "alie", "params": {"zz": 1}}}, TypeError, r"zz"),
    ({"attack": {"name": "alie"}}, ValueError, r"needs Byzantine workers"),
    ({"workers": {"n": 10, "f": 2}, "attack": {"name": "alie"}, "poisoning": {"name": "label-flip"}},
     ValueError, r"either attack.name or poisoning.name"),
    ({"data": {"name": "digitz"}}, ValueError, r"Did you mean 'digits'"),
    ({"data": {"partition": "dirichlet", "partition_params": {"alfa": 1}}}, TypeError, r"alpha"),
    ({"model": {"name": "mlp", "params": {"hiden": [3]}}}, TypeError, r"hidden"),
    ({"faults": [{"name": "dorp"}]}, ValueError, r"faults\[0\].*Did you mean 'drop'"),
    ({"participation": {"arrival": {"name": "uniform-steps"}}}, ValueError, r"not a ArrivalProcess"),
    ({"mode": "afa"}, ValueError, r"mode must be one of"),
    ({"optimizer": {"schedule": "cosin"}}, ValueError, r"Did you mean 'cosine'"),
    ({"optimizer": {"schedule": "step"}}, ValueError, r"step_size"),
    ({"optimizer": {"momentum_at": "client"}}, ValueError, r"momentum_at"),
    ({"run": {"checkpoint_every": 5, "out_dir": ""}}, ValueError, r"needs run.out_dir"),
    ({"run": {"name": "a/b"}}, ValueError, r"run.name"),
    ({"trainer": "p2p", "mode": "afa-cs"}, ValueError, r"parameter-server mode"),
    ({"trainer": "p2p", "workers": {"n": 4, "f": 2}}, ValueError, r"n > 2f"),
    ({"trainer": "p2p", "faults": [{"name": "drop"}]}, ValueError, r"does not use faults"),
    ({"trainer": "p2p", "workers": {"n": 5, "f": 2}, "p2p": {"mixing": "bulyan"}}, ValueError, r"needs at least"),
])
def test_semantic_errors(data, error, match):
    with pytest.raises(error, match=match):
        TrainConfig.from_dict(data)


def test_pipeline_bound_is_checked_per_stage():
    ok = cfg(workers={"n": 9, "f": 2}, aggregator={"pipeline": [{"name": "nnm"}, {"name": "krum"}]})
    assert ok.aggregator.pipeline[1].name == "krum"
    with pytest.raises(ValueError, match="needs at least 7 inputs"):
        cfg(workers={"n": 6, "f": 2}, aggregator={"pipeline": [{"name": "nnm"}, {"name": "krum"}]})


def test_overrides_parse_toml_values_and_bare_strings():
    base = cfg(workers={"n": 10, "f": 2}, faults=[{"name": "drop", "params": {"q": 0.1}}])
    out = base.with_overrides([
        "optimizer.lr=0.05", "aggregator.name=krum", "model.params.hidden=[16, 8]", "run.name=2024",
        "faults.0.params.q=0.3", "data.replacement=true", "participation.arrival={name = 'bernoulli', params = {p = 0.5}}",
        "mode=afa-cd", "aggregator.params={}",
    ])
    assert out.optimizer.lr == 0.05 and out.aggregator.name == "krum"
    assert out.model.params == {"hidden": [16, 8]} and out.run.name == "2024"
    assert out.faults[0].params == {"q": 0.3} and out.data.replacement is True
    assert out.participation.arrival.name == "bernoulli" and out.mode == "afa-cd"
    assert base.optimizer.lr == 0.1  # the original is unchanged
    with pytest.raises(ValueError, match="Did you mean 'optimizer.lr'"):
        base.with_overrides(["optimizer.lrr=0.1"])
    with pytest.raises(TypeError, match="workers.n must be an integer"):
        base.with_overrides(["workers.n=ten"])
    with pytest.raises(ValueError, match="section.key=value"):
        base.with_overrides(["optimizer.lr"])
    with pytest.raises(ValueError, match="out of range"):
        base.with_overrides(["faults.3.name=drop"])
    sub = cfg().with_overrides(["aggregator.pipeline=[{name = 'nnm'}, {name = 'mean'}]"])
    assert [s.name for s in sub.aggregator.pipeline] == ["nnm", "mean"]


def test_toml_round_trip(tmp_path):
    c = cfg(workers={"n": 10, "f": 2}, attack={"name": "alie"},
            faults=[{"name": "drop", "params": {"q": 0.1, "workers": [1, 2]}}],
            participation={"arrival": {"name": "markov", "params": {"p_on": 0.2, "p_off": 0.5}}},
            aggregator={"pipeline": [{"name": "nnm"}, {"name": "trimmed-mean", "f": 2}]},
            model={"name": "mlp", "params": {"hidden": [64, 32], "activation": "tanh"}},
            optimizer={"schedule": "multistep", "schedule_params": {"milestones": [10, 20]}},
            run={"name": 'quote"d name'})
    text = c.to_toml()
    assert TrainConfig.from_toml_string(text).to_dict() == c.to_dict()
    path = tmp_path / "c.toml"
    path.write_text(text)
    assert TrainConfig.from_toml(path, ["workers.f=1"]).workers.f == 1
    assert _toml.loads(_toml.dumps({"a": {"x": math.inf, "y": [1.5, -2], "z": {}}}))["a"]["x"] == math.inf


def test_schedules():
    s = resolve_schedule("auto", {}, p2p=True)
    assert s["name"] == "inverse" and learning_rate(0.75, s, 50, 600) == pytest.approx(0.375)
    assert learning_rate(1.0, resolve_schedule("auto", {}, p2p=False), 99, 100) == 1.0
    step = resolve_schedule("step", {"step_size": 10, "gamma": 0.5}, p2p=False)
    assert [learning_rate(1.0, step, t, 100) for t in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    cos = resolve_schedule("cosine", {}, p2p=False)
    assert learning_rate(1.0, cos, 0, 100) == 1.0 and learning_rate(1.0, cos, 100, 100) == pytest.approx(0.0)
    multi = resolve_schedule("multistep", {"milestones": [3, 1]}, p2p=False)
    assert [learning_rate(1.0, multi, t, 10) for t in (0, 1, 3)] == pytest.approx([1.0, 0.1, 0.01])
    with pytest.raises(TypeError, match="decay"):
        resolve_schedule("inverse", {"decy": 5}, p2p=False)


def test_server_sgd_matches_torch_sgd():
    import torch

    x = torch.randn(5)
    ref = torch.nn.Parameter(x.clone())
    opt = torch.optim.SGD([ref], lr=0.1, momentum=0.9, weight_decay=0.01)
    mine = ServerSGD(momentum=0.9, weight_decay=0.01)
    for k in range(4):
        u = torch.randn(5, generator=torch.Generator().manual_seed(k))
        ref.grad = u.clone()
        opt.step()
        mine.step(x, u, 0.1)
    assert torch.allclose(x, ref.detach(), atol=1e-6)
