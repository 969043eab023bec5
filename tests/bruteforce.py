"""Brute-force float64 definitions of every rule, written from issue 2's text (not from the library).

Plain numpy and Python loops over coordinates and pairs: slow, obvious, and the reference
the tests compare the library against. Every function takes an ``(n, d)`` float64 array.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def mean(X, f=0):
    return X.mean(axis=0)


def _median_1d(values):
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def median(X, f=0):
    return np.array([_median_1d(X[:, k]) for k in range(X.shape[1])])


def trimmed_mean(X, f):
    n = X.shape[0]
    return np.array([np.mean(sorted(X[:, k])[f : n - f]) for k in range(X.shape[1])])


def _mean_around_median_1d(values, k):
    """Mean of the window of ``k`` consecutive sorted values closest to the median
    (smallest largest distance to the median; the lower window on ties)."""
    s = sorted(values)
    med = _median_1d(s)
    best_w, best_cost = None, math.inf
    for w in range(len(s) - k + 1):
        cost = max(med - s[w], s[w + k - 1] - med)
        if cost < best_cost:
            best_w, best_cost = w, cost
    return float(np.mean(s[best_w : best_w + k]))


def meamed(X, f):
    k = X.shape[0] - f
    return np.array([_mean_around_median_1d(X[:, c], k) for c in range(X.shape[1])])


def sq_dist_matrix(X):
    n = X.shape[0]
    D = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            D[i, j] = np.sum((X[i] - X[j]) ** 2)
    return D


def krum_scores(X, neighbours):
    D = sq_dist_matrix(X)
    n = X.shape[0]
    return [sum(sorted(D[i, j] for j in range(n) if j != i)[:neighbours]) for i in range(n)]


def krum_index(X, f):
    scores = krum_scores(X, X.shape[0] - f - 2)
    return min(range(len(scores)), key=lambda i: (scores[i], i))


def krum(X, f):
    return X[krum_index(X, f)].copy()


def multi_krum_indices(X, f, m=None):
    n = X.shape[0]
    m = n - f if m is None else m
    scores = krum_scores(X, n - f - 2)
    return sorted(range(n), key=lambda i: (scores[i], i))[:m]


def multi_krum(X, f, m=None):
    return X[multi_krum_indices(X, f, m)].mean(axis=0)


def bulyan_selection(X, f):
    """theta = n - 2f picks; each the Krum winner of the unselected inputs, scored on them
    with max(r - f - 2, 1) neighbours (r = how many remain); lowest index on ties."""
    n = X.shape[0]
    remaining = list(range(n))
    selected = []
    for _ in range(n - 2 * f):
        r = len(remaining)
        scores = krum_scores(X[remaining], max(r - f - 2, 1))
        pos = min(range(r), key=lambda i: (scores[i], remaining[i]))
        selected.append(remaining.pop(pos))
    return selected


def bulyan(X, f):
    selected = bulyan_selection(X, f)
    theta = len(selected)
    beta = theta - 2 * f
    S = X[selected]
    return np.array([_mean_around_median_1d(S[:, c], beta) for c in range(X.shape[1])])


def gm_objective(X, z):
    return float(sum(np.sqrt(np.sum((x - z) ** 2)) for x in X))


def weiszfeld(X, iters=20000, tol=1e-15):
    """Plain Weiszfeld from the mean, run to convergence (only a point coinciding with an input
    needs the guard; the objective then is checked against cvxpy's in the tests)."""
    z = X.mean(axis=0)
    for _ in range(iters):
        dist = np.sqrt(((X - z) ** 2).sum(axis=1))
        if np.any(dist < 1e-300):
            return z
        w = 1.0 / dist
        z_new = (w[:, None] * X).sum(axis=0) / w.sum()
        if np.sqrt(((z_new - z) ** 2).sum()) <= tol * (1 + np.sqrt((z**2).sum())):
            return z_new
        z = z_new
    return z


def clip(z, tau):
    norm = math.sqrt(sum(v * v for v in z))
    return z * min(1.0, tau / norm) if norm > 0 else z.copy()


def centered_clipping(X, tau, iters=1, v0=None):
    n = X.shape[0]
    v = np.zeros(X.shape[1]) if v0 is None else v0.copy()
    for _ in range(iters):
        v = v + sum(clip(x - v, tau) for x in X) / n
    return v


def nnm(X, f):
    n = X.shape[0]
    D = sq_dist_matrix(X)
    out = np.empty_like(X)
    for i in range(n):
        order = sorted(range(n), key=lambda j: (j != i, D[i, j], j))[: n - f]
        out[i] = X[order].mean(axis=0)
    return out


def bucket_groups(Y, X, s):
    """Recover which inputs each output row of bucketing averages (brute force over subsets).

    Returns the list of index tuples, or None when some row is no such mean."""
    n = X.shape[0]
    groups = []
    for j, y in enumerate(Y):
        size = min(s, n - j * s)
        hits = [c for c in itertools.combinations(range(n), size) if np.allclose(X[list(c)].mean(axis=0), y)]
        if len(hits) != 1:
            return None
        groups.append(hits[0])
    return groups


def clipping(X, c):
    return np.stack([clip(x, c) for x in X])


def arc(X, f):
    n = X.shape[0]
    k = (2 * f * (n - f)) // n
    norms = sorted((math.sqrt(sum(v * v for v in x)) for x in X), reverse=True)
    return clipping(X, norms[k])
