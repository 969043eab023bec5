"""Flag Aggregator: the Gram-space solver against a literal float64 numpy reference, the SVD path,
the stopping rule, invariances and the paper's random attack (the contract: test_flag_contract.py)."""

import math

import numpy as np
import pytest
import torch

import robustagg as ra
from flag_reference import inputs, numpy_reference, orthonormal, rel
from robustagg.aggregators import flag_solver


# ------------------------------------------------------------------ exactness ----------------


@pytest.mark.parametrize("solver", ["gram", "svd"])
@pytest.mark.parametrize("output", ["reference", "raw"])
@pytest.mark.parametrize("iters", [1, 5])
@pytest.mark.parametrize("lam", [0.0, 40.0])
def test_matches_reference_given_init(solver, output, iters, lam):
    p, d, m = 7, 60, 4
    X = inputs(p, d, seed=1)
    Y0 = orthonormal(d, m, seed=2)
    want, err = numpy_reference(X, Y0, m, lam=lam, iters=iters, output=output)
    rule = ra.get("flag", lam=lam, iters=iters, init=torch.from_numpy(Y0), output=output, solver=solver)
    got = rule(torch.from_numpy(X))
    assert got.dtype == torch.float64 and got.shape == (d,)
    assert rel(got, want) < 1e-6
    assert np.allclose(rule.last["objective"], err, rtol=1e-9, atol=1e-12)
    assert rule.last["iterations"] == len(err) - 1 == iters


def test_pair_terms_change_the_result():
    X = torch.from_numpy(inputs(7, 60, seed=1))
    init = torch.from_numpy(orthonormal(60, 4, seed=2))
    a = ra.get("flag", init=init, lam=0.0)(X)
    b = ra.get("flag", init=init, lam=40.0)(X)
    assert rel(a, b) > 1e-3


@pytest.mark.parametrize("iters", [0, 1, 3])
def test_random_init_is_the_reference_draw(iters):
    """init='random' is QR(torch.rand(d, m) - 0.5) after torch.manual_seed(seed), drawn in blocks."""
    p, d, seed = 5, flag_solver.RANDOM_BLOCK + 1234, 3
    m = math.ceil((p + 1) / 2)
    X = inputs(p, d, seed=4)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        W = torch.rand(d, m) - 0.5
    Y0 = np.linalg.qr(W.double().numpy())[0]
    want, err = numpy_reference(X, Y0, m, iters=iters)
    for solver in ("gram", "svd"):
        rule = ra.get("flag", iters=iters, seed=seed, solver=solver)
        got = rule(torch.from_numpy(X))
        assert rel(got, want) < 1e-6, solver
        assert np.allclose(rule.last["objective"], err, rtol=1e-9)


def test_random_init_rows_of_a_shard_are_the_reference_rows_and_later_calls_skip_the_prefix():
    """A coordinate shard [lo, hi) of the init gets rows lo..hi of the one-shot draw; with a
    ``states`` dict the generator's state at lo's block is kept, and a later call starts there
    (shown by replacing that state: the rows change) instead of drawing every row before lo."""
    B, m, seed = flag_solver.RANDOM_BLOCK, 3, 7
    d = 5 * B + 77
    full = flag_solver.random_init_matrix(d, m, seed)
    states = {}
    for lo, hi in ((0, d), (B + 5, 3 * B + 9), (3 * B - 1, d), (4 * B, d)):
        for _ in range(2):  # the first call fills states, the second starts from it
            got = torch.cat([w for _, _, w in flag_solver.random_init_blocks(d, m, seed, lo=lo, hi=hi, states=states)])
            assert torch.equal(got, full[lo:hi]), (lo, hi)
    assert sorted(key[3] for key in states) == [B, 2 * B, 4 * B]  # lo = 0 needs none
    key = (m, seed, B, 4 * B)
    states[key] = torch.Generator().manual_seed(99).get_state()
    got = torch.cat([w for _, _, w in flag_solver.random_init_blocks(d, m, seed, lo=4 * B, states=states)])
    assert not torch.equal(got, full[4 * B :])


@pytest.mark.parametrize("lam", [0.0, 40.0])
def test_data_init_is_an_init_orthogonal_to_the_inputs(lam):
    p, d, m = 6, 50, 3
    X = inputs(p, d, seed=5)
    Q = np.linalg.qr(X.T)[0]  # basis of span(inputs)
    R = np.random.default_rng(6).normal(size=(d, m))
    Y0 = np.linalg.qr(R - Q @ (Q.T @ R))[0]
    assert np.abs(Y0.T @ X.T).max() < 1e-10
    want, _ = numpy_reference(X, Y0, m, lam=lam)
    for solver in ("gram", "svd"):
        got = ra.get("flag", m=m, init="data", lam=lam, solver=solver)(torch.from_numpy(X))
        assert rel(got, want) < 1e-6, solver
        via_init = ra.get("flag", init=torch.from_numpy(Y0), lam=lam, solver=solver)(torch.from_numpy(X))
        assert rel(via_init, want) < 1e-6, solver


def test_data_init_lies_within_the_spread_of_random_seeds():
    """A random init in high dimension is nearly orthogonal to the inputs (v_i ~ m/d):
    init='data' differs from it about as much as two seeds differ from each other."""
    X = torch.from_numpy(inputs(7, 40000, seed=7))
    data = ra.get("flag", init="data", iters=3)(X)
    seed1 = ra.get("flag", init="random", iters=3, seed=1)(X)
    seed2 = ra.get("flag", init="random", iters=3, seed=2)(X)
    spread = rel(seed1, seed2)
    assert 0 < spread < 1e-4
    assert rel(data, seed1) < 3 * spread and rel(data, seed2) < 3 * spread


@pytest.mark.parametrize("lam", [0.0, 40.0])
@pytest.mark.parametrize("copies", [2, 4])
def test_rank_deficient_inputs(lam, copies):
    """Positive multiples of one input make rank(K) < m: the SVD's arbitrary null vectors
    do not change the aggregate, and neither does the Gram form's dropping them."""
    rng = np.random.default_rng(8)
    p, d = 6, 40
    X = rng.normal(size=(p, d))
    X[1:copies + 1] = X[0] * np.array([2.0, 0.5, 3.0, 0.25])[:copies, None]
    m = 4
    Y0 = orthonormal(d, m, seed=9)
    for output in ("reference", "raw"):
        want, err = numpy_reference(X, Y0, m, lam=lam, output=output)
        for solver in ("gram", "svd"):
            rule = ra.get("flag", m=m, lam=lam, init=torch.from_numpy(Y0), output=output, solver=solver)
            got = rule(torch.from_numpy(X))
            assert rel(got, want) < 1e-6, (output, solver)
        data = ra.get("flag", m=m, lam=lam, init="data", output=output)
        assert rel(data(torch.from_numpy(X)), ra.get("flag", m=m, lam=lam, init="data", output=output,
                                                     solver="svd")(torch.from_numpy(X))) < 1e-6


def test_float32_close_to_float64_reference():
    X = inputs(9, 3000, seed=10)
    Y0 = orthonormal(3000, 5, seed=11)
    want, _ = numpy_reference(X, Y0, 5, lam=40.0)
    got = ra.get("flag", lam=40.0, init=torch.from_numpy(Y0).float())(torch.from_numpy(X).float())
    assert got.dtype == torch.float32
    assert rel(got, want) < 1e-4


def test_coefficients_reproduce_the_output():
    X = torch.from_numpy(inputs(8, 200, seed=12))
    rule = ra.get("flag", lam=5.0)
    out = rule(X)
    assert torch.allclose(rule.last["coefficients"] @ X, out, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ stopping rule ------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("lam", [0.0, 40.0])
def test_objective_never_increases(seed, lam):
    X = torch.from_numpy(inputs(9, 80, seed=seed))
    X[: 2] = torch.rand(2, 80, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    rule = ra.get("flag", lam=lam, iters=8, seed=seed)
    rule(X)
    obj = rule.last["objective"]
    assert len(obj) == rule.last["iterations"] + 1 >= 2
    assert all(b < a for a, b in zip(obj, obj[1:]))


def _partly_converged_init(X, m, k):
    U = torch.from_numpy(X / np.linalg.norm(X, axis=1, keepdims=True))
    Y, _, _ = flag_solver.svd_solve(U, torch.from_numpy(orthonormal(X.shape[1], m, 13)), m, 0.0, 1e-7, k, 1e-10)
    return Y


@pytest.mark.parametrize("solver", ["gram", "svd"])
def test_an_iteration_that_raises_the_objective_is_undone(solver):
    """With a large eps the weights flatten and the step leaves a good init: undone, the init is kept."""
    X = np.random.default_rng(14).normal(size=(7, 40))
    X[:4] += 2.0 * np.random.default_rng(15).normal(size=40)
    Y = _partly_converged_init(X, 4, 2)
    want, err = numpy_reference(X, Y.numpy(), 4, eps=1.0, iters=3)
    rule = ra.get("flag", init=Y, eps=1.0, iters=3, solver=solver)
    got = rule(torch.from_numpy(X))
    assert rule.last["undone"] and rule.last["iterations"] == 0 and len(err) == 1
    assert rel(got, want) < 1e-9
    # the init's own projection: (1/m) Y0 Y0^T sum_i u_i
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    assert rel(got, Y.numpy() @ (Y.numpy().T @ U.sum(axis=0)) / 4) < 1e-9


@pytest.mark.parametrize("solver", ["gram", "svd"])
def test_undone_after_accepted_iterations(solver):
    """Here the third iteration raises E by about 2.6e-6 (far above rounding): it is undone."""
    X = inputs(7, 40, seed=0)
    Y0 = orthonormal(40, 4, seed=100)
    want, err = numpy_reference(X, Y0, 4, lam=40.0, eps=3.0, iters=8)
    rule = ra.get("flag", init=torch.from_numpy(Y0), lam=40.0, eps=3.0, iters=8, solver=solver)
    got = rule(torch.from_numpy(X))
    assert rule.last["undone"] and rule.last["iterations"] == len(err) - 1 == 2
    assert rel(got, want) < 1e-6


def test_no_iteration_when_the_objective_is_already_below_tol():
    # inputs along coordinate axes and Y0 spanning exactly those axes: v_i = 1 with no rounding,
    # so E(Y0) = 0 (a QR-based Y0 leaves v_i = 1 - 1 ulp, i.e. E ~ 1e-8 > tol, on some CPUs)
    X = torch.zeros(4, 30, dtype=torch.float64)
    X[torch.arange(4), torch.tensor([3, 7, 11, 20])] = torch.tensor([2.0, -0.5, 3.0, 1.25], dtype=torch.float64)
    Y0 = torch.zeros(30, 4, dtype=torch.float64)
    Y0[torch.tensor([3, 7, 11, 20]), torch.arange(4)] = 1.0
    rule = ra.get("flag", init=Y0, m=4)
    out = rule(X)
    assert rule.last["iterations"] == 0 and not rule.last["undone"]
    assert rule.last["objective"][0] < 1e-6
    U = X / X.norm(dim=1, keepdim=True)
    assert rel(out, U.sum(0) / 4) < 1e-9


# ------------------------------------------------------------------ invariances --------------


@pytest.mark.parametrize("lam", [0.0, 40.0])
@pytest.mark.parametrize("init", ["random", "data"])
def test_permutation_invariance(lam, init):
    X = torch.from_numpy(inputs(9, 120, seed=17))
    perm = torch.from_numpy(np.random.default_rng(18).permutation(9))
    a, b = ra.get("flag", lam=lam, init=init), ra.get("flag", lam=lam, init=init)
    out_a, out_b = a(X), b(X[perm])
    assert rel(out_b, out_a) < 1e-8
    assert torch.allclose(b.last["v"], a.last["v"][perm], atol=1e-9)


@pytest.mark.parametrize("lam", [0.0, 40.0])
def test_positive_scaling_leaves_reference_output_unchanged(lam):
    X = torch.from_numpy(inputs(9, 120, seed=19))
    scale = torch.tensor([1e-3, 5.0, 1.0, 0.2, 1e4, 7.0, 1.0, 3.0, 0.01], dtype=torch.float64)
    a = ra.get("flag", lam=lam)(X)
    b = ra.get("flag", lam=lam)(X * scale[:, None])
    assert rel(b, a) < 1e-10
    pa = ra.get("flag", lam=lam, output="raw")(X)
    pb = ra.get("flag", lam=lam, output="raw")(X * scale[:, None])
    assert rel(pb, pa) > 1e-2  # the raw output (the paper's formula) is on raw gradients


# ------------------------------------------------------------------ the paper's attack -------


def test_random_uniform_attack():
    """Almasi et al.'s main fault: f of 15 workers send U[0, 1]^d vectors."""
    gen = torch.Generator().manual_seed(20)
    p, f, d = 15, 3, 4000
    basis = torch.randn(3, d, generator=gen)
    direction = torch.randn(d, generator=gen)
    honest = direction + 0.4 * torch.randn(p - f, 3, generator=gen) @ basis / math.sqrt(3) \
        + 0.1 * torch.randn(p - f, d, generator=gen)
    honest *= 0.01  # gradient-sized
    X = torch.cat([honest, torch.rand(f, d, generator=gen)])
    target = honest.mean(0)
    cos = torch.nn.functional.cosine_similarity
    rule = ra.get("fa", f=f)
    out = rule(X)
    assert float(cos(out, target, dim=0)) > 0.95
    assert float(cos(X.mean(0), target, dim=0)) < 0.1
    # each input counts as a unit vector: the faulty ones weigh no more than honest ones
    c = rule.last["coefficients"] * X.norm(dim=1).double()
    assert float(c[p - f:].abs().max()) < 2 * float(c[: p - f].abs().mean())
