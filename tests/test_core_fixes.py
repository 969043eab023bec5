"""Smaller contract fixes: Krum's ties, non-float state-dict entries, label-flip classes,
centered clipping's exact mean, the Flag Aggregator's output options and scale."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import robustagg as ra
from robustagg import poisoning


def test_krum_names_the_lowest_of_identical_rows():
    torch.manual_seed(0)
    torch.randn(9, 5)
    X = torch.randn(9, 5)
    X[4] = X[1]
    X[7] = X[1]  # the three copies' scores differ in the last bit (row 7's was the smallest)
    rule = ra.get("krum", f=2)
    out = rule(X)
    assert rule.last["selected"] == [1] and torch.equal(out, X[1])


@pytest.mark.parametrize("seed", range(20))
def test_krum_ties_among_copies_go_to_the_lowest_index(seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(11, 6, generator=g)
    copies = sorted(torch.randperm(11, generator=g)[:3].tolist())
    X[copies[1:]] = X[copies[0]].clone()
    rule = ra.get("krum", f=2)
    rule(X)
    (chosen,) = rule.last["selected"]
    if torch.equal(X[chosen], X[copies[0]]):
        assert chosen == copies[0]


@pytest.mark.parametrize("name", ["flag", "mean", "median", "krum", "nnm"])
def test_non_float_state_dict_entries_are_the_inputs_median(name):
    g = torch.Generator().manual_seed(0)
    sds = [{"w": 5 + torch.randn(4, 4, generator=g), "num_batches_tracked": torch.tensor(7 + (i == 2)),
            "mask": torch.tensor([True, i % 3 == 0])} for i in range(9)]
    sds[0]["num_batches_tracked"] = torch.tensor(10**9)  # one Byzantine counter
    out = ra.get(name, f=1)(sds)
    for o in (out if isinstance(out, list) else [out]):
        assert o["num_batches_tracked"].dtype == torch.int64 and int(o["num_batches_tracked"]) == 7
        assert o["mask"].dtype == torch.bool and o["mask"].tolist() == [True, False]


def test_non_float_numpy_entries_keep_their_dtype():
    sds = [{"w": np.full(3, float(s), dtype=np.float32), "steps": np.array(s, dtype=np.int32)} for s in range(5)]
    out = ra.get("flag")(sds)
    assert out["steps"].dtype == np.int32 and int(out["steps"]) == 2


def test_label_flip_mapping_counts_the_mapped_classes():
    y = np.array([3, 6, 2, 0])
    _, yp, idx = poisoning.label_flip(np.zeros((4, 2)), y, mapping={i: 9 - i for i in range(10)})
    np.testing.assert_array_equal(yp, [6, 3, 7, 9])
    assert idx.tolist() == [0, 1, 2, 3]
    _, yp, _ = poisoning.label_flip(np.zeros((4, 2)), y, mapping=list(range(9, -1, -1)))
    np.testing.assert_array_equal(yp, [6, 3, 7, 9])


def test_centered_clipping_with_a_large_radius_is_exactly_the_mean():
    X = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]
    out = ra.get("centered-clipping", tau=1e6)(X)
    np.testing.assert_array_equal(out, [4.0, 5.0, 6.0])
    np.testing.assert_array_equal(out, ra.get("mean")(X))


# ------------------------------------------------------------------ Flag Aggregator ----


def _honest(n=13, d=2000, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(d, generator=g, dtype=torch.float64)
    mu = mu / mu.norm() * 1000
    return mu + 300 * torch.randn(n, d, generator=g, dtype=torch.float64) / d**0.5, mu


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def test_flag_output_raw_replaces_paper():
    X, _ = _honest()
    raw = ra.get("flag", output="raw")(X)
    with pytest.warns(FutureWarning, match='output="raw"'):
        old = ra.get("flag", output="paper")
    assert old.output == "raw" and torch.equal(old(X), raw)


def test_flag_default_output_is_on_a_unit_scale():
    X, mu = _honest()
    out = ra.get("flag")(X)
    p, m = X.shape[0], math.ceil((X.shape[0] + 1) / 2)
    assert float(out.norm()) <= p / m + 1e-9 and _cos(out, mu) > 0.99
    assert torch.allclose(ra.get("flag")(X * 1000), out, rtol=1e-8, atol=1e-12)  # the inputs' scale drops out


@pytest.mark.parametrize("attack", ["1e20", "-50mu"])
def test_flag_raw_output_is_not_robust_to_scale(attack):
    H, mu = _honest()
    bad = torch.full((2, H.shape[1]), 1e20, dtype=torch.float64) if attack == "1e20" else (-50 * H.mean(0)).repeat(2, 1)
    X = torch.cat([H, bad])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ra.NonFiniteUpdateWarning)
        raw = ra.get("flag", f=2, output="raw")(X)
        ref = ra.get("flag", f=2)(X)
    assert _cos(ref, mu) > 0.98  # the default output keeps the honest direction
    if attack == "1e20":
        assert float(raw.abs().max()) > 1e18  # the attacker's values pass into the output
    else:
        assert _cos(raw, mu) < -0.9  # its direction flips
