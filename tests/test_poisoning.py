"""Data poisoning: the documented number of poisoned samples, untouched inputs, numpy and torch."""

import math

import numpy as np
import pytest
import torch

from robustagg import poisoning as P


def dataset(n=200, shape=(8, 8), classes=10, seed=0, torch_=False):
    rng = np.random.default_rng(seed)
    X = rng.random((n,) + shape).astype(np.float32)
    y = rng.integers(0, classes, size=n)
    if torch_:
        return torch.from_numpy(X), torch.from_numpy(y)
    return X, y


def snapshot(a):
    return a.clone() if isinstance(a, torch.Tensor) else a.copy()


def equal(a, b):
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else np.array_equal(a, b)


@pytest.mark.parametrize("torch_", [False, True])
@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.29, 0.5, 1.0])
def test_label_flip_count_and_inputs_untouched(torch_, fraction):
    X, y = dataset(n=100, torch_=torch_)
    X0, y0 = snapshot(X), snapshot(y)
    Xp, yp, idx = P.label_flip(X, y, fraction=fraction, num_classes=10, seed=3)
    assert equal(X, X0) and equal(y, y0)  # inputs untouched
    assert equal(Xp, X) and Xp is not X
    assert type(Xp) is type(X) and type(yp) is type(y) and type(idx) is type(y)
    idx_np, y_np, yp_np = (np.asarray(a) for a in (idx, y, yp))
    assert len(idx_np) == math.floor(fraction * 100 + 1e-9)
    assert np.all(np.diff(idx_np) > 0)
    assert np.array_equal(yp_np[idx_np], 9 - y_np[idx_np])
    rest = np.setdiff1d(np.arange(100), idx_np)
    assert np.array_equal(yp_np[rest], y_np[rest])


def test_label_flip_maps_and_fixed_points():
    X, y = dataset(n=300, classes=5)
    # C = 5: class 2 maps to itself under C - 1 - y, so it is not a candidate
    candidates = int(np.sum(y != 2))
    _, yp, idx = P.label_flip(X, y, fraction=0.5, num_classes=5, seed=1)
    assert len(idx) == candidates // 2 and np.all(y[idx] != 2) and np.all(yp[idx] == 4 - y[idx])
    _, yp, idx = P.label_flip(X, y, mapping={0: 1, 1: 0}, num_classes=5)
    assert np.array_equal(idx, np.flatnonzero((y == 0) | (y == 1)))
    assert np.array_equal(yp[idx], 1 - y[idx])
    _, yp, idx = P.label_flip(X, y, mapping=[1, 2, 3, 4, 0])
    assert len(idx) == 300 and np.array_equal(yp, (y + 1) % 5)
    with pytest.raises(ValueError, match="labels must lie"):
        P.label_flip(X, y, num_classes=3)
    with pytest.raises(ValueError, match="fraction must be <= 1"):
        P.label_flip(X, y, fraction=1.5)


def test_label_flip_seed_reproduces():
    X, y = dataset()
    a = P.label_flip(X, y, fraction=0.3, seed=5)[2]
    assert np.array_equal(a, P.label_flip(X, y, fraction=0.3, seed=5)[2])
    assert not np.array_equal(a, P.label_flip(X, y, fraction=0.3, seed=6)[2])


@pytest.mark.parametrize("torch_", [False, True])
def test_targeted_label_flip(torch_):
    X, y = dataset(n=500, torch_=torch_)
    y0 = snapshot(y)
    _, yp, idx = P.targeted_label_flip(X, y, source=3, target=7, fraction=0.4, seed=2)
    y_np, yp_np, idx_np = np.asarray(y), np.asarray(yp), np.asarray(idx)
    assert equal(y, y0)
    assert len(idx_np) == math.floor(0.4 * np.sum(y_np == 3))
    assert np.all(y_np[idx_np] == 3) and np.all(yp_np[idx_np] == 7)
    assert np.sum(yp_np != y_np) == len(idx_np)
    with pytest.raises(ValueError, match="must differ"):
        P.targeted_label_flip(X, y, source=1, target=1)


@pytest.mark.parametrize("layout", ["nhw", "nchw", "flat", "torch"])
def test_backdoor_count_patch_and_untouched(layout):
    rng = np.random.default_rng(0)
    X4 = rng.random((120, 3, 10, 12)).astype(np.float32) * 0.5
    y = rng.integers(0, 4, size=120)
    kw = {}
    if layout == "nhw":
        X = X4[:, 0].copy()
    elif layout == "nchw":
        X = X4
    elif layout == "flat":
        X, kw = X4.reshape(120, -1), {"image_shape": (3, 10, 12)}
    else:
        X, y = torch.from_numpy(X4), torch.from_numpy(y)
    X0, y0 = snapshot(X), snapshot(y)
    Xp, yp, idx = P.backdoor(X, y, target=2, fraction=0.25, patch_size=(2, 3), value=1.0, seed=4, **kw)
    assert equal(X, X0) and equal(y, y0)
    idx_np, y_np, yp_np = np.asarray(idx), np.asarray(y), np.asarray(yp)
    assert len(idx_np) == 30 and np.all(y_np[idx_np] != 2) and np.all(yp_np[idx_np] == 2)
    images = np.asarray(Xp).reshape(120, -1, 10, 12)
    assert np.all(images[idx_np, :, -2:, -3:] == 1.0)
    mask = np.ones((10, 12), bool)
    mask[-2:, -3:] = False
    assert np.array_equal(images[idx_np][:, :, mask], np.asarray(X).reshape(120, -1, 10, 12)[idx_np][:, :, mask])
    clean = np.setdiff1d(np.arange(120), idx_np)
    assert np.array_equal(images[clean], np.asarray(X).reshape(120, -1, 10, 12)[clean])
    # the test-time trigger stamps the same patch on every sample
    triggered = np.asarray(P.apply_trigger(X, patch_size=(2, 3), value=1.0, **kw)).reshape(120, -1, 10, 12)
    assert np.array_equal(triggered[idx_np], images[idx_np]) and np.all(triggered[:, :, -2:, -3:] == 1.0)


def test_trigger_positions_and_errors():
    X = np.zeros((2, 6, 6), dtype=np.uint8)
    assert P.apply_trigger(X, patch_size=2, value=300, position="top-left")[0, :2, :2].tolist() == [[255, 255]] * 2
    centre = P.apply_trigger(X, patch_size=2, value=9, position="center")[0]
    assert centre[2:4, 2:4].sum() == 36 and centre.sum() == 36
    assert P.apply_trigger(X, patch_size=1, value=5, position=(1, 4))[1, 1, 4] == 5
    with pytest.raises(ValueError, match="does not fit"):
        P.apply_trigger(X, patch_size=7)
    with pytest.raises(ValueError, match="position must be one of"):
        P.apply_trigger(X, position="middle")
    with pytest.raises(ValueError, match="image_shape"):
        P.apply_trigger(X.reshape(2, 36))
    with pytest.raises(ValueError, match="only"):
        P.backdoor(X, np.array([1, 2]), target=1, fraction=1.0)


def test_attack_success_rate():
    y = np.array([0, 1, 2, 3, 1])
    pred = np.array([1, 1, 1, 0, 2])  # among y != 1 (indices 0, 2, 3): 0 and 2 predicted 1
    assert P.attack_success_rate(pred, y, target=1) == pytest.approx(2 / 3)
    scores = torch.nn.functional.one_hot(torch.from_numpy(pred), 4).float()
    assert P.attack_success_rate(scores, torch.from_numpy(y), target=1) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="undefined"):
        P.attack_success_rate(pred, np.ones(5, int), target=1)


@pytest.mark.parametrize("torch_", [False, True])
def test_augmented_count_rows_and_reproducibility(torch_):
    X, y = dataset(n=60, shape=(1, 12, 12), torch_=torch_)
    X0, y0 = snapshot(X), snapshot(y)
    Xa, ya, idx = P.augmented(X, y, fraction=0.5, seed=3)
    assert equal(X, X0) and equal(y, y0) and equal(ya, y)
    idx_np = np.asarray(idx)
    assert len(idx_np) == 30
    changed = np.flatnonzero(np.any(np.asarray(Xa) != np.asarray(X), axis=(1, 2, 3)))
    assert np.array_equal(changed, idx_np)
    again = P.augmented(X, y, fraction=0.5, seed=3)[0]
    assert equal(again, Xa)
    assert np.asarray(Xa).dtype == np.float32


def test_augmented_steps_and_integer_images():
    rng = np.random.default_rng(1)
    X = (rng.random((10, 16, 16)) * 255).astype(np.uint8)
    Xa, _, idx = P.augmented(X, np.zeros(10, int), fraction=1.0, seed=1)
    assert Xa.dtype == np.uint8 and len(idx) == 10
    # with every step off the images come back unchanged
    Xf = X.astype(np.float64)
    same, _, _ = P.augmented(Xf, np.zeros(10, int), gamma_range=(1.0, 1.0), elastic_alpha=0.0, noise_std=0.0)
    np.testing.assert_allclose(same, Xf, atol=1e-9)
    flat, _, _ = P.augmented(Xf.reshape(10, -1), np.zeros(10, int), image_shape=(16, 16), seed=2)
    np.testing.assert_allclose(flat.reshape(10, 16, 16), P.augmented(Xf, np.zeros(10, int), seed=2)[0])


def test_registry():
    assert P.available() == ["augmented", "backdoor", "label-flip", "targeted-label-flip"]
    X, y = dataset(n=50)
    poison = P.get("targeted-label-flip", source=1, target=2, fraction=1.0)
    assert np.array_equal(poison(X, y)[2], np.flatnonzero(y == 1))
    with pytest.raises(TypeError, match="target"):
        P.get("backdoor", fraction=0.1)
    with pytest.raises(TypeError, match="no parameter"):
        P.get("label-flip", frac=0.1)
