"""Certificates checked by exhaustive search over every poisoning attack on tiny ensembles.

Threat model. One poisoned training sample changes one partition (DPA) or one
bucket (FA); the attacker may then make each base model trained on it output
*any* scores. An attack of size r therefore picks r partitions (DPA: r models)
or r buckets (FA: the union of the d models each feeds) and replaces those
models' scores arbitrarily.

Why a finite set of replacement scores is complete. Plurality and the run-off
election read a base model's scores only through (i) its vote, the argmax with
ties to the smaller class index, and (ii) the strict comparisons
[s[a] > s[b]] for ordered pairs of classes. Both are functions of the weak
ordering the score vector induces on the classes (which classes tie, and the
order of the tied blocks), and every weak ordering is produced by the integer
vector s[c] = -(index of c's block). So the weak orderings of the C classes
(13 for C = 3, 75 for C = 4) realise every behaviour of every real-valued
replacement. Moreover the election depends on the ensemble only through the
sums over models of these indicators (N1 and the N2 matrix), so replacing m
models amounts to adding one of the *reachable sums* of m patterns, which we
enumerate with duplicates removed. Replacing a model by its own weak ordering
is allowed, so attacks of size exactly r cover every smaller attack.

The search uses its own small implementation of the two vote rules (below),
not the library's.
"""

import itertools
from functools import lru_cache

import numpy as np
import pytest

from robustagg import election as el


def weak_orders(C):
    """Every weak ordering of C classes as an integer score vector (block 0 on top)."""
    out = []
    for levels in itertools.product(range(C), repeat=C):
        if set(levels) == set(range(max(levels) + 1)):
            out.append([-lv for lv in levels])
    return np.array(out, dtype=float)


def indicators(S):
    """(M, C) scores -> (M, C + C*C) ints: one-hot vote, then [s[a] > s[b]] for all (a, b)."""
    M, C = S.shape
    vote = np.zeros((M, C), np.int64)
    vote[np.arange(M), S.argmax(axis=1)] = 1  # first maximum: ties to the smaller index
    gt = (S[:, :, None] > S[:, None, :]).reshape(M, C * C)
    return np.concatenate([vote, gt.astype(np.int64)], axis=1)


def predict(T, C, K, run_off):
    """Plurality / run-off winners from summed indicators T (R, C + C*C)."""
    rows = np.arange(T.shape[0])
    N1 = T[:, :C]
    m1 = N1.argmax(axis=1)
    masked = N1.copy()
    masked[rows, m1] = -1
    m2 = masked.argmax(axis=1)
    if not run_off:
        return m1
    elec = 2 * T[rows, C + m1 * C + m2] - K
    return np.where((elec > 0) | ((elec == 0) & (m1 < m2)), m1, m2)


@lru_cache(maxsize=None)
def reachable(C, m):
    """Distinct sums of the indicators of m replacement models."""
    if m == 0:
        return np.zeros((1, C + C * C), np.int64)
    P = indicators(weak_orders(C))
    prev = reachable(C, m - 1)
    return np.unique((prev[:, None, :] + P[None, :, :]).reshape(-1, P.shape[1]), axis=0)


def attack_flips(S, groups, r, run_off):
    """Can poisoning some r of the groups (lists of model indices) change the prediction?"""
    K, C = S.shape
    ind = indicators(S)
    total = ind.sum(axis=0)
    orig = predict(total[None], C, K, run_off)[0]
    seen = set()
    for chosen in itertools.combinations(range(len(groups)), r):
        models = tuple(sorted(set().union(*(groups[g] for g in chosen))))
        if models in seen:
            continue
        seen.add(models)
        base = total - ind[list(models)].sum(axis=0)
        if (predict(base + reachable(C, len(models)), C, K, run_off) != orig).any():
            return True
    return False


def ensemble(seed, K, N, C):
    """Scores with a favourite class per point (so certificates are not all 0), with or without ties."""
    rng = np.random.default_rng(seed)
    fav = rng.integers(0, C, N)
    if seed % 2:
        s = rng.integers(0, 3, (K, N, C)).astype(float)
        s[:, np.arange(N), fav] += rng.integers(0, 3 + seed % 4, (K, N))
    else:
        s = rng.normal(size=(K, N, C))
        s[:, np.arange(N), fav] += rng.uniform(0, 2 + seed % 5, (K, N))
    return s


DPA_CASES = [(seed, 3 + seed % 5, 4 if seed % 3 == 0 and 3 + seed % 5 <= 5 else 3) for seed in range(20)]


@pytest.mark.parametrize("seed,K,C", DPA_CASES)
def test_dpa_certificates_survive_every_attack(seed, K, C):
    s = ensemble(seed, K, 6, C)
    groups = [[j] for j in range(K)]  # one poisoned sample reaches one base model
    for method, roe in (("dpa", False), ("dpa+roe", True)):
        pred = el.run_off(s) if roe else el.plurality(s)
        certs = el.certify(s, pred, method)
        for i, cert in enumerate(certs):
            assert 0 <= cert < K, (method, cert)
            assert not attack_flips(s[:, i], groups, int(cert), roe), (method, i, cert)
            if not roe:  # plurality: the certificate is tight
                assert attack_flips(s[:, i], groups, int(cert) + 1, roe), (i, cert)


FA_CASES = [(2, 2, 0), (3, 2, 1), (2, 3, 2), (1, 3, 3), (4, 2, 4), (5, 1, 5), (2, 2, 6), (3, 2, 7), (4, 2, 8),
            (3, 2, 9)]


@pytest.mark.parametrize("k,d,seed", FA_CASES)
def test_fa_certificates_survive_every_attack(k, d, seed):
    K, C = k * d, 3
    s = ensemble(100 + seed, K, 6, C)
    shifts = el.fa_shifts(k, d, seed=seed)
    part = el.fa_partition(np.arange(K), k, d, seed=seed)
    groups = [list(ms) for ms in part.bucket_models]  # bucket b feeds models (b + s_j) % kd
    assert sorted(map(sorted, groups)) == sorted(sorted((b + sh) % K for sh in shifts) for b in range(K))
    for method, roe in (("fa", False), ("fa+roe", True)):
        pred = el.run_off(s) if roe else el.plurality(s)
        certs = el.certify(s, pred, method, k=k, d=d, shifts=shifts)
        for i, cert in enumerate(certs):
            assert 0 <= cert < K, (method, cert)
            assert not attack_flips(s[:, i], groups, int(cert), roe), (method, i, cert)


def test_fa_with_one_model_per_bucket_is_tight_like_dpa():
    """d = 1, shift 0: FA is DPA, and its greedy certificate is tight too."""
    K, C = 5, 3
    s = ensemble(7, K, 4, C)
    pred = el.plurality(s)
    certs = el.certify(s, pred, "fa", k=K, d=1, shifts=[0])
    assert (certs == el.certify(s, pred, "dpa")).all()
    groups = [[j] for j in range(K)]
    for i, cert in enumerate(certs):
        assert attack_flips(s[:, i], groups, int(cert) + 1, False)


def test_search_finds_known_attacks():
    """The search is not vacuous: a 3-2 plurality split flips with one poisoned model."""
    s = np.zeros((5, 3))
    s[:3, 0] = 1
    s[3:, 1] = 1
    groups = [[j] for j in range(5)]
    assert not attack_flips(s, groups, 0, False)
    assert attack_flips(s, groups, 1, False)
    assert len(weak_orders(3)) == 13 and len(weak_orders(4)) == 75


def test_search_is_sharp_enough_to_catch_an_overstated_certificate():
    """Most ROE / FA certificates here are tight: certificate + 1 poisons do flip them.

    So a certificate overstated by one would fail the soundness tests above on
    most points; this guards against the search silently passing everything.
    """
    tight = total = 0
    for seed, K, C in DPA_CASES[:8]:
        s = ensemble(seed, K, 6, C)
        pred = el.run_off(s)
        for i, cert in enumerate(el.certify(s, pred, "dpa+roe")):
            total += 1
            tight += attack_flips(s[:, i], [[j] for j in range(K)], int(cert) + 1, True)
    for k, d, seed in FA_CASES[:4]:
        s = ensemble(100 + seed, k * d, 6, 3)
        groups = [list(ms) for ms in el.fa_partition(np.arange(k * d), k, d, seed=seed).bucket_models]
        pred = el.run_off(s)
        for i, cert in enumerate(el.certify(s, pred, "fa+roe", k=k, d=d, shifts=el.fa_shifts(k, d, seed=seed))):
            total += 1
            tight += attack_flips(s[:, i], groups, int(cert) + 1, True)
    assert tight >= 0.8 * total, (tight, total)
