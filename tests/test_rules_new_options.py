"""Issue 15's options: NNM at its floor, geometric median's fixed count and start, bucketing's
explicit permutation, clipping/ARC in place."""

from __future__ import annotations

import bruteforce as bf
import numpy as np
import pytest
import torch
from cases import gaussian

import robustagg as ra
from robustagg.aggregators import ops


@pytest.mark.parametrize("n,f,seed", [(5, 2, 0), (9, 3, 1), (15, 3, 2), (20, 9, 3)])
def test_nnm_matches_the_dense_definition_and_bruteforce(n, f, seed):
    X = torch.tensor(gaussian(n, 7, seed))
    D, _ = ops.sq_distances(X)
    dense = ops.combine_rows(ops.nearest_weights(D, n - f), X)
    torch.testing.assert_close(ra.get("nnm", f=f)(X), dense, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ra.get("nnm", f=f)(X.numpy()), bf.nnm(X.numpy(), f), rtol=1e-12, atol=1e-12)


def test_nnm_honest_rows_do_not_cancel_against_far_outliers():
    """f rows at 1e15: a plain (sum of all - sum of far) loses every honest digit; the honest
    rows' outputs must be their neighbours' mean to full float64 precision."""
    n, f = 11, 3
    X = gaussian(n, 6, 4)
    X[[2, 5, 9]] = 1e15
    out = ra.get("nnm", f=f)(X)
    want = bf.nnm(X, f)
    honest = [i for i in range(n) if i not in (2, 5, 9)]
    np.testing.assert_allclose(out[honest], want[honest], rtol=1e-12, atol=1e-12)


def test_nnm_with_gradients_matches():
    X = torch.tensor(gaussian(9, 4, 1), requires_grad=True)
    out = ra.get("nnm", f=2)(X)
    out.sum().backward()
    torch.testing.assert_close(out.detach(), ra.get("nnm", f=2)(X.detach()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("iters", [0, 1, 3, 10])
def test_geometric_median_fixed_iterations_and_start(iters):
    X = gaussian(8, 5, iters)
    z0 = np.linspace(-1, 1, 5)
    np.testing.assert_allclose(ra.get("geometric-median", iters=iters)(X), bf.weiszfeld_fixed(X, iters), rtol=1e-10)
    np.testing.assert_allclose(ra.get("geometric-median", iters=iters, init=z0)(X), bf.weiszfeld_fixed(X, iters, z0),
                               rtol=1e-10, atol=1e-12)
    rule = ra.get("geometric-median", iters=iters)
    rule(X)
    assert rule.last["iterations"] == iters


def test_geometric_median_init_must_match_the_updates():
    with pytest.raises(ValueError, match="init has 2 entries"):
        ra.get("geometric-median", iters=2, init=[1.0, 2.0])(gaussian(5, 3, 0))


def test_bucketing_with_an_explicit_permutation():
    X = gaussian(7, 3, 0)
    perm = [6, 0, 3, 1, 5, 2, 4]
    out = ra.get("bucketing", s=3, permutation=perm)(X)
    want = np.stack([X[perm[0:3]].mean(0), X[perm[3:6]].mean(0), X[perm[6:]].mean(0)])
    np.testing.assert_allclose(out, want, rtol=1e-12)
    with pytest.raises(ValueError, match="permutation has 7 entries for 6"):
        ra.get("bucketing", permutation=perm)(X[:6])
    with pytest.raises(ValueError, match="once each"):
        ra.get("bucketing", permutation=[0, 2])


@pytest.mark.parametrize("name,params", [("clipping", {"c": 1.0}), ("arc", {"f": 2})])
def test_inplace_clipping_mutates_the_callers_rows_and_the_default_does_not(name, params):
    X = torch.tensor(gaussian(9, 4, 3, scale=5.0))
    keep = X.clone()
    out = ra.get(name, **params)(X)
    assert torch.equal(X, keep)  # default: input intact
    got = ra.get(name, inplace=True, **params)(X)
    assert got.data_ptr() == X.data_ptr()  # no copy: the caller's tensor, scaled
    torch.testing.assert_close(X, out, rtol=1e-12, atol=1e-12)
    A = gaussian(9, 4, 3, scale=5.0)
    ra.get(name, inplace=True, **params)(A)
    np.testing.assert_allclose(A, out.numpy(), rtol=1e-12)


def test_gradient_label_flip_sends_the_flipped_label_gradient():
    from robustagg.attacks import GradientLabelFlip

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    inputs, labels = torch.randn(10, 4), torch.tensor([0, 1, 2, 2, 1, 0, 0, 1, 2, 0])
    d = sum(p.numel() for p in model.parameters())
    out = GradientLabelFlip(model, inputs, labels, num_classes=3)(torch.randn(6, d), 2)
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(inputs), 2 - labels).backward()
    want = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert out.shape == (2, d)
    torch.testing.assert_close(out[0], want)
    torch.testing.assert_close(out[1], want)
    with pytest.raises(ValueError, match="0 .. 2"):
        GradientLabelFlip(model, inputs, labels + 1, num_classes=3)(torch.randn(6, d), 1)
