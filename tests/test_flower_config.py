"""The ``robustagg train`` TOML configuration on Flower (federated.config) and ``robustagg flower``.

No Ray here: the mapping is checked key by key, and the CLI runs a one-round simulation with
the in-process backend (the Ray path is tests/test_flower_simulation.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from federated import config as fconfig
from robustagg import cli, flower_cli
from robustagg.train import TrainConfig, components
from robustagg.train._toml import tomllib

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "experiments" / "configs" / "flower_digits.toml"
BASE = {"data": {"name": "digits"}, "model": {"name": "logistic"}, "workers": {"n": 6, "f": 1, "local_steps": 4},
        "attack": {"name": "reverse"}, "aggregator": {"name": "trimmed-mean"},
        "optimizer": {"lr": 0.8, "local_lr": 0.2}, "run": {"steps": 2, "out_dir": ""}}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def with_(base, **sections):
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in sections.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def test_example_config_is_a_train_config_plus_a_flower_table():
    with open(EXAMPLE, "rb") as fh:
        raw = tomllib.load(fh)
    flower = raw.pop("flower")
    cfg = TrainConfig.from_dict(raw)  # what `robustagg train` reads once [flower] is removed
    assert (cfg.workers.n, cfg.workers.f, cfg.attack.name, cfg.aggregator.name) == (6, 1, "reverse", "trimmed-mean")
    read, opts = fconfig.read(EXAMPLE)
    assert read == cfg and opts["compare"] == flower["compare"] and opts["backend"] == "ray"
    again, defaults = fconfig.read(cfg, ["workers.local_steps=3"], flower={"backend": "inline"})  # a TrainConfig
    assert again.workers.local_steps == 3 and defaults["backend"] == "inline" and defaults["compare"] == []


@pytest.mark.parametrize("mode, participation, expect", [
    ("sgd", None, ("sync", 0.8 / (0.2 * 4))),
    ("sgd", {"arrival": {"name": "bernoulli", "params": {"p": 0.5}}}, ("afa-cd", 0.8 / 0.2)),
    ("fedavg", None, ("sync", 0.8)),
    ("afa-cd", None, ("afa-cd", 0.8)),
    ("afa-cs", {"local_steps": {"name": "uniform-steps", "params": {"low": 1, "high": 3}}}, ("afa-cs", 0.8)),
])
def test_modes_map_to_the_strategy_mode_and_server_lr(mode, participation, expect):
    cfg, _ = fconfig.read(with_(BASE, mode=mode, participation=participation or {},
                                optimizer={"momentum": 0.5}))
    settings = fconfig.server_settings(cfg)
    assert (settings["mode"], settings["server_lr"], settings["server_momentum"]) == (*expect, 0.5)
    strategy = fconfig.build_strategy("robust", cfg, {})
    assert strategy.mode == expect[0] and strategy.server_lr == pytest.approx(expect[1])
    assert strategy.rule.name == "trimmed-mean" and strategy.rule.f == 1


def test_roles_partitions_and_participation_follow_robustagg_train():
    cfg, opts = fconfig.read(with_(BASE, workers={"n": 7, "f": 2}, attack={"name": "alie", "params": {"z": 1.5}},
                                   faults=[{"name": "drop", "params": {"q": 0.3, "workers": [0]}}],
                                   participation={"arrival": {"name": "bernoulli", "params": {"p": 0.7}}},
                                   data={"partition": "dirichlet", "alpha": 0.3, "replacement": True}))
    roles = fconfig.roles(cfg)
    assert [p for p, r in roles.items() if "byzantine" in r] == [5, 6]  # the last f, as in train
    assert roles[5]["byzantine-z"] == 1.5 and all(r["fault"] == "drop" for r in roles.values())
    assert roles[0]["fault-seed"] == components.derive_seed(cfg.run.seed, "fault", 0) % 2 ** 31
    data = fconfig.TrainData(cfg)
    parts = components.partition(cfg, data.load())
    for p in (0, 6):
        X, y = data(p, 7)
        assert torch.equal(y, data.load().y_train[torch.as_tensor(parts[p])])
    settings = fconfig.client_settings(cfg, opts, None, 10)
    assert settings["replacement"] and settings["lr"] == 0.2 and settings["local_steps"] == 4
    assert settings["participation"].round(3) == components.build_participation(cfg).round(3)

    silent, _ = fconfig.read(with_(BASE, attack={"name": "none"}))  # train: such workers send nothing
    assert fconfig.roles(silent) == {5: {"participation": "anarchic", "participation-p": 0.0}}
    poisoned, _ = fconfig.read(with_(BASE, attack={"name": "none"}, poisoning={"name": "label-flip"}))
    spec = fconfig.roles(poisoned, num_classes=10)
    assert list(spec) == [5] and spec[5]["poison"] == "label-flip" and spec[5]["poison-num_classes"] == 10


@pytest.mark.parametrize("change, message", [
    ({"trainer": "peer-to-peer"}, "peer-to-peer"),
    ({"optimizer": {"momentum": 0.9, "momentum_at": "worker"}}, "optimizer.momentum_at"),
    ({"optimizer": {"weight_decay": 1e-4}}, "optimizer.weight_decay"),
    ({"optimizer": {"schedule": "cosine"}}, "optimizer.schedule"),
    ({"run": {"checkpoint_every": 2, "out_dir": "x"}}, "run.checkpoint_every"),
    ({"run": {"device": "cuda"}}, "run.device"),
    ({"faults": [{"name": "drop"}, {"name": "crash"}]}, "faults"),
])
def test_keys_without_a_flower_meaning_are_rejected(change, message):
    with pytest.raises(ValueError, match="cannot run on Flower") as info:
        fconfig.read(with_(BASE, **change))
    assert message in str(info.value)


def test_flower_table_and_compare_entries_are_checked():
    with pytest.raises(ValueError, match="Did you mean 'flower.num_cpus'"):
        fconfig.read(BASE, ["flower.num_cpu=1"])
    with pytest.raises(ValueError, match="flower.strategy"):
        fconfig.read(BASE, flower={"strategy": "krum"})
    with pytest.raises(ValueError, match=r"compare\[0\] may set only the server side"):
        fconfig.read(BASE, flower={"compare": [{"workers": {"n": 3}}]})
    with pytest.raises(ValueError, match=r"compare\[0\].optimizer may set only"):
        fconfig.read(BASE, flower={"compare": [{"optimizer": {"local_lr": 1.0}}]})
    with pytest.raises(ValueError, match=r"compare\[0\]: .*krum"):  # 6 inputs cannot hold krum with f = 2
        fconfig.read(BASE, flower={"compare": [{"aggregator": {"name": "krum", "f": 2}}]})
    cfg, opts = fconfig.read(BASE, ["flower.num_cpus=1"],
                             flower={"compare": [{"strategy": "fedavg"}, {"aggregator": {"name": "median"}},
                                                 {"strategy": "election", "vote": "plurality"}]})
    runs = fconfig.runs(cfg, opts)
    assert [fconfig.label(k, c) for k, c, _ in runs] == ["robust(trimmed-mean)", "fedavg", "robust(median)",
                                                         "election"]
    assert opts["num_cpus"] == 1 and runs[3][2]["vote"] == "plurality"
    assert fconfig.read(tomllib.loads(fconfig.to_toml(cfg, opts)))[1] == opts  # round trip


def test_cli_runs_a_config_inline(tmp_path, capsys):
    path = tmp_path / "tiny.toml"
    path.write_text(EXAMPLE.read_text())
    code = cli.main(["flower", str(path), "--backend", "inline", "--out", str(tmp_path / "out"),
                     "--set", "run.steps=1", "--set", "flower.compare=[{strategy = 'election'}]"])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, out
    assert "robust(trimmed-mean)" in out and "certified accuracy at radius 0:" in out
    assert "[RobustStrategy(trimmed-mean)] round 1/1 accuracy" in captured.err  # progress, one line a round
    written = tmp_path / "out" / "flower-digits"
    assert (written / "metrics.csv").exists() and (written / "compare-1-election" / "metrics.csv").exists()
    assert fconfig.read(written / "config.toml")[1]["backend"] == "inline"


def test_cli_errors(monkeypatch, capsys, tmp_path):
    path = tmp_path / "p2p.toml"
    path.write_text('trainer = "peer-to-peer"\n')
    assert cli.main(["flower", str(path)]) == 2
    assert "cannot run on Flower" in capsys.readouterr().err
    real = flower_cli.importlib.util.find_spec
    monkeypatch.setattr(flower_cli.importlib.util, "find_spec", lambda name: None if name == "flwr" else real(name))
    assert cli.main(["flower", str(EXAMPLE)]) == 2
    assert 'pip install "robustagg[flower]"' in capsys.readouterr().err


def test_robustagg_does_not_import_flower():
    code = ("import sys, robustagg, robustagg.cli, robustagg.flower_cli, robustagg.train; "
            "robustagg.cli.build_parser(); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('federated', 'flwr', 'ray')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                   env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
