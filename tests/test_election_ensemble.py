"""train_ensemble: per-partition training, atomic per-model files, resume after a kill, process pool."""

import functools
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from robustagg import election as el
from robustagg.election import ensemble

MODEL = functools.partial(torch.nn.Linear, 5, 3)  # picklable for the process pool
CFG = dict(epochs=4, lr=0.1, batch_size=16, seed=3)


def _record(directory, name):
    """Append a file's digest to SHA256SUMS (what train_ensemble does after writing it)."""
    digest = hashlib.sha256((directory / name).read_bytes()).hexdigest()
    with open(directory / "SHA256SUMS", "a") as fh:
        fh.write(f"{digest}  {name}\n")


def blobs(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centers = np.random.default_rng(0).normal(size=(3, 5)) * 3
    return (centers[y] + rng.normal(size=(n, 5))).astype(np.float32), y


@pytest.fixture(scope="module")
def data():
    X, y = blobs(240, 1)
    T, ty = blobs(60, 2)
    return X, y, T, ty


@pytest.fixture(scope="module")
def full_run(data, tmp_path_factory):
    X, y, T, _ = data
    part = el.dpa_partition(el.pixel_sum_hash((X * 100).astype(np.int64)), 4)
    out = tmp_path_factory.mktemp("full")
    return part, out, el.train_ensemble(X, y, T, part, MODEL, out_dir=out, **CFG)


def test_trains_one_model_per_partition_and_stores_everything(data, full_run):
    X, y, T, ty = data
    part, out, scores = full_run
    assert scores.shape == (4, 60, 3) and np.isfinite(scores).all()
    assert ((scores.argmax(2) == ty[None]).mean(1) > 0.7).all()  # each small model learned the blobs
    assert np.array_equal(np.load(out / "scores.npy"), scores)
    assert np.array_equal(el.load_scores(out), scores)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_models"] == 4 and manifest["k"] == 4 and manifest["d"] == 1
    state = torch.load(out / "model_00002.pt")
    model = MODEL()
    model.load_state_dict(state)
    with torch.no_grad():
        assert np.allclose(model(torch.as_tensor(T)).numpy(), scores[2], atol=1e-6)
    assert not list(out.glob("*.tmp*"))


def test_same_seed_same_scores_and_callers_rng_untouched(data, full_run, tmp_path):
    X, y, T, _ = data
    part, _, scores = full_run
    state = torch.get_rng_state()
    again = el.train_ensemble(X, y, T, part, MODEL, out_dir=tmp_path, **CFG)
    assert torch.equal(torch.get_rng_state(), state)
    assert np.array_equal(again, scores)


def test_resume_after_interruption_loses_nothing_stored(data, full_run, tmp_path):
    X, y, T, _ = data
    part, _, scores = full_run
    done = []

    def stop_after_two(i, s):
        done.append(i)
        if len(done) == 2:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        el.train_ensemble(X, y, T, part, MODEL, out_dir=tmp_path, callback=stop_after_two, **CFG)
    assert sorted(p.name for p in tmp_path.glob("scores_*.npy")) == ["scores_00000.npy", "scores_00001.npy"]
    (tmp_path / "scores_00002.npy.tmp123").write_bytes(b"half-written")  # a write cut by the kill
    resumed = []
    out = el.train_ensemble(X, y, T, part, MODEL, out_dir=tmp_path, callback=lambda i, s: resumed.append(i), **CFG)
    assert resumed == [2, 3]
    assert np.array_equal(out, scores)


def test_models_found_on_disk_are_not_retrained(data, full_run, tmp_path):
    X, y, T, _ = data
    part, src, scores = full_run
    shutil.copy(src / "manifest.json", tmp_path)
    for i in (0, 3):
        shutil.copy(src / f"model_{i:05d}.pt", tmp_path)
        np.save(tmp_path / f"scores_{i:05d}.npy", np.full((60, 3), 7.0, np.float32))  # sentinel
        _record(tmp_path, f"scores_{i:05d}.npy")  # ... stored with its digest, as train_ensemble does
    trained = []
    out = el.train_ensemble(X, y, T, part, MODEL, out_dir=tmp_path, callback=lambda i, s: trained.append(i), **CFG)
    assert trained == [1, 2]
    assert (out[[0, 3]] == 7.0).all() and np.array_equal(out[[1, 2]], scores[[1, 2]])


def test_a_different_run_in_the_same_directory_is_refused(data, full_run, tmp_path):
    X, y, T, _ = data
    part, src, _ = full_run
    shutil.copy(src / "manifest.json", tmp_path)
    with pytest.raises(ValueError, match="lr"):
        el.train_ensemble(X, y, T, part, MODEL, out_dir=tmp_path, **dict(CFG, lr=0.5))
    with pytest.raises(ValueError, match="same number of samples"):
        el.train_ensemble(X[:10], y[:10], T, part, MODEL, out_dir=tmp_path / "x", **CFG)


def test_fa_models_train_on_the_union_of_their_buckets(data, tmp_path, monkeypatch):
    X, y, T, _ = data
    part = el.fa_partition(np.arange(240), k=2, d=2, seed=5)
    seen = {}
    real = ensemble._train_one

    def spy(i, Xi, yi, *args):
        seen[i] = (Xi.clone(), yi.clone())
        return real(i, Xi, yi, *args)

    monkeypatch.setattr(ensemble, "_train_one", spy)
    scores = el.train_ensemble(X, y, T, part, MODEL, out_dir=tmp_path, **CFG)
    assert scores.shape == (4, 60, 3)
    for i in range(4):
        idx = np.flatnonzero(np.isin(part.buckets, [(i - s) % 4 for s in part.shifts]))
        assert torch.equal(seen[i][0], torch.as_tensor(X[idx])) and torch.equal(seen[i][1], torch.as_tensor(y[idx]))


def test_process_pool_resumes_and_gives_the_same_scores(data, full_run, tmp_path):
    X, y, T, _ = data
    part, _, scores = full_run

    def stop(i, s):
        raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        el.train_ensemble(X, y, T, part, MODEL, out_dir=tmp_path, jobs=2, callback=stop, **CFG)
    first = {p.name for p in tmp_path.glob("scores_*.npy")}
    # at most `jobs` = 2 tasks are ever submitted: the one that finished and at most one in
    # flight (allowed to finish) are kept; the other two were never started
    assert 1 <= len(first) <= 2
    got = []  # resume in this process (one pool start keeps the test short)
    out = el.train_ensemble(X, y, T, part, MODEL, out_dir=tmp_path, callback=lambda i, s: got.append(i), **CFG)
    assert len(got) == 4 - len(first)
    assert np.allclose(out, scores, atol=1e-5)


def test_a_changed_byte_or_a_truncated_score_file_is_an_error_naming_the_file(data, full_run, tmp_path):
    X, y, T, _ = data
    part, src, scores = full_run
    out = tmp_path / "ens"
    shutil.copytree(src, out)
    path = out / "scores_00002.npy"
    good = path.read_bytes()
    raw = bytearray(good)
    raw[-5] ^= 0x01  # one flipped bit in a logit: still a valid .npy file
    path.write_bytes(bytes(raw))
    assert not np.array_equal(np.load(path), scores[2])
    for call in (lambda: el.load_scores(out),
                 lambda: el.train_ensemble(X, y, T, part, MODEL, out_dir=out, **CFG)):
        with pytest.raises(ValueError, match=r"scores_00002.npy is corrupted: its sha256 differs") as info:
            call()
        assert "\n" not in str(info.value)
    path.write_bytes(good[:100])  # truncated
    with pytest.raises(ValueError, match="scores_00002.npy is corrupted"):
        el.load_scores(out)
    path.write_bytes(good)
    assert np.array_equal(el.load_scores(out), scores)
    # the stacked file and every model file have their digest too (sha256sum -c format)
    lines = dict(reversed(ln.split("  ")) for ln in (out / "SHA256SUMS").read_text().splitlines())
    assert set(lines) == {"scores.npy"} | {f"{p}_{i:05d}.{e}" for p, e in (("scores", "npy"), ("model", "pt"))
                                            for i in range(4)}
    assert all(hashlib.sha256((out / n).read_bytes()).hexdigest() == h for n, h in lines.items())


def test_a_score_file_whose_digest_was_not_recorded_is_trained_again(data, full_run, tmp_path):
    X, y, T, _ = data
    part, src, scores = full_run
    out = tmp_path / "ens"
    shutil.copytree(src, out)
    # a kill between writing scores_00001.npy and recording its digest (and a line cut short)
    kept = [ln for ln in (out / "SHA256SUMS").read_text().splitlines() if "scores_00001.npy" not in ln]
    (out / "SHA256SUMS").write_text("\n".join(kept) + "\n0123abc")
    with pytest.raises(ValueError, match="scores_00001.npy has no sha256 recorded"):
        el.load_scores(out)
    trained = []
    again = el.train_ensemble(X, y, T, part, MODEL, out_dir=out, callback=lambda i, s: trained.append(i), **CFG)
    assert trained == [1] and np.array_equal(again, scores)
    assert np.array_equal(el.load_scores(out), scores)


def test_every_setting_that_changes_a_base_model_is_part_of_the_reuse_check(data, full_run, tmp_path):
    X, y, T, _ = data
    part, src, _ = full_run
    cases = [
        ({"model_fn": functools.partial(torch.nn.Linear, 5, 3, bias=False)}, ["architecture"]),
        ({"train_X": X + 0.5}, ["fingerprint"]),
        ({"test_X": T[::-1].copy()}, ["fingerprint"]),
        ({"settings": {"model": {"name": "mlp"}}}, ["settings.model"]),
        ({"momentum": 0.5}, ["momentum"]),
    ]
    for change, keys in cases:
        shutil.rmtree(tmp_path, ignore_errors=True)
        shutil.copytree(src, tmp_path)
        before = (tmp_path / "manifest.json").read_text()
        args = dict({"train_X": X, "train_y": y, "test_X": T, "partition": part, "model_fn": MODEL}, **change)
        with pytest.raises(ValueError, match="holds the base models of a different ensemble") as info:
            el.train_ensemble(out_dir=tmp_path, **dict(CFG, **{k: v for k, v in args.items()}))
        assert f"differs in {keys}" in str(info.value), change
        assert (tmp_path / "manifest.json").read_text() == before


def test_progress_is_a_few_lines_without_a_terminal(data, full_run, tmp_path, capsys):
    X, y, T, _ = data
    part, _, scores = full_run
    el.train_ensemble(X, y, T, part, MODEL, out_dir=tmp_path, desc="dpa base models", **CFG)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "dpa base models: 4 to train" and err[-1].startswith("dpa base models: 4/4 models (100%)")
    assert len(err) == 5 and "\r" not in "".join(err)
    assert np.array_equal(el.load_scores(tmp_path), scores)
    (tmp_path / "scores_00001.npy").unlink()
    el.train_ensemble(X, y, T, part, MODEL, out_dir=tmp_path, progress=False, **CFG)
    assert capsys.readouterr().err == ""


def test_progress_lines_are_about_ten_for_many_models():
    import io

    from robustagg.election._progress import ModelProgress

    buf = io.StringIO()
    with ModelProgress(1280, 80, "fa base models", stream=buf) as bar:
        for _ in range(1200):
            bar.update()
    lines = buf.getvalue().splitlines()
    assert lines[0] == "fa base models: 1200 to train (80 already stored)"
    assert len(lines) == 11 and lines[-1].startswith("fa base models: 1280/1280 models (100%)")


def test_in_process_training_uses_one_torch_thread_and_restores_the_callers(data, tmp_path, monkeypatch):
    X, y, T, _ = data
    part = el.dpa_partition(np.arange(240), 2)
    seen = []
    real = ensemble._train_one

    def spy(*args):
        seen.append(torch.get_num_threads())
        return real(*args)

    monkeypatch.setattr(ensemble, "_train_one", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        el.train_ensemble(X, y, T, part, MODEL, out_dir=tmp_path, progress=False, **CFG)
        assert seen == [1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
