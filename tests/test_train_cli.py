"""`robustagg train` (issue 5, item 7): results files, progress bar, resume, one-line errors."""

import csv
from pathlib import Path

import pytest
import torch

from robustagg import cli
from robustagg.train import TrainConfig, checkpoint

ROOT = Path(__file__).resolve().parents[1]

TINY = """
[data]
name = "digits"

[model]
name = "logistic"

[workers]
n = 6
f = 1
batch_size = 16

[attack]
name = "sign-flip"

[aggregator]
name = "median"

[optimizer]
lr = 0.5

[run]
steps = 12
eval_every = 4
seed = 2
name = "tiny"
"""


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def test_train_writes_results_and_shows_progress(config, tmp_path, capsys):
    out = tmp_path / "results"
    assert cli.main(["train", str(config), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "tiny: step 12, test accuracy" in captured.out and str(out / "tiny") in captured.out
    assert "tiny:" in captured.err and "acc=" in captured.err and "loss=" in captured.err  # the tqdm bar
    run = out / "tiny"
    assert TrainConfig.from_toml(run / "config.toml") == TrainConfig.from_toml(config, [f"run.out_dir='{out}'"])
    with open(run / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [4, 8, 12]
    assert (run / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_set_steps_and_name(config, tmp_path, capsys):
    code = cli.main(["train", str(config), "--out", str(tmp_path), "--name", "other", "--steps", "8",
                     "--set", "aggregator.name=trimmed-mean", "--set", "run.eval_every=8", "--no-progress"])
    assert code == 0
    out = capsys.readouterr()
    assert "other: step 8/8 loss" in out.err
    saved = TrainConfig.from_toml(tmp_path / "other" / "config.toml")
    assert saved.aggregator.name == "trimmed-mean" and saved.run.name == "other"


def test_resume_continues_to_the_uninterrupted_model(config, tmp_path, capsys):
    args = ["train", str(config), "--out", str(tmp_path), "--set", "run.checkpoint_every=4", "--no-progress"]
    assert cli.main(args + ["--steps", "8"]) == 0
    assert checkpoint.load(tmp_path / "tiny" / "checkpoint.pt")["t"] == 8
    assert cli.main(args + ["--resume"]) == 0
    resumed = checkpoint.load(tmp_path / "tiny" / "checkpoint.pt")
    assert cli.main(args + ["--name", "straight"]) == 0
    straight = checkpoint.load(tmp_path / "straight" / "checkpoint.pt")
    assert resumed["t"] == straight["t"] == 12
    assert torch.equal(resumed["trainer"]["x"], straight["trainer"]["x"])
    assert cli.main(args + ["--resume"]) == 0  # already done
    assert "nothing to train" in capsys.readouterr().err


@pytest.mark.parametrize("edit, message", [
    (("[workers]", "[workers]\nbatchsize = 3"), "unknown key 'workers.batchsize'. Did you mean 'workers.batch_size'?"),
    (("n = 6", 'n = "6"'), "workers.n must be an integer, got str '6'"),
    (('name = "median"', 'name = "krum"'), "aggregator 'krum' with f=1 needs at least 5 inputs (n > 2f + 2)"),
    (('name = "median"', 'name = "medain"'), "aggregator: "),
    (("lr = 0.5", "lr = -1"), "optimizer.lr"),
    (("steps = 12", "steps = 12\n[oops"), "Expected"),
])
def test_bad_configs_are_one_line_and_exit_2(config, tmp_path, capsys, edit, message):
    text = TINY.replace(*edit)
    if "krum" in edit[1]:
        text = text.replace("n = 6", "n = 4")
    config.write_text(text)
    assert cli.main(["train", str(config), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustagg train: error: ") and err.count("\n") == 1, err
    assert message in err, err


@pytest.mark.parametrize("args, message", [
    (["--set", "workers.f"], "an override must look like 'section.key=value'"),
    (["--set", "optimizer.lrr=0.1"], "Did you mean 'optimizer.lr'?"),
    (["--set", "workers.f=6"], "workers.f must be < workers.n"),
    (["--steps", "-1"], "--steps must be >= 0"),
])
def test_bad_arguments_are_one_line_and_exit_2(config, tmp_path, capsys, args, message):
    assert cli.main(["train", str(config), "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_missing_config_file(tmp_path, capsys):
    assert cli.main(["train", str(tmp_path / "nope.toml")]) == 2
    assert "No such file" in capsys.readouterr().err


def test_peer_to_peer_config_trains(tmp_path, capsys):
    path = tmp_path / "p2p.toml"
    path.write_text(TINY.replace('[attack]\nname = "sign-flip"', 'trainer_ = 1').replace("trainer_ = 1", "")
                    .replace('[aggregator]\nname = "median"', '[attack]\nname = "alie"')
                    .replace("[data]", 'trainer = "peer-to-peer"\n\n[data]'))
    assert cli.main(["train", str(path), "--out", "", "--steps", "4", "--no-progress"]) == 0
    assert "tiny: step 4, test accuracy" in capsys.readouterr().out


TRAIN_CONFIGS = [p for p in sorted((ROOT / "experiments" / "configs").glob("*.toml"))
                 if not p.name.startswith(("election_", "flower_"))]  # tested by their own loaders


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_example_configs_are_valid(path):
    cfg = TrainConfig.from_toml(path)
    assert cfg.run.name and cfg.run.checkpoint_every > 0
