"""Shared kernels: distances from the Gram matrix, coordinate-wise order statistics (torch and jit)."""

from __future__ import annotations

import bruteforce as bf
import numpy as np
import pytest
import torch
from cases import gaussian

from robustagg.aggregators import _jit, _networks, ops


@pytest.fixture
def backend():
    """Set the coordinate-wise backend for one test and restore it afterwards."""
    previous = ops.get_backend()
    yield ops.set_backend
    ops.set_backend(previous)


# -- distances ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n,d", [(1, 3), (2, 5), (7, 40), (12, 70_000), (40, 300)])  # 12 x 70k: bmm path
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sq_distances_basic_properties(n, d, dtype):
    X = torch.tensor(gaussian(n, d, n, offset=2.0), dtype=dtype)
    D, G = ops.sq_distances(X)
    assert D.dtype == dtype and D.shape == (n, n)
    assert torch.all(torch.diagonal(D) == 0)
    assert torch.all(D >= 0)
    assert torch.equal(D, D.T)  # exact: ties between D_ij and D_ji are real ties
    X64 = X.to(torch.float64).numpy()
    want = np.array([[np.sum((a - b) ** 2) for b in X64] for a in X64])
    np.testing.assert_allclose(D.numpy(), want, rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=1e-12)


@pytest.mark.parametrize("d", [1000, 70_000])
def test_sq_distances_with_large_norms_stay_accurate(d):
    """Rows 1e4 + 1e-2 noise in float32: |x|^2 ~ 1e8 d, distances ~ 1e-4 d (12 digits apart)."""
    rng = np.random.default_rng(d)
    X = (1e4 + 1e-2 * rng.standard_normal((6, d))).astype(np.float32)
    D, _ = ops.sq_distances(torch.from_numpy(X))
    X64 = X.astype(np.float64)  # the exact distances of the float32 values
    want = bf.sq_dist_matrix(X64)
    off = ~np.eye(6, dtype=bool)
    rel = np.abs(D.numpy()[off] - want[off]) / want[off]
    assert rel.max() < 1e-3
    # the naive formula would have lost every digit
    G = X64 @ X64.T
    naive = (np.diag(G)[:, None] + np.diag(G)[None, :] - 2 * (X @ X.T).astype(np.float64))
    assert np.abs(naive[off] - want[off]).max() / want[off].max() > 1.0


@pytest.mark.parametrize("n,d", [(5, 30), (12, 70_000), (40, 100), (48, 70_000), (80, 70_000)])  # X @ X.T, bmm, syrk
def test_gram_is_x_xt(n, d):
    X = torch.tensor(gaussian(n, d, 3))
    np.testing.assert_allclose(ops.gram(X).numpy(), X.numpy() @ X.numpy().T, rtol=1e-12, atol=1e-9)
    X32 = X.to(torch.float32)
    np.testing.assert_allclose(ops.gram(X32).numpy(), X.numpy() @ X.numpy().T, rtol=1e-5, atol=1e-5 * d)


def test_gram_of_16_bit_rows_accumulates_in_float32():
    X = torch.full((3, 10), 300.0, dtype=torch.float16)  # squares overflow float16
    G = ops.gram(X)
    assert G.dtype == torch.float32
    assert torch.all(G == 900_000.0)
    np.testing.assert_allclose(ops.distances_to(X, torch.zeros(10, dtype=torch.float16)).float(), 948.68, rtol=1e-4)


def test_distances_to_is_accurate_for_large_norms():
    rng = np.random.default_rng(0)
    X = (1e4 + 1e-2 * rng.standard_normal((4, 5000))).astype(np.float32)
    v = X.mean(axis=0)
    got = ops.distances_to(torch.from_numpy(X), torch.from_numpy(v)).numpy()
    want = np.sqrt(((X.astype(np.float64) - v.astype(np.float64)) ** 2).sum(axis=1))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_krum_scores_and_nearest_weights():
    X = gaussian(8, 3, 4)
    D, _ = ops.sq_distances(torch.tensor(X))
    for k in (1, 3, 7):
        np.testing.assert_allclose(ops.krum_scores(D, k).numpy(), bf.krum_scores(X, k), rtol=1e-12)
    assert torch.all(ops.krum_scores(D, 0) == 0)
    W = ops.nearest_weights(D, 3).numpy()
    np.testing.assert_allclose(W.sum(axis=1), 1.0)
    assert np.all(np.diag(W) == 1 / 3)  # itself first
    # equal distances: the lower index
    D2 = torch.tensor([[0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 2.0, 2.0], [1.0, 2.0, 0.0, 2.0], [1.0, 2.0, 2.0, 0.0]])
    assert np.nonzero(ops.nearest_weights(D2, 2).numpy()[0])[0].tolist() == [0, 1]
    assert np.nonzero(ops.nearest_weights(D2, 2).numpy()[3])[0].tolist() == [0, 3]


def test_row_helpers():
    X = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1e38, 1e38], [np.nan, 1.0], [1.0, -np.inf]], dtype=torch.float32)
    assert ops.nonfinite_rows(X).tolist() == [3, 4]  # row 2's sum overflows but every entry is finite
    clipped = ops.clip_rows(torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.3, 0.4]]), 1.0)
    np.testing.assert_allclose(clipped.numpy(), [[0.6, 0.8], [0.0, 0.0], [0.3, 0.4]], rtol=1e-6)
    W = torch.tensor([[0.5, 0.5], [1.0, 0.0]], dtype=torch.float64)
    out = ops.combine_rows(W, torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert out.dtype == torch.float32 and out.tolist() == [[2.0, 3.0], [1.0, 2.0]]


# -- NNM's mixing kernel --------------------------------------------------------------------------

JIT = pytest.mark.skipif(not _jit.available(), reason="numba is not installed (or ROBUSTAGG_JIT=0)")


def _mix(X, f, norms=None):
    D, _ = ops.sq_distances(X)
    return ops.mix_nearest(X, ops.farthest_sets(D, f), norms)


def _mix_cases():
    """(name, float64 input, f): random rows, integer rows with exact distance ties and repeated
    rows, and outliers at 1e20 (one cluster and spread out) among rows of norm ~1."""
    rng = np.random.default_rng(3)
    cases = []
    for n, f in [(5, 0), (7, 3), (15, 3), (16, 7)]:
        cases.append((f"gauss{n}-{f}", rng.standard_normal((n, 33)), f))
        ties = rng.integers(-1, 2, size=(n, 33)).astype(np.float64)
        ties[n // 2] = ties[0]
        cases.append((f"ties{n}-{f}", ties, f))
    for n, f in [(9, 4), (15, 3), (60, 12)]:
        X = rng.standard_normal((n, 33))
        X[:f] = 1e20 * (1 + 1e-3 * rng.standard_normal((f, 33)))  # a tight cluster far away
        cases.append((f"cluster{n}-{f}", X, f))
        X = rng.standard_normal((n, 33))
        X[rng.permutation(n)[:f]] *= 1e20  # each outlier alone
        cases.append((f"spread{n}-{f}", X, f))
    X = rng.standard_normal((12, 33))
    X[6:] += 100.0  # half the rows 100x the others' norm: each half mixes within itself
    cases.append(("halves", X, 3))
    return cases


@pytest.mark.parametrize("name,X,f", _mix_cases(), ids=[c[0] for c in _mix_cases()])
@pytest.mark.parametrize("kind", ["jit", "torch"])
def test_mix_nearest_matches_the_brute_force_definition(backend, name, X, f, kind):
    """Each output row is the float64 mean of its n - f nearest rows, to rounding of that row's own
    size: a 1e20 row added into the shared sum and subtracted again would leave errors of ~1e4."""
    if kind == "jit" and not _jit.available():
        pytest.skip("numba is not installed (or ROBUSTAGG_JIT=0)")
    backend(kind)
    got = _mix(torch.from_numpy(X), f).numpy()
    want = bf.nnm(X, f)
    err = np.abs(got - want).max(axis=1) / np.abs(want).max(axis=1)
    assert err.max() < 1e-13, (err.argmax(), err.max())


@JIT
@pytest.mark.parametrize("scale", [1e10, 1e15])
def test_mix_nearest_float32_outliers_never_enter_the_shared_sum(backend, scale):
    """float32 with f outliers far above the median norm, in every honest row's far set: the
    honest outputs equal the honest mean to float32 rounding (an outlier in the shared sum
    would cost each of them ~eps * scale, 6e2 to 6e7 here)."""
    backend("jit")
    rng = np.random.default_rng(4)
    n, f = 20, 4
    X = rng.standard_normal((n, 2000)).astype(np.float32)
    X[:f] *= np.float32(scale)
    got = _mix(torch.from_numpy(X), f).numpy()
    want = bf.nnm(X.astype(np.float64), f)
    np.testing.assert_allclose(got[f:], want[f:], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got[:f], want[:f], rtol=1e-5, atol=1e-5 * scale)


@JIT
def test_mix_nearest_jit_thread_split_and_shards_agree_with_the_dense_product(backend):
    """The compiled kernel over two column ranges (d >= 2 * 65536), a non-contiguous shard, and
    the decision (far sets, whole-row norms) applied shard by shard, as the robust all-reduce does."""
    backend("jit")
    X = torch.from_numpy(np.random.default_rng(6).standard_normal((12, 140_001)))
    X[2] *= 1e6  # one large row: added explicitly where kept
    D, _ = ops.sq_distances(X)
    far, norms = ops.farthest_sets(D, 3), ops.row_norms(X)
    got = ops.mix_nearest(X, far, norms)
    shards = torch.cat([ops.mix_nearest(X[:, :70_000], far, norms), ops.mix_nearest(X[:, 70_000:], far, norms)], 1)
    backend("torch")
    dense = ops.mix_nearest(X, far)
    torch.testing.assert_close(got, dense, rtol=1e-12, atol=1e-12 * 1e6)
    torch.testing.assert_close(shards, got, rtol=1e-12, atol=1e-12 * 1e6)


# -- coordinate-wise kernels ---------------------------------------------------------------------


def np_statistic(X, kind, param):
    """numpy reference over all columns at once (sort, then the definition)."""
    n = X.shape[0]
    s = np.sort(X, axis=0)
    med = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    if kind == "median":
        return med
    if kind == "trimmed":
        return s[param : n - param].mean(axis=0)
    k = param
    costs = np.stack([np.maximum(med - s[w], s[w + k - 1] - med) for w in range(n - k + 1)])
    start = np.argmin(costs, axis=0)  # first minimum: the lower window on ties
    pos = np.arange(n)[:, None]
    inside = (pos >= start) & (pos < start + k)
    return np.where(inside, s, 0.0).sum(axis=0) / k


def test_numpy_reference_matches_the_brute_force_definition():
    X = np.random.default_rng(0).integers(-3, 4, size=(9, 30)).astype(np.float64)
    np.testing.assert_allclose(np_statistic(X, "around", 6), bf.meamed(X, 3))
    np.testing.assert_allclose(np_statistic(X, "trimmed", 2), bf.trimmed_mean(X, 2))
    np.testing.assert_allclose(np_statistic(X, "median", 0), bf.median(X))


def _run(X, kind, param, rows=None):
    if kind == "median":
        return ops.coordinate_median(X, rows=rows)
    if kind == "trimmed":
        return ops.coordinate_trimmed_mean(X, param, rows=rows)
    return ops.coordinate_mean_around_median(X, param, rows=rows)


# (n, kind, param): n = 1, 2, odd and even; trimming 0 and the most; windows with and without a core
PLANS = [(1, "median", 0), (2, "median", 0), (7, "median", 0), (8, "median", 0), (2, "trimmed", 0),
         (8, "trimmed", 3), (9, "trimmed", 2), (9, "around", 6), (10, "around", 3), (5, "around", 5)]
JIT_PLANS = [(1, "median", 0), (2, "median", 0), (7, "median", 0), (8, "trimmed", 3), (9, "around", 6),
             (10, "around", 3)]  # few: each new plan compiles once (then numba caches it on disk)


def _data(n, d, seed, ties):
    rng = np.random.default_rng(seed)
    if ties:  # many equal values: the ordering inside the network must not matter
        return rng.integers(-2, 3, size=(n, d)).astype(np.float32)
    return rng.standard_normal((n, d)).astype(np.float32)


@pytest.mark.parametrize("n,kind,param", PLANS)
@pytest.mark.parametrize("ties", [False, True])
def test_torch_backend_matches_numpy(backend, n, kind, param, ties):
    backend("torch")
    X = _data(n, 4099, n, ties)
    got = _run(torch.from_numpy(X), kind, param)
    np.testing.assert_allclose(got.numpy(), np_statistic(X.astype(np.float64), kind, param), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n,kind,param", PLANS)
def test_differentiable_path_matches_numpy(n, kind, param):
    """Inputs that require a gradient go through ``run_plan_sorted`` (no ``out=`` buffers)."""
    X = _data(n, 301, n + 2, ties=True)
    T = torch.from_numpy(X).requires_grad_()
    got = _run(T, kind, param)
    assert got.requires_grad
    np.testing.assert_allclose(got.detach().numpy(), np_statistic(X.astype(np.float64), kind, param), rtol=1e-6)


@pytest.mark.skipif(not _jit.available(), reason="numba is not installed (or ROBUSTAGG_JIT=0)")
@pytest.mark.parametrize("n,kind,param", JIT_PLANS)
def test_jit_backend_matches_numpy(backend, n, kind, param):
    backend("jit")
    X = _data(n, 5003, n + 1, ties=n % 2 == 0)
    got = _run(torch.from_numpy(X), kind, param)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), np_statistic(X.astype(np.float64), kind, param), rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not _jit.available(), reason="numba is not installed (or ROBUSTAGG_JIT=0)")
def test_jit_float64_subset_rows_and_thread_split(backend):
    backend("jit")
    X = np.random.default_rng(5).standard_normal((12, 140_000))  # float64, two column ranges
    rows = torch.tensor([0, 2, 3, 5, 6, 8, 9, 10, 11])  # Bulyan's case: a subset of the rows
    got = _run(torch.from_numpy(X), "around", 6, rows=rows)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), np_statistic(X[rows.numpy()], "around", 6), rtol=1e-12)
    backend("torch")
    np.testing.assert_allclose(_run(torch.from_numpy(X), "around", 6, rows=rows).numpy(), got.numpy(), rtol=1e-12)


def test_torch_backend_across_column_chunks(backend):
    backend("torch")
    X = _data(5, 70_001, 9, ties=False)  # wider than one 65536-column chunk
    np.testing.assert_allclose(_run(torch.from_numpy(X), "trimmed", 1).numpy(),
                               np_statistic(X.astype(np.float64), "trimmed", 1), rtol=1e-6, atol=1e-6)


def test_plans_reject_impossible_statistics():
    with pytest.raises(ValueError, match="cannot trim 2"):
        _networks.make_plan(4, "trimmed", 2)
    with pytest.raises(ValueError, match="cannot average 0"):
        _networks.make_plan(4, "around", 0)
    with pytest.raises(ValueError, match="backend must be"):
        ops.set_backend("cuda")


def test_batcher_network_sorts():
    """Every 0/1 input is sorted by the full network (the 0-1 principle: then every input is)."""
    for n in range(1, 11):
        pairs = _networks.batcher_pairs(n)
        for bits in range(2**n):
            v = [(bits >> i) & 1 for i in range(n)]
            for a, b in pairs:
                v[a], v[b] = min(v[a], v[b]), max(v[a], v[b])
            assert v == sorted(v), (n, bits)
