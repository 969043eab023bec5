"""hypothesis properties: permutation invariance, translation equivariance, bounded influence.

Distance-based rules get Gaussian rows from a drawn seed (continuous values, so no two
Krum scores or neighbour distances tie: with ties Krum-family rules pick by index, which
is order-dependent by design); coordinate-wise rules also get drawn small integers (many
ties, which they must handle order-independently).
"""

from __future__ import annotations

import bruteforce as bf
import numpy as np
import pytest
from cases import ORDER_DEPENDENT, build, gaussian
from hypothesis import given, settings
from hypothesis import strategies as st

import robustagg as ra

FAST = settings(max_examples=15, deadline=None, derandomize=True)
COORDINATE = ["mean", "median", "trimmed-mean", "meamed"]
# rules whose output is unchanged by reordering the inputs (pre-aggregators: reordered outputs)
INVARIANT = [name for name in ra.available() if name not in ORDER_DEPENDENT]


def _no_structural_ties(name, f):
    """The smallest n at which rule ``name`` has no tie built in for every input.

    With a single neighbour, Krum's two closest inputs always tie (each is the other's nearest)
    and the lower index wins: order-dependent by definition. Krum and Multi-Krum have
    n - f - 2 >= 2 neighbours for n >= f + 4; Bulyan's last picks score with max(r - f - 2, 1)
    neighbours for r down to 2f + 1, which is >= 2 only for f >= 3."""
    if name in ("krum", "multi-krum"):
        return f + 4
    return 0


@st.composite
def instance(draw, name, untied=False):
    """(X, f, permutation) for rule ``name``, n from the smallest its bound allows.

    ``untied``: only (n, f) without the Krum family's built-in ties."""
    f = draw(st.integers(3, 3) if untied and name == "bulyan" else st.integers(0, 3))
    n_min = build(name, f).min_inputs()
    if untied:
        n_min = max(n_min, _no_structural_ties(name, f))
    n = draw(st.integers(n_min, n_min + 4))
    d = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    X = gaussian(n, d, seed, scale=draw(st.sampled_from([1e-3, 1.0, 1e3])))
    perm = draw(st.permutations(range(n)))
    return X, f, np.array(perm)


def _assert_close(a, b, scale):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9 * scale)


@pytest.mark.parametrize("name", INVARIANT)
@FAST
@given(data=st.data())
def test_permutation_invariance(name, data):
    X, f, perm = data.draw(instance(name, untied=True))
    rule, again = build(name, f), build(name, f)
    out, out_perm = rule(X), again(X[perm])
    scale = np.abs(X).max()
    if name == "geometric-median":  # both certified within tol of the minimum: compare objectives
        a, b = bf.gm_objective(X, out), bf.gm_objective(X, out_perm)
        assert abs(a - b) <= 1e-6 * max(a, b) + 1e-12 * scale
    elif isinstance(rule, ra.PreAggregator):  # a map from rows to rows: the rows follow
        _assert_close(out[perm], out_perm, scale)
    else:
        _assert_close(out, out_perm, scale)


@pytest.mark.parametrize("name", COORDINATE)
@FAST
@given(
    rows=st.integers(1, 9).flatmap(
        lambda n: st.lists(st.lists(st.integers(-3, 3), min_size=4, max_size=4), min_size=n, max_size=n)
    ),
    data=st.data(),
)
def test_coordinate_rules_ignore_order_even_with_ties(name, rows, data):
    X = np.array(rows, dtype=np.float64)
    f = data.draw(st.integers(0, (X.shape[0] - 1) // 2))
    perm = np.array(data.draw(st.permutations(range(X.shape[0]))))
    np.testing.assert_array_equal(ra.get(name, f=f)(X), ra.get(name, f=f)(X[perm]))


@pytest.mark.parametrize("name", ["pipeline nnm>trimmed-mean", "pipeline arc>krum"])
@FAST
@given(f=st.integers(0, 2), extra=st.integers(0, 3), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_pipelines_are_permutation_invariant(name, f, extra, seed, data):
    n = max(2 * f + 3, f + 4) + extra  # no built-in Krum tie
    X = gaussian(n, 3, seed)
    perm = np.array(data.draw(st.permutations(range(n))))
    first, last = name.split()[1].split(">")
    make = lambda: ra.pipeline(ra.get(first, f=f), ra.get(last, f=f))  # noqa: E731
    _assert_close(make()(X), make()(X[perm]), np.abs(X).max())


def test_krum_with_one_neighbour_depends_on_the_order():
    """n = 3, f = 0: one neighbour, the two closest inputs tie and the lower index wins."""
    X = np.array([[0.0], [1.0], [5.0]])
    assert ra.get("krum")(X)[0] == 0.0
    assert ra.get("krum")(X[[1, 0, 2]])[0] == 1.0


TRANSLATE = ["mean", "median", "trimmed-mean", "meamed", "krum", "multi-krum", "bulyan", "nnm"]


@pytest.mark.parametrize("name", TRANSLATE)
@FAST
@given(data=st.data(), shift=st.sampled_from([-50.0, 0.5, 1e3]))
def test_translation_equivariance(name, data, shift):
    """rule(x_i + c) = rule(x_i) + c. Not for clipping, ARC, centered clipping (they clip
    around the origin / the previous output) nor bucketing (random)."""
    X, f, _ = data.draw(instance(name, untied=True))  # rounding must not decide a built-in tie
    c = shift * np.linspace(-1.0, 1.0, X.shape[1])
    out, out_shifted = build(name, f)(X), build(name, f)(X + c)
    _assert_close(out + c, out_shifted, np.abs(X).max() + np.abs(c).max())


@FAST
@given(data=st.data(), shift=st.sampled_from([-50.0, 3.0, 1e3]))
def test_geometric_median_translation_equivariance(data, shift):
    """The minimiser moves with the inputs; both outputs are near-optimal for their inputs, so
    the objectives (not the points, which tol only pins to about sqrt(tol)) agree."""
    X, f, _ = data.draw(instance("geometric-median"))
    c = shift * np.linspace(-1.0, 1.0, X.shape[1])
    rule = ra.get("geometric-median", f=f, tol=1e-9)
    a = bf.gm_objective(X, rule(X))
    b = bf.gm_objective(X, rule(X + c) - c)
    assert abs(a - b) <= 1e-7 * max(a, b) + 1e-9 * np.abs(X).max()


# -- bounded influence -------------------------------------------------------------------------
#
# n - f honest rows (scale ~1) and f Byzantine rows of norm 1e6. What holds, and when:
# * median, trimmed mean (n > 2f): every coordinate of the output lies in the honest values'
#   range, whatever the Byzantine rows are;
# * meamed (n > 2f), bulyan (n >= 4f + 3): in the honest range when each Byzantine coordinate is
#   far from it (below: +-1e6/sqrt(d) in every coordinate); in general only in the range widened
#   by its width w on both sides (there is a window of n - f values, resp. beta, inside the
#   honest range, so the chosen one costs at most w) - test_mean_around_median_can_leave_*;
# * krum, multi-krum (n > 2f + 2): Byzantine rows this far have scores ~1e12 against at most
#   (n - f - 2) diam^2 for honest ones, so only honest rows are picked: krum returns an honest
#   row (within diam of the honest mean) and multi-krum (m = n - f) the honest mean;
# * nnm then trimmed mean (n > 2f): every honest row mixes exactly the honest rows, so n - f
#   rows equal the honest mean, and trimming f per side leaves only them;
# * geometric median (n > 2f): ||z - c|| <= r n / (n - 2f), c the honest mean, r the largest
#   honest distance to c (project the optimality condition on z - c). Not "within diam" in
#   general: n - f honest points on a circle and f far outliers on its axis push z to
#   r f / sqrt(2f + 1) from c, beyond the diameter 2r for f >= 10;
# * centered clipping from v = 0, iters = 1, tau >= every honest norm (n > 2f): honest rows are
#   not clipped, so ||v - c|| = ||(f/n)(0 - c) + (1/n) sum_b clip(b)|| <= (f/n)(||c|| + tau).


@st.composite
def attacked(draw, bound, far_signs=False):
    f = draw(st.integers(1, 3))
    n_min = {"n > 2f": 2 * f + 1, "n > 2f + 2": 2 * f + 3, "n >= 4f + 3": 4 * f + 3}[bound]
    n = draw(st.integers(n_min, n_min + 3))
    d = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    honest = gaussian(n - f, d, seed, offset=draw(st.sampled_from([0.0, 5.0])))
    rng = np.random.default_rng(seed + 1)
    if far_signs:
        byz = rng.choice([-1.0, 1.0], size=(f, d)) * 1e6 / np.sqrt(d)
    else:
        byz = rng.standard_normal((f, d))
        byz *= 1e6 / np.linalg.norm(byz, axis=1, keepdims=True)
        if draw(st.booleans()):
            byz[:] = byz[0]  # colluding: one point, sent f times
    X = np.vstack([honest, byz])
    perm = np.array(draw(st.permutations(range(n))))  # Byzantine rows anywhere
    return X[perm], honest, f


def _in_box(out, honest, widen=0.0):
    lo, hi = honest.min(axis=0), honest.max(axis=0)
    w = widen * (hi - lo)
    slack = 1e-9 * (1 + np.abs(honest).max())
    assert np.all(out >= lo - w - slack) and np.all(out <= hi + w + slack)


@FAST
@given(case=attacked("n > 2f"))
def test_median_and_trimmed_mean_stay_in_the_honest_box(case):
    X, honest, f = case
    _in_box(ra.get("median", f=f)(X), honest)
    _in_box(ra.get("trimmed-mean", f=f)(X), honest)
    _in_box(ra.get("meamed", f=f)(X), honest, widen=1.0)


@FAST
@given(case=attacked("n > 2f", far_signs=True))
def test_meamed_stays_in_the_honest_box_when_byzantine_values_are_far(case):
    X, honest, f = case
    _in_box(ra.get("meamed", f=f)(X), honest)


@FAST
@given(case=attacked("n >= 4f + 3", far_signs=True))
def test_bulyan_stays_in_the_honest_box(case):
    X, honest, f = case
    _in_box(ra.get("bulyan", f=f)(X), honest)


@FAST
@given(f=st.integers(1, 2), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_mean_around_median_rules_stay_in_the_widened_box_whatever_the_attack(f, seed, data):
    """Byzantine values anywhere, also just outside the honest range."""
    n = 4 * f + 3
    honest = gaussian(n - f, 3, seed)
    lo, hi = honest.min(axis=0), honest.max(axis=0)
    offsets = data.draw(st.lists(st.floats(-2.0, 2.0), min_size=3 * f, max_size=3 * f))
    byz = hi + np.reshape(offsets, (f, 3)) * (hi - lo)
    X = np.vstack([honest, byz])
    _in_box(ra.get("meamed", f=f)(X), honest, widen=1.0)
    _in_box(ra.get("bulyan", f=f)(X), honest, widen=1.0)


def test_mean_around_median_can_leave_the_honest_box():
    """Why the guarantee above is the widened box: honest 0, 0, 10, Byzantine 11, 11 (n = 5,
    f = 2): the window of 3 values closest to the median 10 is [10, 11, 11]."""
    X = np.array([[0.0], [0.0], [10.0], [11.0], [11.0]])
    out = ra.get("meamed", f=2)(X)
    np.testing.assert_allclose(out, bf.meamed(X, 2))
    assert out[0] > 10.0


@FAST
@given(case=attacked("n > 2f + 2"))
def test_krum_family_picks_only_honest_rows(case):
    X, honest, f = case
    c = honest.mean(axis=0)
    diam = max(np.linalg.norm(a - b) for a in honest for b in honest)
    krum = ra.get("krum", f=f)
    out = krum(X)
    assert np.linalg.norm(X[krum.last["selected"][0]]) < 1e3  # an honest row
    assert np.linalg.norm(out - c) <= diam + 1e-9
    np.testing.assert_allclose(ra.get("multi-krum", f=f)(X), c, atol=1e-9)
    assert np.linalg.norm(ra.get("multi-krum", f=f, m=2)(X) - c) <= diam + 1e-9


@FAST
@given(case=attacked("n > 2f"))
def test_nnm_then_trimmed_mean_returns_the_honest_mean(case):
    X, honest, f = case
    out = ra.pipeline(ra.get("nnm", f=f), ra.get("trimmed-mean", f=f))(X)
    np.testing.assert_allclose(out, honest.mean(axis=0), atol=1e-9)


@FAST
@given(case=attacked("n > 2f"))
def test_geometric_median_influence_bound(case):
    X, honest, f = case
    n = X.shape[0]
    c = honest.mean(axis=0)
    r = np.linalg.norm(honest - c, axis=1).max()
    # tol is relative to an objective ~f * 1e6 here, so ask for more digits than the default
    out = ra.get("geometric-median", f=f, tol=1e-13)(X)
    assert np.linalg.norm(out - c) <= r * n / (n - 2 * f) + 1e-6


@FAST
@given(case=attacked("n > 2f"))
def test_centered_clipping_influence_bound(case):
    X, honest, f = case
    n = X.shape[0]
    c = honest.mean(axis=0)
    tau = np.linalg.norm(honest, axis=1).max()
    out = ra.get("centered-clipping", f=f, tau=tau)(X)
    assert np.linalg.norm(out - c) <= (f / n) * (np.linalg.norm(c) + tau) * (1 + 1e-9) + 1e-9


def test_geometric_median_can_leave_the_honest_diameter():
    """Why the bound above is r n / (n - 2f), not the diameter: 11 honest points on a unit
    circle, 10 outliers far on its axis; the optimum sits at 10 / sqrt(21) ~ 2.18 from the
    honest mean (the 11 unit vectors to the circle balance the 10 to the outliers)."""
    f = 10
    angles = 2 * np.pi * np.arange(f + 1) / (f + 1)
    honest = np.stack([np.zeros(f + 1), np.cos(angles), np.sin(angles)], axis=1)
    X = np.vstack([honest, np.tile([1e6, 0.0, 0.0], (f, 1))])
    z = ra.get("geometric-median", f=f, tol=1e-14)(X)
    diam = max(np.linalg.norm(a - b) for a in honest for b in honest)
    # tol is relative to an objective ~1e7: the point is pinned to ~sqrt(1e-7), not further
    np.testing.assert_allclose(z, [f / np.sqrt(2 * f + 1), 0.0, 0.0], atol=1e-3)
    assert np.linalg.norm(z) > diam
