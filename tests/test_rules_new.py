"""Issue 15's rules against their brute-force float64 definitions, plus their properties."""

from __future__ import annotations

import bruteforce as bf
import numpy as np
import pytest
import torch
from cases import gaussian

import robustagg as ra
from robustagg.aggregators import ops
from robustagg.aggregators.filtering import draw_columns

SIZES = [(5, 1, 0), (7, 2, 1), (9, 3, 2), (10, 2, 3), (12, 4, 4)]
NEW = ["cge", "mda", "smea", "caf", "dnc", "clipped-clustering", "fltrust", "monna"]


def close(a, b):
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("n,f,seed", SIZES)
def test_cge_mda_smea_caf_monna_match_bruteforce(n, f, seed):
    X = gaussian(n, 4, seed)
    close(ra.get("cge", f=f)(X), bf.cge(X, f))
    close(ra.get("mda", f=f)(X), bf.mda(X, f))
    close(ra.get("smea", f=f)(X), bf.smea(X, f))
    close(ra.get("caf", f=f)(X), bf.caf(X, f))
    for index in (0, n - 1):
        close(ra.get("monna", f=f, index=index)(X), bf.monna(X, f, index))


@pytest.mark.parametrize("n,f,seed", SIZES)
def test_fltrust_matches_bruteforce(n, f, seed):
    X, g0 = gaussian(n, 6, seed, offset=0.3), gaussian(1, 6, seed + 50, offset=0.3)[0]
    rule = ra.get("fltrust", f=f, reference=g0)
    close(rule(X), bf.fltrust(X, g0))
    assert rule.last["reference"] == "server"
    again = ra.get("fltrust", f=f)
    again.set_reference(torch.tensor(g0))
    close(again(X), bf.fltrust(X, g0))
    close(ra.get("fltrust", reference=g0)(-np.abs(X) * np.sign(g0)), np.zeros(6))  # no trust at all: zero


def test_fltrust_without_reference_uses_the_median_and_says_so():
    X = gaussian(7, 5, 3, offset=1.0)
    rule = ra.get("fltrust", f=2)
    close(rule(X), bf.fltrust(X, bf.median(X)))
    assert rule.last["reference"] == "median"
    with pytest.raises(ValueError, match="reference has 3 entries"):
        ra.get("fltrust", reference=np.ones(3))(X)


@pytest.mark.parametrize("n,f,seed", SIZES)
def test_dnc_matches_bruteforce_with_the_same_columns(n, f, seed):
    X = gaussian(n, 40, seed)
    g = torch.Generator().manual_seed(seed)
    cols = [draw_columns(40, 15, g).numpy() for _ in range(3)]
    close(ra.get("dnc", f=f, sub_dim=15, niters=3, seed=seed)(X), bf.dnc(X, f, cols))


def test_dnc_columns_are_distinct_uniform_and_cost_no_pass_over_d():
    """DnC's coordinate draw: sorted distinct indices in range, each coordinate about equally
    often, the same for the same generator state, and O(b) work: d = 1e12 is no problem (a
    permutation of d would need 8 TB)."""
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(40)
    for _ in range(2000):
        cols = draw_columns(40, 15, g)
        assert cols.numel() == 15 and torch.all(cols[1:] > cols[:-1]) and 0 <= int(cols[0]) and int(cols[-1]) < 40
        counts[cols] += 1
    expected = 2000 * 15 / 40
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 80.0, chi2  # 39 degrees of freedom: p < 1e-4 beyond 80
    for d, b in ((40, 30), (40, 40), (40, 99), (10**12, 1000)):  # permutation, all, all, sparse
        a, c = draw_columns(d, b, torch.Generator().manual_seed(3)), draw_columns(d, b, torch.Generator().manual_seed(3))
        assert torch.equal(a, c) and a.numel() == min(b, d) and a.unique().numel() == a.numel() and int(a[-1]) < d


@pytest.mark.parametrize("n,seed", [(7, 0), (9, 1), (11, 2)])
def test_clipped_clustering_matches_bruteforce_across_calls(n, seed):
    rule = ra.get("clipped-clustering")
    history = []
    for call in range(3):
        X = gaussian(n, 5, seed + call, offset=0.5)
        X[:2] = -4 * X[:2]  # a minority pointing the other way
        close(rule(X), bf.clipped_clustering(X, history))
        history += [float(np.linalg.norm(x)) for x in X]
    fresh = ra.get("clipped-clustering")
    fresh.load_state_dict(rule.state_dict())
    X = gaussian(n, 5, 99, offset=0.5)
    close(fresh(X), rule(X))


def test_mda_ties_go_to_the_tighter_subset_whatever_the_order():
    """Removing row 2 or row 3 both leave the diameter |x0 - x1| = 2; keeping row 2 (nearer the
    others) gives the smaller sum of squared distances: chosen in both orders."""
    X = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.5], [0.0, -1.6]])
    want = X[[0, 1, 2]].mean(axis=0)
    close(ra.get("mda", f=1)(X), want)
    close(ra.get("mda", f=1)(X[[3, 2, 1, 0]]), want)
    close(bf.mda(X, 1), want)


def test_mda_and_smea_say_when_they_approximate():
    X = gaussian(12, 3, 0)
    exact, approx = ra.get("mda", f=3), ra.get("mda", f=3, max_subsets=10)
    exact(X), approx(X)
    assert exact.last["exact"] and not approx.last["exact"]
    D = bf.sq_dist_matrix(X)
    diam = lambda S: max(D[i, j] for i in S for j in S)  # noqa: E731
    best = diam(bf.mda_subset(X, 3))
    assert best <= diam(approx.last["selected"]) <= 4 * best  # squared distances: within 2x in distance
    smea = ra.get("smea", f=3, max_subsets=10)
    smea(X)
    assert not smea.last["exact"] and len(smea.last["selected"]) == 9


def _smea_greedy_cases():
    """(name, float64 rows, f) with C(n, f) beyond max_subsets=1: random rows, far outliers
    (one cluster at 1e6, single rows at 1e20), integer rows (many exact ties) and repeated rows."""
    rng = np.random.default_rng(11)
    cases = []
    for i, (n, f, d) in enumerate([(8, 3, 2), (15, 3, 5), (23, 7, 4), (40, 8, 12), (60, 12, 3)]):
        X = rng.standard_normal((n, d))
        cases.append((f"gauss{n}", X.copy(), f))
        X[:f] = 1e6 * (1 + 0.01 * rng.standard_normal((f, d)))
        cases.append((f"cluster{n}", X.copy(), f))
        X[:f] = rng.standard_normal((f, d))
        X[rng.permutation(n)[: f - 1]] *= 1e20
        cases.append((f"spread{n}", X.copy(), f))
        cases.append((f"ties{n}", rng.integers(-1, 2, size=(n, d)).astype(np.float64), f))
        X = rng.standard_normal((n, d))
        X[1 : n // 3] = X[0]
        cases.append((f"repeated{n}", X, f))
    return cases


@pytest.mark.parametrize("name,X,f", _smea_greedy_cases(), ids=[c[0] for c in _smea_greedy_cases()])
def test_smea_greedy_selects_as_the_brute_force_greedy(name, X, f):
    """The greedy path (rank-one removals through the secular equation) keeps the rows the
    definition keeps, computed from d x d covariances; ties (integer rows, repeated rows) go to
    the lowest index, which an argmin over separately rounded eigenvalues does not guarantee."""
    rule = ra.get("smea", f=f, max_subsets=1)
    out = rule(X)
    want = bf.smea_greedy(X, f)
    assert not rule.last["exact"] and rule.last["selected"] == want
    close(out, X[want].mean(axis=0))


@pytest.mark.parametrize("m,kind", [(2, "gauss"), (9, "gauss"), (60, "gauss"), (30, "outliers"), (30, "repeated"),
                                    (12, "rank1"), (7, "zero")])
def test_top_eigenvalue_without_each_row_matches_eigvalsh(m, kind):
    """The secular-equation solve against one eigvalsh per removal, to rounding of the top eigenvalue
    (a repeated top eigenvalue, a zero matrix, rank one, 1e8-sized rows)."""
    from robustagg.aggregators.subset import _top_eigenvalue_without_each

    rng = np.random.default_rng(m)
    X = rng.standard_normal((m, 5))
    if kind == "outliers":
        X[:3] *= 1e8
    elif kind == "repeated":  # two orthogonal groups of the same spread: a repeated top eigenvalue
        X = np.zeros((m, 5))
        X[: m // 2, 0] = X[m // 2 :, 1] = np.tile([1.0, -1.0], m // 4 + 1)[: m // 2]
    elif kind == "rank1":
        X = np.outer(rng.standard_normal(m), rng.standard_normal(5))
    elif kind == "zero":
        X = np.zeros((m, 5))
    G = torch.from_numpy(X @ X.T)
    K = ops.centred_gram(G, torch.ones(m, dtype=torch.float64))
    lam, U = (t.numpy() for t in torch.linalg.eigh(K))
    got = _top_eigenvalue_without_each(lam, U, m / (m - 1))
    want = []
    for k in range(m):
        keep = torch.ones(m, dtype=torch.float64)
        keep[k] = 0
        want.append(float(torch.linalg.eigvalsh(ops.centred_gram(G, keep))[-1]))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-13 * max(lam[-1], 1e-300))


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("seed", [0, 1])
def test_f_far_outliers_have_bounded_influence(name, seed):
    """f rows at distance 1e6 in one direction: the output stays within the honest rows' spread."""
    f, n = 3, 13
    H = gaussian(n - f, 8, seed, offset=1.0)
    bad = np.full((f, 8), -1e6)
    X = np.concatenate([H, bad])[np.random.default_rng(seed).permutation(n)]
    extra = {"reference": H.mean(axis=0)} if name == "fltrust" else {}
    if name == "monna":
        extra = {"index": int(np.nonzero((X > -1e5).all(axis=1))[0][0])}
    out = ra.get(name, f=f, **extra)(X)
    mu = H.mean(axis=0)
    radius = np.linalg.norm(mu) + 3 * np.linalg.norm(H - mu, axis=1).max()
    assert np.linalg.norm(out - mu) <= radius


@pytest.mark.parametrize("seed", range(5))
def test_monna_ignores_the_order_of_the_other_rows(seed):
    X = gaussian(9, 4, seed)
    perm = np.concatenate([[0], 1 + np.random.default_rng(seed).permutation(8)])
    close(ra.get("monna", f=2)(X), ra.get("monna", f=2)(X[perm]))
    close(ra.get("monna", f=2, index=4)(X), ra.get("nnm", f=2)(X)[4])


def test_monna_index_past_the_inputs_is_an_error():
    with pytest.raises(ValueError, match="index=9"):
        ra.get("monna", f=1, index=9)(gaussian(5, 3, 0))


@pytest.mark.parametrize("name", [name for name in NEW if name != "dnc"])  # dnc's statistic draws global columns
def test_a_decision_from_the_shard_statistics_applies_shard_by_shard(name):
    """What a robust all-reduce does: statistics of coordinate shards summed, one decision, each
    shard applies it (MoNNA and FLTrust: distances / inner products summed over shards)."""
    X = torch.tensor(gaussian(11, 12, 1))
    make = lambda: ra.get(name, f=2, **({"reference": X[0] * 0 + 1} if name == "fltrust" else {}))  # noqa: E731
    rule = make()
    shards = [X[:, :5], X[:, 5:]]
    if rule.uses_gram:
        statistic = rule._statistic(X, sum(ops.gram(s) for s in shards))
    else:
        statistic = rule._statistic(X, None)
    decision = rule._decide(statistic, rule.f)
    out = torch.cat([rule._apply(s, decision) for s in shards], dim=-1)
    assert torch.allclose(out, make()(X), rtol=1e-12, atol=1e-12)


def test_dnc_draws_new_columns_each_call_and_reset_restarts():
    X = gaussian(9, 30, 0)
    rule = ra.get("dnc", f=2, sub_dim=3, niters=1)
    first = [rule(X) for _ in range(4)]
    rule.reset()
    close(rule(X), first[0])
    assert any(not np.allclose(first[0], other) for other in first[1:])


def test_monna_distances_stay_accurate_far_from_the_origin():
    """Rows at 1e4 with spread 1e-3 in float32: |x|^2 - 2 x.v + |v|^2 keeps no digit of the
    distances; the rule must pick the same neighbours as the float64 definition."""
    X = 1e4 + 1e-3 * gaussian(9, 6, 2)
    out = ra.get("monna", f=3, index=2)(torch.tensor(X, dtype=torch.float32))
    want = bf.monna(X, 3, 2)
    np.testing.assert_allclose(out.double().numpy(), want, rtol=1e-6)
    rule = ra.get("monna", f=3, index=2)
    rule(torch.tensor(X, dtype=torch.float32))
    D = bf.sq_dist_matrix(X)
    assert rule.last["selected"] == sorted(sorted(range(9), key=lambda j: (j != 2, D[2, j], j))[:6])
