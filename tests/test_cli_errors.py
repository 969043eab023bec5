"""One-line errors with exit status 2 for what a user can get wrong on the command line or in a
configuration (issue 12, item 5; issue 13, item 6), and ``--out ""`` (issue 13, item 6)."""

import argparse
from pathlib import Path

import pytest
import torch

from robustagg import cli
from robustagg.train import checkpoint
from robustagg.train import cli as train_cli
from robustagg.train import distributed

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a CPU-only torch")

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

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
[run]
steps = 6
eval_every = 3
checkpoint_every = 3
seed = 2
name = "tiny"
"""


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture
def no_data(monkeypatch):
    """Fail the test if any dataset is loaded (the checks must come first)."""
    from robustagg import data

    def refuse(*args, **kwargs):
        raise AssertionError("a dataset was loaded before the configuration was checked")

    monkeypatch.setattr(data, "load", refuse)


def one_line(capsys, prefix="robustagg train: error: "):
    err = capsys.readouterr().err
    assert err.startswith(prefix) and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_out_pointing_at_a_file(config, tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert cli.main(["train", str(config), "--out", str(target)]) == 2
    assert "run.out_dir" in one_line(capsys)


@NO_CUDA
@pytest.mark.usefixtures("no_data")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_on_a_cpu_only_torch_is_refused_before_loading_data(config, tmp_path, capsys, device):
    assert cli.main(["train", str(config), "--out", str(tmp_path), "--set", f"run.device={device}"]) == 2
    assert "run.device" in one_line(capsys)


@pytest.mark.usefixtures("no_data")
def test_a_malformed_device_is_refused(config, tmp_path, capsys):
    assert cli.main(["train", str(config), "--out", str(tmp_path), "--set", "run.device=cuda0"]) == 2
    assert "run.device" in one_line(capsys)


@NO_CUDA
@pytest.mark.usefixtures("no_data")
@pytest.mark.parametrize("extra, key", [(["--set", "run.device=cuda"], "run.device"),
                                        (["--backend", "nccl"], "--backend nccl")])
def test_distributed_launcher_checks_device_and_backend_first(config, tmp_path, capsys, extra, key):
    assert distributed.main([str(config), "--out", str(tmp_path), *extra]) == 2
    assert key in one_line(capsys, "robustagg.train.distributed: error: ")


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "0", "-1"])
def test_a_non_finite_or_non_positive_lr_is_refused(config, tmp_path, capsys, value):
    assert cli.main(["train", str(config), "--out", str(tmp_path), "--set", f"optimizer.lr={value}"]) == 2
    assert "optimizer.lr" in one_line(capsys)


def test_fault_worker_ids_out_of_range(config, tmp_path, capsys):
    config.write_text(TINY + '[[faults]]\nname = "crash"\nparams = {workers = [99]}\n')
    assert cli.main(["train", str(config), "--out", str(tmp_path)]) == 2
    err = one_line(capsys)
    assert "faults[0].params.workers" in err and "99" in err and "n=6" in err


def test_on_nonfinite_is_validated(config, tmp_path, capsys):
    assert cli.main(["train", str(config), "--out", str(tmp_path), "--set", "run.on_nonfinite=ignore"]) == 2
    assert "run.on_nonfinite" in one_line(capsys)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_corrupted_checkpoint_on_resume(config, tmp_path, capsys, damage):
    out = tmp_path / "out"
    assert cli.main(["train", str(config), "--out", str(out), "--no-progress"]) == 0
    run = out / "tiny"
    for path in (run / "checkpoint.pt", checkpoint.previous_path(run / "checkpoint.pt")):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3] if damage == "truncate" else b"\x00garbage" * 10)
    capsys.readouterr()
    assert cli.main(["train", str(config), "--out", str(out), "--resume", "--steps", "9"]) == 2
    err = one_line(capsys)
    assert "checkpoint.pt" in err and "checkpoint.previous.pt" in err


def test_out_empty_writes_nothing_and_implies_no_checkpoints(config, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli.main(["train", str(config), "--out", "", "--no-progress"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert "step 6" in capsys.readouterr().out


@pytest.mark.parametrize("path", sorted((ROOT / "experiments" / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_out_empty_is_accepted_by_every_example_config(path):
    text = path.read_text()
    if "[workers]" not in text or "[election" in text or "flower" in path.name:
        pytest.skip(reason="an election or Flower configuration, not one for `robustagg train`")
    args = argparse.Namespace(config=str(path), overrides=[], out="", name=None, steps=None, threads=None)
    cfg = train_cli.load(args)  # the training itself is exercised by the test above
    assert cfg.run.out_dir == "" and cfg.run.checkpoint_every == 0
