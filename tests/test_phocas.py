"""Phocas (Xie, Koyejo, Gupta 2018): brute force in float64, properties, the input contract."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from cases import gaussian
from hypothesis import given, settings
from hypothesis import strategies as st

import robustagg as ra
from robustagg.aggregators import ops

FAST = settings(max_examples=20, deadline=None, derandomize=True)


def phocas_bruteforce(X: np.ndarray, f: int) -> np.ndarray:
    """Per column, literally: trimmed mean, then the mean of the n - f values nearest to it."""
    n, d = X.shape
    out = np.empty(d)
    for c in range(d):
        col = np.sort(X[:, c])
        centre = col[f : n - f].mean()
        nearest = sorted(range(n), key=lambda i: (abs(col[i] - centre), i))[: n - f]
        out[c] = col[nearest].mean()
    return out


@pytest.mark.parametrize("n,f", [(3, 1), (5, 2), (7, 1), (15, 3), (16, 7), (4, 0)])
def test_matches_the_bruteforce_in_float64(n, f):
    X = gaussian(n, 40, seed=n * 10 + f)
    X[:f] *= 30.0  # a few far rows, so the trimmed mean and the window matter
    out = ra.get("phocas", f=f)(torch.tensor(X))
    np.testing.assert_allclose(out.numpy(), phocas_bruteforce(X, f), rtol=0, atol=1e-12)


def test_differs_from_meamed_where_the_trimmed_mean_is_not_the_median():
    # f = 2: median 6, trimmed mean (5 + 6 + 10) / 3 = 7; the 5 values nearest to 7 are 5, 6, 10,
    # 1 (distance 6) and 12 (distance 5); nearest to 6: 5, 6, 10, 1 and 0 (distance 6, tied with 12:
    # the lower window)
    X = np.array([[0.0], [1.0], [5.0], [6.0], [10.0], [12.0], [17.0]])
    assert ra.get("phocas", f=2)(X)[0] == pytest.approx((1 + 5 + 6 + 10 + 12) / 5)
    assert ra.get("meamed", f=2)(X)[0] == pytest.approx((0 + 1 + 5 + 6 + 10) / 5)


def test_equal_distances_take_the_lower_window():
    X = np.array([[0.0], [1.0], [2.0], [3.0]])  # f = 1: centre 1.5; {0, 1, 2} and {1, 2, 3} tie
    assert ra.get("phocas", f=1)(X)[0] == pytest.approx(1.0)


@FAST
@given(seed=st.integers(0, 2**31 - 1), f=st.integers(0, 4), extra=st.integers(1, 5),
       ints=st.booleans())
def test_permutation_invariant_also_with_ties(seed, f, extra, ints):
    n = 2 * f + extra
    rng = np.random.default_rng(seed)
    X = rng.integers(-3, 4, size=(n, 6)).astype(float) if ints else rng.standard_normal((n, 6))
    perm = rng.permutation(n)
    rule = ra.get("phocas", f=f)
    np.testing.assert_allclose(rule(X[perm]), rule(X), rtol=0, atol=1e-12)
    if not ints:
        np.testing.assert_allclose(rule(X), phocas_bruteforce(X, f), rtol=0, atol=1e-12)


@FAST
@given(seed=st.integers(0, 2**31 - 1), f=st.integers(1, 4), scale=st.sampled_from([1e2, 1e6, -1e9]))
def test_bounded_influence_byzantine_values_cannot_leave_the_widened_honest_box(seed, f, scale):
    n = 2 * f + 1 + seed % 3
    rng = np.random.default_rng(seed)
    honest = rng.standard_normal((n - f, 8))
    byz = scale * rng.standard_normal((f, 8))
    out = ra.get("phocas", f=f)(np.vstack([byz, honest]))
    lo, hi = honest.min(axis=0), honest.max(axis=0)
    w = hi - lo
    assert np.all(out >= lo - w - 1e-9) and np.all(out <= hi + w + 1e-9)


def test_a_nonfinite_row_is_dropped_and_counted_against_f():
    X = gaussian(9, 12, seed=3)
    bad = X.copy()
    bad[4, 2] = np.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ra.get("phocas", f=2)(bad)
    assert any(issubclass(w.category, ra.NonFiniteUpdateWarning) for w in caught)
    np.testing.assert_allclose(out, phocas_bruteforce(np.delete(X, 4, axis=0), 1), rtol=0, atol=1e-12)
    bad[5, 0] = np.inf
    bad[6, 1] = -np.inf
    with pytest.raises(ValueError, match="3 updates are non-finite.*f=2"):
        ra.get("phocas", f=2)(bad)


def test_bound_and_float32():
    with pytest.raises(ValueError, match="n > 2f"):
        ra.get("phocas", f=2)(np.zeros((4, 3)))
    X = gaussian(11, 300, seed=5)
    out32 = ra.get("phocas", f=3)(torch.tensor(X, dtype=torch.float32))
    assert out32.dtype == torch.float32
    np.testing.assert_allclose(out32.numpy(), phocas_bruteforce(X, 3), rtol=0, atol=1e-5)


def test_kernel_checks_k_and_is_differentiable():
    X = torch.tensor(gaussian(5, 3, seed=1), requires_grad=True)
    out = ops.coordinate_mean_nearest(X, X.detach().mean(dim=0), 3)
    out.sum().backward()
    assert torch.allclose(X.grad.sum(dim=0), torch.ones(3, dtype=X.dtype))  # each column: 3 rows of 1/3
    with pytest.raises(ValueError, match="k must be in"):
        ops.coordinate_mean_nearest(X.detach(), X.detach()[0], 0)
