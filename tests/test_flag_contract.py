"""Flag Aggregator's contract: non-finite and zero inputs, the default subspace size, names,
parameter errors, explicit inits and seeds."""

import math

import numpy as np
import pytest
import torch

import robustagg as ra
from flag_reference import inputs, numpy_reference, orthonormal, rel
from robustagg.aggregators import FlagAggregator, NonFiniteUpdateWarning


def test_nonfinite_rows_are_dropped_and_reported():
    X = torch.from_numpy(inputs(9, 50, seed=21))
    bad = X.clone()
    bad[2, 7] = float("nan")
    bad[5] = float("inf")
    rule = ra.get("flag", f=2, lam=10.0)
    with pytest.warns(NonFiniteUpdateWarning):
        out = rule(bad)
    keep = [i for i in range(9) if i not in (2, 5)]
    clean = ra.get("flag", lam=10.0)
    assert torch.isfinite(out).all()
    assert rel(out, clean(X[keep])) < 1e-12
    assert rule.last["dropped"] == [2, 5]
    assert torch.isnan(rule.last["v"][[2, 5]]).all()
    assert torch.allclose(rule.last["v"][keep], clean.last["v"])
    assert (rule.last["coefficients"][[2, 5]] == 0).all()
    with pytest.raises(ValueError, match="non-finite"):
        ra.get("flag", f=1)(bad)


def test_overflowing_norm_is_dropped():
    X = torch.randn(7, 20, generator=torch.Generator().manual_seed(22))
    X[3] = 1e30  # finite entries, squared norm overflows float32
    with pytest.warns(NonFiniteUpdateWarning):
        out = ra.get("flag", f=1)(X)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("lam", [0.0, 40.0])
def test_zero_rows_follow_the_reference_normalisation(lam):
    """A zero input gets u_i = 0 (torch's F.normalize in the reference code)."""
    X = inputs(7, 60, seed=23)
    X[3] = 0.0
    Y0 = orthonormal(60, 4, seed=24)
    want, err = numpy_reference(X, Y0, 4, lam=lam)
    for solver in ("gram", "svd"):
        rule = ra.get("flag", lam=lam, init=torch.from_numpy(Y0), solver=solver)
        got = rule(torch.from_numpy(X))
        assert torch.isfinite(got).all()
        assert rel(got, want) < 1e-6
        assert rule.last["zero"] == [3]
        assert rule.last["v"][3] == 0 and rule.last["weights"][3] == 0
    all_zero = ra.get("flag")(torch.zeros(5, 10))
    assert torch.equal(all_zero, torch.zeros(10))


@pytest.mark.parametrize("p", [1, 2, 3, 4, 7, 8, 15])
def test_default_m(p):
    rule = ra.get("flag")
    rule(torch.randn(p, 30, generator=torch.Generator().manual_seed(p)))
    assert rule.last["m"] == math.ceil((p + 1) / 2)


def test_default_m_is_capped_at_d_and_numpy_round_trip():
    rule = ra.get("flag")
    out = rule(np.random.default_rng(25).normal(size=(15, 3)))
    assert isinstance(out, np.ndarray) and out.shape == (3,)
    assert rule.last["m"] == 3


def test_aliases_and_repr():
    assert isinstance(ra.get("flag-aggregator"), FlagAggregator)
    assert isinstance(ra.get("FA", lam=1.0), FlagAggregator)
    assert "lam=1.0" in repr(ra.get("flag", lam=1.0))


def test_bad_parameters():
    X = torch.randn(5, 20, dtype=torch.float64)
    with pytest.raises(ValueError, match="exceeds the number"):
        ra.get("flag", m=6)(X)
    with pytest.raises(ValueError, match="exceeds the dimension"):
        ra.get("flag", m=4)(torch.randn(5, 3))
    with pytest.raises(ValueError, match="orthonormal"):
        FlagAggregator(init=torch.ones(20, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(d, m\)"):
        FlagAggregator(init=torch.zeros(20))
    with pytest.raises(ValueError, match="columns but m"):
        FlagAggregator(m=3, init=torch.eye(20, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="rows but the updates"):
        FlagAggregator(init=torch.eye(19, 2, dtype=torch.float64))(X)
    with pytest.raises(TypeError, match="init must be"):
        FlagAggregator(init=3)
    with pytest.raises(ValueError, match="output must be one of"):
        FlagAggregator(output="mean")
    with pytest.raises(ValueError, match="init must be one of"):
        FlagAggregator(init="pca")
    with pytest.raises(ValueError, match="solver must be one of"):
        FlagAggregator(solver="qr")
    with pytest.raises(ValueError, match="eps must be >"):
        FlagAggregator(eps=0.0)
    with pytest.raises(ValueError, match="lam must be >="):
        FlagAggregator(lam=-1.0)
    with pytest.raises(ValueError, match="iters must be >="):
        FlagAggregator(iters=-1)


def test_explicit_init_sets_m():
    init = torch.eye(20, 3, dtype=torch.float64)
    rule = FlagAggregator(init=init)
    rule(torch.randn(8, 20, dtype=torch.float64))
    assert rule.last["m"] == 3


def test_same_seed_same_output_and_seed_matters():
    X = torch.randn(6, 500, generator=torch.Generator().manual_seed(26))
    a, b, c = ra.get("flag", seed=4, iters=1), ra.get("flag", seed=4, iters=1), ra.get("flag", seed=5, iters=1)
    assert torch.equal(a(X), b(X))
    assert not torch.equal(a(X), c(X))
