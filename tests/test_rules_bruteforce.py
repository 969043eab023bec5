"""Every rule against the brute-force float64 definition of issue 2 (``bruteforce.py``)."""

from __future__ import annotations

import bruteforce as bf
import numpy as np
import pytest
import torch
from cases import build, gaussian

import robustagg as ra

# (n, f) pairs: odd and even n, f = 0, the largest f each bound allows, and something between
SHAPES = [(1, 0), (2, 0), (3, 1), (4, 1), (5, 2), (6, 2), (7, 3), (8, 1), (9, 2), (10, 4), (11, 2), (12, 5)]
SEEDS = [0, 1]


def close(got, want, tol=1e-10):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * (1 + np.abs(want).max()))


def shapes(bound):
    ok = {"n > f": lambda n, f: n > f, "n > 2f": lambda n, f: n > 2 * f,
          "n > 2f + 2": lambda n, f: n > 2 * f + 2, "n >= 4f + 3": lambda n, f: n >= 4 * f + 3}[bound]
    return [(n, f, s) for (n, f) in SHAPES for s in SEEDS if ok(n, f)]


@pytest.mark.parametrize("n,f,seed", shapes("n > f"))
def test_mean(n, f, seed):
    X = gaussian(n, 4, seed)
    close(ra.get("mean", f=f)(X), bf.mean(X))


@pytest.mark.parametrize("n,f,seed", shapes("n > 2f"))
def test_coordinate_rules(n, f, seed):
    X = gaussian(n, 5, seed)
    close(ra.get("median", f=f)(X), bf.median(X))
    close(ra.get("trimmed-mean", f=f)(X), bf.trimmed_mean(X, f))
    close(ra.get("meamed", f=f)(X), bf.meamed(X, f))


@pytest.mark.parametrize("n,f", [(5, 2), (6, 2), (7, 1), (8, 3)])
def test_coordinate_rules_with_ties(n, f):
    """Small integers: many equal values and equal window costs (MeaMed takes the lower window)."""
    X = np.random.default_rng(n).integers(-2, 3, size=(n, 40)).astype(np.float64)
    close(ra.get("median", f=f)(X), bf.median(X))
    close(ra.get("trimmed-mean", f=f)(X), bf.trimmed_mean(X, f))
    close(ra.get("meamed", f=f)(X), bf.meamed(X, f))


def test_meamed_ties_take_the_lower_window():
    # 1 2 3 4 (f = 1, k = 3): median 2.5, windows [1, 2, 3] and [2, 3, 4] both cost 1.5 -> 2
    # 0 1 5 10 20 (f = 2, k = 3): median 5, [0, 1, 5] and [1, 5, 10] both cost 5 -> 2
    # 1 2 3 4 5 (f = 2, k = 3): median 3, [2, 3, 4] costs 1, the others 2 -> 3
    X = np.array([[4.0, 20.0, 5.0], [2.0, 0.0, 1.0], [1.0, 10.0, 3.0], [3.0, 1.0, 2.0], [np.nan, 5.0, 4.0]])
    close(ra.get("meamed", f=1)(X[:4, :1]), [2.0])
    close(ra.get("meamed", f=2)(X[:, 1:]), [2.0, 3.0])


@pytest.mark.parametrize("n,f,seed", shapes("n > 2f + 2"))
def test_krum_and_multi_krum(n, f, seed):
    X = gaussian(n, 4, seed)
    krum = ra.get("krum", f=f)
    close(krum(X), bf.krum(X, f))
    assert krum.last["selected"] == [bf.krum_index(X, f)]
    close(ra.get("multi-krum", f=f)(X), bf.multi_krum(X, f))
    for m in (1, 2, n):
        rule = ra.get("multi-krum", f=f, m=m)
        close(rule(X), bf.multi_krum(X, f, m))
        assert rule.last["selected"] == bf.multi_krum_indices(X, f, m)


def test_krum_family_ties_go_to_the_lowest_index():
    # integer rows: every distance and score is exact, so ties are real ties
    X = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [9.0, 9.0], [9.0, 9.0], [1.0, 0.0]])
    krum = ra.get("krum", f=1)
    out = krum(X)
    assert krum.last["selected"] == [bf.krum_index(X, 1)] == [0]
    close(out, X[0])
    mk = ra.get("multi-krum", f=1, m=3)
    mk(X)
    assert mk.last["selected"] == bf.multi_krum_indices(X, 1, 3)


@pytest.mark.parametrize("n,f,seed", shapes("n >= 4f + 3") + [(15, 3, 0), (19, 4, 1)])
def test_bulyan(n, f, seed):
    X = gaussian(n, 5, seed)
    rule = ra.get("bulyan", f=f)
    close(rule(X), bf.bulyan(X, f))
    assert rule.last["selected"] == bf.bulyan_selection(X, f)


def test_bulyan_rescores_on_the_remaining_set():
    """A cluster of 3 far points wins the last pick only with scores recomputed on the rest
    (neighbour count max(r - f - 2, 1) = 1 at r = 5): the definition, not Krum run once."""
    X = np.array([[0.0], [0.1], [0.3], [0.6], [1.0], [50.0], [50.0], [50.0], [7.0], [8.0], [9.0]])
    f = 2
    rule = ra.get("bulyan", f=f)
    close(rule(X), bf.bulyan(X, f))
    assert rule.last["selected"] == bf.bulyan_selection(X, f)
    # ranking the Krum scores of the full set once would pick other inputs
    once = sorted(range(11), key=lambda i: (bf.krum_scores(X, 11 - f - 2)[i], i))[: 11 - 2 * f]
    assert sorted(once) != sorted(rule.last["selected"])


@pytest.mark.parametrize("n,f,seed", shapes("n > 2f"))
def test_nnm_arc_clipping(n, f, seed):
    X = gaussian(n, 4, seed, scale=2.0)
    close(ra.get("nnm", f=f)(X), bf.nnm(X, f))
    close(ra.get("arc", f=f)(X), bf.arc(X, f))
    close(ra.get("clipping", f=f, c=2.5)(X), bf.clipping(X, 2.5))


def test_arc_clips_exactly_the_k_largest():
    # n = 10, f = 3: k = floor(2 * 3 * 7 / 10) = 4; norms 1..10
    X = np.diag(np.arange(1.0, 11.0))
    out = ra.get("arc", f=3)(X)
    norms = np.linalg.norm(out, axis=1)
    close(norms, [1, 2, 3, 4, 5, 6, 6, 6, 6, 6])


@pytest.mark.parametrize("n,f,seed", shapes("n > 2f"))
def test_centered_clipping(n, f, seed):
    X = gaussian(n, 4, seed, offset=1.0)
    close(ra.get("centered-clipping", f=f, tau=0.7, iters=3)(X), bf.centered_clipping(X, 0.7, 3))
    close(ra.get("centered-clipping", f=f, tau=100.0)(X), X.mean(axis=0))  # nothing clipped


@pytest.mark.parametrize("n,s,seed", [(6, 2, 0), (7, 3, 1), (5, 1, 2), (4, 4, 3)])
def test_bucketing_averages_a_partition(n, s, seed):
    X = gaussian(n, 3, seed)
    out = ra.get("bucketing", s=s, seed=seed)(X)
    assert out.shape == (-(-n // s), 3)
    groups = bf.bucket_groups(out, X, s)
    assert groups is not None, "some output row is not the mean of s inputs"
    assert sorted(i for g in groups for i in g) == list(range(n))


def test_bucketing_permutations_look_uniform():
    # s = 1 returns the inputs in a shuffled order: all 6 orders of 3 inputs show up
    X = np.array([[1.0], [2.0], [3.0]])
    rule = ra.get("bucketing", s=1, seed=0)
    seen = {tuple(rule(X)[:, 0]) for _ in range(60)}
    assert len(seen) == 6


def _gm_cases():
    cases = [gaussian(n, d, seed, scale=3.0) for n, d, seed in [(3, 2, 0), (5, 3, 1), (8, 4, 2), (13, 6, 3)]]
    cases.append(gaussian(9, 3, 4, offset=100.0))  # large norms, small spread
    ring = np.zeros((6, 2))  # the optimum is the input at the origin (Weiszfeld only creeps to it)
    ang = np.linspace(0, 2 * np.pi, 5, endpoint=False)
    ring[1:, 0], ring[1:, 1] = np.cos(ang) * [1, 2, 3, 4, 5], np.sin(ang) * [1, 2, 3, 4, 5]
    cases.append(ring)
    cases.append(np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 0.1]]))  # obtuse triangle: a vertex
    cases.append(np.array([[1.0, 2.0], [3.0, -1.0]]))  # n = 2: any point between is optimal
    cases.append(np.ones((4, 3)))  # all equal
    return cases


@pytest.mark.parametrize("case", range(len(_gm_cases())))
def test_geometric_median_objective(case):
    X = _gm_cases()[case]
    reference = min(bf.gm_objective(X, bf.weiszfeld(X)), bf.gm_objective(X, _cvxpy_point(X)))
    rule = ra.get("geometric-median")
    out = rule(X)
    got = bf.gm_objective(X, out)
    assert got <= reference * (1 + 1e-6) + 1e-12
    # the certificate the rule stops on is a true lower bound
    assert rule.last["lower_bound"] <= reference * (1 + 1e-9) + 1e-12
    # the cvxpy reference solver agrees with the brute-force Weiszfeld
    assert bf.gm_objective(X, ra.get("geometric-median", solver="cvxpy")(X)) <= reference * (1 + 1e-6) + 1e-9
    # float32 input: float32 output, objective as good as float32 allows
    out32 = ra.get("geometric-median")(X.astype(np.float32))
    assert out32.dtype == np.float32
    assert bf.gm_objective(X, out32.astype(np.float64)) <= reference * (1 + 1e-5) + 1e-5


def _cvxpy_point(X):
    import cvxpy as cp

    z = cp.Variable(X.shape[1])
    cp.Problem(cp.Minimize(cp.sum(cp.norm(X - z[None, :], 2, axis=1)))).solve(solver=cp.CLARABEL)
    return z.value


def test_geometric_median_tolerance_is_respected():
    X = gaussian(10, 5, 7)
    best = bf.gm_objective(X, bf.weiszfeld(X))
    for tol in (1e-2, 1e-4, 1e-8):
        out = ra.get("geometric-median", tol=tol)(X)
        assert bf.gm_objective(X, out) <= best * (1 + tol)
    loose = ra.get("geometric-median", tol=1e-2)
    tight = ra.get("geometric-median", tol=1e-10)
    loose(X), tight(X)
    assert loose.last["iterations"] < tight.last["iterations"]


# -- pipelines ------------------------------------------------------------------------------


@pytest.mark.parametrize("n,f,seed", [(5, 1, 0), (7, 3, 1), (9, 2, 2), (10, 3, 3)])
def test_pipelines(n, f, seed):
    X = gaussian(n, 4, seed, scale=2.0)
    close(ra.pipeline(ra.get("nnm", f=f), ra.get("trimmed-mean", f=f))(X), bf.trimmed_mean(bf.nnm(X, f), f))
    close(ra.pipeline(ra.get("arc", f=f), ra.get("meamed", f=f))(X), bf.meamed(bf.arc(X, f), f))
    close(
        ra.pipeline(ra.get("clipping", c=1.0), ra.get("nnm", f=f), ra.get("median", f=f))(X),
        bf.median(bf.nnm(bf.clipping(X, 1.0), f)),
    )
    if n > 2 * f + 2:
        close(ra.pipeline(ra.get("nnm", f=f), ra.get("krum", f=f))(X), bf.krum(bf.nnm(X, f), f))
    # a pipeline of pre-aggregators returns the matrix
    close(ra.pipeline(ra.get("nnm", f=f), ra.get("arc", f=f))(X), bf.arc(bf.nnm(X, f), f))


def test_pipeline_with_bucketing_uses_the_same_buckets_as_bucketing_alone():
    X = gaussian(8, 3, 5)
    buckets = ra.get("bucketing", s=2, seed=4)(X)
    piped = ra.pipeline(ra.get("bucketing", s=2, seed=4), ra.get("median"))(X)
    close(piped, bf.median(buckets))
    # equal buckets: the mean of the bucket means is the mean
    close(ra.pipeline(ra.get("bucketing", s=2, seed=9), ra.get("mean"))(X), X.mean(axis=0))


def test_float32_inputs_match_float64_reference():
    X = gaussian(11, 6, 9, offset=3.0)
    X32 = X.astype(np.float32)
    X64 = X32.astype(np.float64)  # the reference sees exactly the float32 values
    refs = {
        "mean": bf.mean(X64), "median": bf.median(X64), "trimmed-mean": bf.trimmed_mean(X64, 2),
        "meamed": bf.meamed(X64, 2), "krum": bf.krum(X64, 2), "multi-krum": bf.multi_krum(X64, 2),
        "bulyan": bf.bulyan(X64, 2), "centered-clipping": bf.centered_clipping(X64, 10.0),
    }
    for name, want in refs.items():
        got = ra.get(name, f=2)(X32)
        assert got.dtype == np.float32, name
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6 * np.abs(want).max(), err_msg=name)


def test_tensor_and_numpy_give_the_same_result():
    X = gaussian(11, 5, 11)
    for name in ra.available():
        rule_a, rule_b = build(name, 2), build(name, 2)
        a, b = rule_a(X), rule_b(torch.tensor(X))
        np.testing.assert_array_equal(a, b.numpy(), err_msg=name)
