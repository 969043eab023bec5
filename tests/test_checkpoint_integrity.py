"""Checkpoints with a digest, a one-line error for corrupted files and a fallback to the
previous checkpoint (issue 12, item 2); stale temporaries and file modes (issue 12, item 7)."""

import os
import stat
import warnings

import pytest
import torch

from robustagg import _io
from robustagg.train import build, checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def config(out_dir, **run):
    return {
        "workers": {"n": 6, "f": 1, "batch_size": 16},
        "model": {"name": "mlp", "params": {"hidden": [8], "dropout": 0.2}},
        "attack": {"name": "gaussian", "params": {"sigma": 1.0}},
        "aggregator": {"pipeline": [{"name": "bucketing", "params": {"s": 2}}, {"name": "centered-clipping"}]},
        "optimizer": {"lr": 0.5, "momentum": 0.9},
        "run": {"steps": 17, "eval_every": 4, "checkpoint_every": 5, "seed": 7, "out_dir": str(out_dir), **run},
    }


def flip_bit_in(path, needle):
    data = bytearray(path.read_bytes())
    at = data.find(needle)
    assert at >= 0
    data[at + 2] ^= 0x40  # one bit of one float32 weight
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(path):
    path.write_bytes(b"")


def garbage(path):
    path.write_bytes(os.urandom(path.stat().st_size))


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """A run killed after step 12 (checkpoints of steps 10 and 5 survive) and an uninterrupted one."""
    root = tmp_path_factory.mktemp("ckpt")
    whole = build(config(root / "whole"))
    whole.run()
    killed = build(config(root / "killed"))
    killed.run(stop_after=12)
    run_dir = root / "killed" / "run"
    return whole.x.clone(), run_dir, killed.x.clone()


def fresh_copy(run_dir, tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    for p in run_dir.iterdir():
        (target / p.name).write_bytes(p.read_bytes())
    return target


def test_the_latest_and_the_previous_checkpoint_are_kept_with_digests(killed_run):
    _, run_dir, _ = killed_run
    names = sorted(p.name for p in run_dir.iterdir())
    assert "checkpoint.pt.sha256" in names and "checkpoint.previous.pt.sha256" in names
    assert checkpoint.load(run_dir / "checkpoint.pt")["t"] == 10
    assert checkpoint.load(run_dir / "checkpoint.previous.pt")["t"] == 5
    # the digest file is sha256sum's format
    digest, name = (run_dir / "checkpoint.pt.sha256").read_text().split()
    assert name == "checkpoint.pt" and len(digest) == 64


@pytest.mark.parametrize("damage", [truncate, empty, garbage, "bitflip"], ids=["truncated", "empty", "garbage", "bitflip"])
def test_a_corrupted_checkpoint_is_detected_with_one_line_naming_it(killed_run, tmp_path, damage):
    _, run_dir, x_at_12 = killed_run
    run_dir = fresh_copy(run_dir, tmp_path)
    path = run_dir / "checkpoint.pt"
    if damage == "bitflip":
        saved = torch.load(path, weights_only=True)["trainer"]["x"]
        flip_bit_in(path, saved.numpy().tobytes()[:16])
        # the flipped file still loads with torch: only the digest catches it
        torch.load(path, weights_only=True)
    else:
        damage(path)
    with pytest.raises(checkpoint.CorruptFileError) as info:
        checkpoint.load(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_resume_falls_back_to_the_previous_checkpoint_and_reaches_the_same_model(killed_run, tmp_path):
    x_whole, run_dir, _ = killed_run
    run_dir = fresh_copy(run_dir, tmp_path)
    truncate(run_dir / "checkpoint.pt")
    resumed = build(config(tmp_path))
    with pytest.warns(RuntimeWarning, match="previous checkpoint"):
        resumed.run(resume=True)
    assert resumed.t == 17
    assert torch.equal(resumed.x, x_whole)
    assert [r["step"] for r in resumed.history] == [4, 8, 12, 16, 17]


def test_a_crash_at_any_point_of_the_rotation_leaves_a_checkpoint_that_verifies(tmp_path):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save({"t": 1}, path)
    checkpoint.save({"t": 2}, path)
    prev = checkpoint.previous_path(path)
    # crash after the previous digest was replaced, before the file moved: the latest is intact
    (tmp_path / "checkpoint.previous.pt.sha256").write_bytes((tmp_path / "checkpoint.pt.sha256").read_bytes())
    assert checkpoint.load_latest(path)[0]["t"] == 2
    # crash after the move, before the new file: only the previous one exists
    os.replace(path, prev)
    assert checkpoint.load_latest(path)[0]["t"] == 2
    # crash after the new file, before its digest: the stale digest fails, the previous one is used
    checkpoint.save({"t": 3}, path)
    path.write_bytes(path.read_bytes() + b"x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert checkpoint.load_latest(path)[0]["t"] == 2


def test_no_checkpoint_that_verifies_is_one_line_naming_both(tmp_path):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save({"t": 1}, path)
    checkpoint.save({"t": 2}, path)
    empty(path)
    garbage(checkpoint.previous_path(path))
    with pytest.raises(checkpoint.CorruptFileError) as info:
        checkpoint.load_latest(path)
    assert "checkpoint.pt" in str(info.value) and "checkpoint.previous.pt" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_missing_digest_is_reported(tmp_path):
    path = tmp_path / "a.bin"
    _io.write_with_digest(path, lambda fh: fh.write(b"abc"))
    assert _io.read_verified(path) == b"abc"
    _io.digest_path(path).unlink()
    with pytest.raises(_io.CorruptFileError, match="digest file a.bin.sha256"):
        _io.read_verified(path)


# ---------------------------------------------------------------------- issue 12, item 7


def test_files_are_created_with_the_umask_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        _io.atomic_write_text(tmp_path / "a.txt", "x")
        os.umask(0o002)
        _io.atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o664


def test_a_killed_write_leaves_a_temporary_that_the_next_start_removes(tmp_path):
    cfg = config(tmp_path, steps=2, checkpoint_every=0)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stale = [run_dir / ".metrics.csv.k3j9x_a1.tmp", run_dir / ".checkpoint.pt.abcdefgh.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    keep = run_dir / "notes.tmp"  # not one of ours
    keep.write_text("mine")
    build(cfg).run()
    assert not any(p.exists() for p in stale)
    assert keep.exists()
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp") and p.name.startswith(".")]
