"""Votes and certificates of robustagg.election: tie rules, the reference formulas, properties."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import election_reference as ref
from robustagg import election as el
from robustagg.election import _finite, certificates


# ---------------------------------------------------------------- votes and tie rules

def test_model_argmax_and_round_one_ties_go_to_the_smaller_index():
    s = np.zeros((4, 1, 3))
    s[0, 0] = [0, 1, 1]  # tie between 1 and 2 -> votes 1
    s[1, 0] = [0, 0, 1]  # votes 2
    s[2, 0] = [1, 1, 1]  # votes 0
    s[3, 0] = [0, 0, 1]  # votes 2
    assert el.vote_counts(s).tolist() == [[1, 1, 2]]
    assert el.plurality(s).tolist() == [2]
    s[3, 0] = [0, 1, 0]  # now 0:1, 1:2, 2:1 -> 1
    assert el.plurality(s).tolist() == [1]
    s[0, 0] = [1, 0, 0]  # 0:2, 1:1, 2:1 ... and a 2-2 tie below
    s[1, 0] = [0, 1, 0]  # 0:2, 1:2 -> smaller index 0
    assert el.plurality(s).tolist() == [0]


def test_run_off_round_two_is_strict_and_exact_ties_go_to_the_smaller_index():
    # round 1: class 2 has 2 votes, class 1 has 1, class 0 has 1 -> m1 = 2, m2 = 0 (smaller index)
    s = np.array([[0., 0, 5], [0, 0, 5], [0, 5, 0], [5, 0, 0]])[:, None, :]
    assert el.plurality(s).tolist() == [2]
    # round 2 between 2 and 0: N2(2 > 0) = 2 of K = 4 -> exact tie -> smaller index 0 (the runner-up)
    assert el.run_off(s).tolist() == [0]
    # the third model now ranks 2 above 0: N2 = 3 -> 2 wins
    s[2, 0] = [0, 5, 1]
    assert el.run_off(s).tolist() == [2]
    # equal scores never count as "above": N2(2 > 0) = 2 again -> tie -> 0
    s[2, 0] = [1, 5, 1]
    assert el.run_off(s).tolist() == [0]


def test_run_off_can_overturn_plurality():
    # 3 models vote 0, 2 vote 1, 2 vote 2; every model voting 1 or 2 ranks 1 above 0
    s = np.array([[3., 2, 0]] * 3 + [[0., 3, 2]] * 2 + [[0., 2, 3]] * 2)[:, None, :]
    assert el.plurality(s).tolist() == [0]
    assert el.run_off(s).tolist() == [1]  # N2(0 > 1) = 3 of 7


def test_nan_scores_are_rejected_and_shapes_checked():
    s = np.random.default_rng(0).normal(size=(3, 2, 4))
    s[1, 1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        el.run_off(s)
    with pytest.raises(ValueError, match="models, test points, classes"):
        el.plurality(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="two classes"):
        el.plurality(np.zeros((3, 4, 1)))


def test_combine_scores_sums_seeded_copies():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 4, 5, 3))
    assert np.allclose(el.combine_scores([a, b]), a + b)
    assert np.allclose(el.combine_scores(np.stack([a, b]), reduce="mean"), (a + b) / 2)
    t = el.combine_scores([torch.as_tensor(a), torch.as_tensor(b)])
    assert isinstance(t, torch.Tensor) and torch.allclose(t, torch.as_tensor(a + b))
    assert np.array_equal(el.combine_scores([a]), a)
    with pytest.raises(ValueError):
        el.combine_scores([a, b[:2]])
    with pytest.raises(ValueError):
        el.combine_scores([a], reduce="max")


# ---------------------------------------------------------------- the reference formulas

def test_docstring_example_and_a_hand_computed_dpa_certificate():
    s = np.zeros((5, 1, 3))
    s[:4, 0, 2] = 1
    assert el.certify(s, [2], "dpa").tolist() == [1]
    assert el.certify(s, [0], "dpa").tolist() == [-1]


def test_dp_table_matches_its_recursion_and_a_closed_form():
    D = el.dp_table(60)
    i, j = np.meshgrid(np.arange(60), np.arange(60), indexing="ij")
    closed = np.maximum(np.maximum((i + 1) // 2, (j + 1) // 2), (i + j + 2) // 3)
    assert np.array_equal(D, closed)
    for a in range(40):
        for b in range(40):
            assert D[a, b] == ref.dp(a, b)
    assert np.array_equal(D, D.T)
    assert np.array_equal(el.dp_table(1300)[:60, :60], D)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 9), max_size=12), st.integers(-3, 60))
def test_need_from_histogram_equals_the_sorted_greedy(reducers, gap):
    hist = np.bincount(np.array(reducers, dtype=np.int64), minlength=10)
    got = int(_finite.need_from_hist(np.array(gap), hist))
    want = ref.greedy(gap, reducers)
    assert got == (want if want < 10 ** 9 else _finite.INF)


scores_st = st.tuples(
    st.integers(1, 9),      # K (DPA) or k
    st.integers(1, 4),      # d (FA)
    st.integers(1, 6),      # N
    st.integers(2, 5),      # C
    st.integers(0, 2 ** 31),
    st.booleans(),          # integer scores (many ties) or Gaussian
    st.booleans(),          # labels = prediction or random
)


def _draw(params, fa):
    k, d, N, C, seed, ties, predicted = params
    K = k * d if fa else k
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 3, (K, N, C)).astype(float) if ties else rng.normal(size=(K, N, C))
    s[:, :, rng.integers(0, C)] += rng.uniform(0, 2)
    return s, rng, predicted


@settings(max_examples=80, deadline=None)
@given(scores_st)
def test_dpa_certificates_equal_the_reference_loops(params):
    s, rng, predicted = _draw(params, fa=False)
    for method in ("dpa", "dpa+roe"):
        pred = el.run_off(s) if method == "dpa+roe" else el.plurality(s)
        labels = pred if predicted else rng.integers(0, s.shape[2], s.shape[1])
        assert el.certify(s, labels, method).tolist() == ref.certify(s, labels, method).tolist()


@settings(max_examples=80, deadline=None)
@given(scores_st, st.integers(0, 10 ** 6))
def test_fa_certificates_equal_the_reference_loops(params, shift_seed):
    s, rng, predicted = _draw(params, fa=True)
    k, d = params[0], params[1]
    shifts = el.fa_shifts(k, d, seed=shift_seed)
    for method in ("fa", "fa+roe"):
        pred = el.run_off(s) if method == "fa+roe" else el.plurality(s)
        labels = pred if predicted else rng.integers(0, s.shape[2], s.shape[1])
        got = el.certify(s, labels, method, k=k, d=d, shifts=shifts)
        assert got.tolist() == ref.certify(s, labels, method, d=d, shifts=shifts).tolist()


def test_large_fa_ensembles_equal_the_reference_loops():
    """Realistic sizes exercise the branch-and-bound pruning (many buckets per point)."""
    rng = np.random.default_rng(3)
    k, d, N, C = 12, 4, 12, 6
    s = rng.normal(size=(k * d, N, C))
    s[:, np.arange(N), rng.integers(0, C, N)] += rng.uniform(0, 3, N)
    for method in ("fa", "fa+roe"):
        labels = el.run_off(s) if method == "fa+roe" else el.plurality(s)
        got = el.certify(s, labels, method, k=k, d=d)
        assert got.tolist() == ref.certify(s, labels, method, d=d, shifts=el.fa_shifts(k, d)).tolist()


# ---------------------------------------------------------------- properties

@settings(max_examples=100, deadline=None)
@given(scores_st)
def test_certificate_range_and_wrong_predictions(params):
    s, rng, _ = _draw(params, fa=False)
    K, N, C = s.shape
    labels = rng.integers(0, C, N)
    for method, pred in (("dpa", el.plurality(s)), ("dpa+roe", el.run_off(s))):
        certs = el.certify(s, labels, method)
        assert ((certs == -1) == (pred != labels)).all()
        assert (certs >= -1).all() and (certs <= K - 1).all()


@settings(max_examples=100, deadline=None)
@given(scores_st)
def test_run_off_agrees_with_plurality_when_the_plurality_winner_wins_round_two(params):
    s, _, _ = _draw(params, fa=False)
    K = s.shape[0]
    counts = el.vote_counts(s)
    m1 = counts.argmax(axis=1)
    masked = counts.copy()
    masked[np.arange(len(m1)), m1] = -1
    m2 = masked.argmax(axis=1)
    pts = np.arange(s.shape[1])
    elec = 2 * (s[:, pts, m1] > s[:, pts, m2]).sum(axis=0) - K
    m1_wins = (elec > 0) | ((elec == 0) & (m1 < m2))
    assert (el.run_off(s)[m1_wins] == el.plurality(s)[m1_wins]).all()
    assert (el.run_off(s)[~m1_wins] == m2[~m1_wins]).all()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 9), st.integers(1, 6), st.integers(0, 2 ** 31))
def test_two_classes_without_ties_roe_equals_dpa(K, N, seed):
    """With C = 2 and no tied scores round 2 repeats round 1: same predictions, same certificates."""
    s = np.random.default_rng(seed).normal(size=(K, N, 2))
    pred = el.plurality(s)
    assert (el.run_off(s) == pred).all()
    assert (el.certify(s, pred, "dpa+roe") == el.certify(s, pred, "dpa")).all()


@settings(max_examples=60, deadline=None)
@given(scores_st)
def test_fa_with_d1_is_dpa_and_its_run_off_certificate_dominates(params):
    """d = 1, shift 0 is DPA. Its bucket greedy sees real votes where DPA+ROE assumes the
    worst (every flip moves a gap by 2, or (2, 1) for pairs), so FA+ROE >= DPA+ROE."""
    s, _, _ = _draw(params, fa=False)
    K = s.shape[0]
    pred = el.plurality(s)
    assert (el.certify(s, pred, "fa", k=K, d=1, shifts=[0]) == el.certify(s, pred, "dpa")).all()
    roe = el.run_off(s)
    assert (el.certify(s, roe, "fa+roe", k=K, d=1, shifts=[0]) >= el.certify(s, roe, "dpa+roe")).all()


@settings(max_examples=60, deadline=None)
@given(scores_st)
def test_certificates_ignore_monotone_transforms_and_model_order(params):
    s, rng, _ = _draw(params, fa=False)
    labels = el.run_off(s)
    perm = rng.permutation(s.shape[0])
    for method in ("dpa", "dpa+roe"):
        c = el.certify(s, labels, method)
        assert (el.certify(np.exp(0.5 * s) + 3, labels, method) == c).all()
        assert (el.certify(s[perm], labels, method) == c).all()


# ---------------------------------------------------------------- API

def test_certified_accuracy():
    certs = np.array([-1, 0, 2, 5])
    assert el.certified_accuracy(certs, 0) == 0.75
    assert el.certified_accuracy(certs, [0, 1, 3, 6]).tolist() == [0.75, 0.5, 0.25, 0.0]


def test_torch_input_and_chunking_give_the_same_certificates(monkeypatch):
    rng = np.random.default_rng(5)
    s = rng.normal(size=(8, 23, 4))
    s[:, :, 1] += 1
    y = el.run_off(s)
    want = {m: el.certify(s, y, m, **kw) for m, kw in
            (("dpa", {}), ("dpa+roe", {}), ("fa", {"k": 4, "d": 2}), ("fa+roe", {"k": 4, "d": 2}))}
    for m, kw in (("dpa", {}), ("dpa+roe", {}), ("fa", {"k": 4, "d": 2}), ("fa+roe", {"k": 4, "d": 2})):
        assert (el.certify(torch.as_tensor(s), torch.as_tensor(y), m, **kw) == want[m]).all()
    monkeypatch.setattr(certificates, "chunk_size", lambda t, elements=0: 3)
    for m, kw in (("dpa", {}), ("dpa+roe", {}), ("fa", {"k": 4, "d": 2}), ("fa+roe", {"k": 4, "d": 2})):
        assert (el.certify(s, y, m, **kw) == want[m]).all()


def test_certify_argument_errors():
    s = np.zeros((6, 2, 3))
    y = [0, 0]
    with pytest.raises(ValueError, match="Available: dpa, dpa\\+roe, fa, fa\\+roe"):
        el.certify(s, y, "median")
    assert sorted(el.METHODS.available()) == ["dpa", "dpa+roe", "fa", "fa+roe"]
    with pytest.raises(ValueError, match="need k and d"):
        el.certify(s, y, "fa")
    with pytest.raises(ValueError, match="k \\* d|6"):
        el.certify(s, y, "fa", k=2, d=2)
    with pytest.raises(ValueError, match="distinct"):
        el.certify(s, y, "fa", k=3, d=2, shifts=[1, 7])
    with pytest.raises(ValueError, match="FA methods only"):
        el.certify(s, y, "dpa", d=2)
    with pytest.raises(ValueError, match="k=5"):
        el.certify(s, y, "dpa", k=5)
    with pytest.raises(ValueError, match="labels"):
        el.certify(s, [0, 0, 0], "dpa")
    assert el.certify(s, y, "DPA+ROE").shape == (2,)


@pytest.mark.parametrize("bad", [3, -1, 99])
def test_labels_outside_the_classes_are_rejected(bad):
    s = np.random.default_rng(0).normal(size=(6, 4, 3))
    y = [0, 1, bad, 2]
    for m, kw in (("dpa", {}), ("dpa+roe", {}), ("fa", {"k": 3, "d": 2}), ("fa+roe", {"k": 3, "d": 2})):
        with pytest.raises(ValueError, match=rf"class indices in \[0, 3\), got {bad} at test point 2"):
            el.certify(s, y, m, **kw)


def test_certified_accuracy_takes_non_negative_integer_radii_and_real_certificates():
    certs = np.array([-1, 0, 2, 5])
    with pytest.raises(ValueError, match="radii must be non-negative integers"):
        el.certified_accuracy(certs, [-1])
    with pytest.raises(ValueError, match="radii must be non-negative integers"):
        el.certified_accuracy(certs, -3)
    for bad in (0.5, [0, 2.5], float("nan"), True, "1"):
        with pytest.raises(TypeError, match="radii must be non-negative integers"):
            el.certified_accuracy(certs, bad)
    assert el.certified_accuracy(certs, 2.0) == 0.5  # an integral float is an integer radius
    with pytest.raises(ValueError, match="certs must be integers >= -1"):
        el.certified_accuracy(np.array([0.5, 1.0]), 0)
    with pytest.raises(ValueError, match="certs must be integers >= -1"):
        el.certified_accuracy([-2, 1], 0)


def test_methods_are_registered_objects_and_a_new_one_needs_no_change_to_certify(monkeypatch):
    rng = np.random.default_rng(3)
    s = rng.normal(size=(6, 30, 3))
    y = el.run_off(s)
    y[:5] = (y[:5] + 1) % 3  # some wrong predictions
    assert el.available_methods() == ["dpa", "dpa+roe", "fa", "fa+roe"]
    fa = el.METHODS.get("fa+roe", k=3, d=2)
    assert isinstance(fa, certificates.FARunOff) and fa.shifts == el.fa_shifts(3, 2)
    assert repr(fa) == f"FARunOff(k=3, d=2, shifts={el.fa_shifts(3, 2)!r})"
    assert np.array_equal(el.certify(s, y, fa), el.certify(s, y, "fa+roe", k=3, d=2))
    with pytest.raises(ValueError, match="parameters of the method object"):
        el.certify(s, y, fa, k=3)
    seen = []

    class Toy(el.Method):  # a run-off method certifying 7 everywhere
        run_off = True

        def chunk(self, r):
            seen.append(r.winner.copy())
            return np.full(r.winner.size, 7)

    monkeypatch.setitem(el.METHODS._items, "toy", Toy)
    certs = el.certify(s, y, "toy")
    right = el.run_off(s) == y
    assert certs.tolist() == np.where(right, 7, -1).tolist()
    assert np.array_equal(np.concatenate(seen), y[right])  # only correctly predicted points reach chunk
    with pytest.raises(TypeError, match="certification method 'dpa' has no parameter 'shift'"):
        el.METHODS.get("dpa", shift=3)
