"""State kept between calls: centered clipping's centre, bucketing's random stream."""

from __future__ import annotations

import bruteforce as bf
import numpy as np
import pytest
import torch
from cases import gaussian

import robustagg as ra


def test_centered_clipping_starts_from_its_previous_output():
    rounds = [gaussian(7, 4, seed, offset=3.0) for seed in range(4)]
    rule = ra.get("centered-clipping", f=2, tau=0.5, iters=2)
    v = None
    for X in rounds:
        out = rule(X)
        v = bf.centered_clipping(X, 0.5, 2, v0=v)
        np.testing.assert_allclose(out, v, rtol=1e-12)
        np.testing.assert_allclose(rule.center.numpy(), v, rtol=1e-12)
    # the centre moves by at most tau per iteration: from 0, two calls of 2 iterations reach 2 tau
    fresh = ra.get("centered-clipping", tau=0.5, iters=2)
    assert np.linalg.norm(fresh(rounds[0])) <= 1.0 + 1e-12


def test_centered_clipping_reset_forgets_the_centre():
    X, Y = gaussian(7, 4, 0, offset=3.0), gaussian(7, 4, 1, offset=-3.0)
    rule = ra.get("centered-clipping", tau=0.5)
    first = rule(X)
    assert not np.allclose(rule(X), first)  # the second call starts from the first output
    rule.reset()
    assert rule.center is None
    np.testing.assert_array_equal(rule(X), first)
    rule.reset()
    np.testing.assert_allclose(rule(Y), bf.centered_clipping(Y, 0.5))


def test_centered_clipping_centre_must_match_the_update_size():
    rule = ra.get("centered-clipping")
    rule(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="reset"):
        rule(np.zeros((3, 5)))
    rule.reset()
    assert rule(np.ones((3, 5))).shape == (5,)


def test_centered_clipping_keeps_dtype_and_detaches_its_centre():
    X = torch.tensor(gaussian(5, 3, 2), dtype=torch.float32, requires_grad=True)
    rule = ra.get("centered-clipping", tau=0.3)
    out = rule(X)
    assert out.dtype == torch.float32 and out.requires_grad
    assert not rule.center.requires_grad
    out2 = rule(X.detach().double())  # the float32 centre serves a float64 call
    assert out2.dtype == torch.float64


def test_bucketing_same_seed_same_outputs():
    X = gaussian(9, 3, 3)
    a, b = ra.get("bucketing", s=2, seed=5), ra.get("bucketing", s=2, seed=5)
    seq_a = [a(X) for _ in range(4)]
    seq_b = [b(X) for _ in range(4)]
    for u, v in zip(seq_a, seq_b):
        np.testing.assert_array_equal(u, v)
    assert not all(np.array_equal(seq_a[0], u) for u in seq_a[1:])  # each call draws a new shuffle
    other = ra.get("bucketing", s=2, seed=6)
    assert not all(np.array_equal(u, other(X)) for u in seq_a)


def test_bucketing_reset_restarts_the_sequence():
    X = gaussian(8, 2, 4)
    rule = ra.get("bucketing", s=3, seed=1)
    first = [rule(X) for _ in range(3)]
    rule.reset()
    again = [rule(X) for _ in range(3)]
    for u, v in zip(first, again):
        np.testing.assert_array_equal(u, v)


def test_bucketing_does_not_touch_the_global_torch_generator():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    ra.get("bucketing", s=2, seed=7)(gaussian(6, 2, 5))
    assert torch.equal(torch.rand(3), expected)


def test_pipeline_reset_resets_every_stage():
    X = gaussian(9, 3, 6)
    rule = ra.pipeline(ra.get("bucketing", s=2, seed=2), ra.get("centered-clipping", tau=0.4))
    first, second = rule(X), rule(X)
    assert not np.allclose(first, second)
    rule.reset()
    np.testing.assert_array_equal(rule(X), first)
