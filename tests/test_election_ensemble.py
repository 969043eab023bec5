"""train_ensemble: per-partition training, atomic per-model files, resume after a kill, process pool."""

import functools
import json
import shutil

import numpy as np
import pytest
import torch

from robustagg import election as el
from robustagg.election import ensemble

MODEL = functools.partial(torch.nn.Linear, 5, 3)  # picklable for the process pool
CFG = dict(epochs=4, lr=0.1, batch_size=16, seed=3)


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
