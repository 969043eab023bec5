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


# ------------------------------------------------------------------ issue 15's rules


def cge(X, f):
    norms = [math.sqrt(sum(v * v for v in x)) for x in X]
    kept = sorted(range(len(X)), key=lambda i: (norms[i], i))[: len(X) - f]
    return X[kept].mean(axis=0)


def _subsets(n, k):
    """Every kept set of size k, in the order of its removed set (lexicographic)."""
    for removed in itertools.combinations(range(n), n - k):
        yield [i for i in range(n) if i not in removed]


def mda_subset(X, f):
    """Smallest diameter, then smallest sum of squared pairwise distances, then first."""
    D = sq_dist_matrix(X)
    best, best_key = None, None
    for S in _subsets(X.shape[0], X.shape[0] - f):
        key = (max(D[i, j] for i in S for j in S), sum(D[i, j] for i in S for j in S))
        if best_key is None or key < best_key:
            best, best_key = S, key
    return best


def mda(X, f):
    return X[mda_subset(X, f)].mean(axis=0)


def top_covariance_eigenvalue(Y, w=None):
    w = np.ones(len(Y)) if w is None else w
    mu = (w[:, None] * Y).sum(axis=0) / w.sum()
    cov = sum(wi * np.outer(y - mu, y - mu) for wi, y in zip(w, Y)) / w.sum()
    values, vectors = np.linalg.eigh(cov)
    return values[-1], vectors[:, -1], mu


def smea(X, f):
    best, best_val = None, math.inf
    for S in _subsets(X.shape[0], X.shape[0] - f):
        val = top_covariance_eigenvalue(X[S])[0]
        if val < best_val:
            best, best_val = S, val
    return X[best].mean(axis=0)


def smea_greedy(X, f, tie_rtol=1e-12):
    """SMEA's greedy search: f times, remove the row whose removal leaves the smallest top
    covariance eigenvalue; removals whose scatter eigenvalues (covariance x count) differ by less
    than tie_rtol of the current one are ties, won by the lowest index. Returns the kept rows."""
    S = list(range(X.shape[0]))
    for _ in range(f):
        current = top_covariance_eigenvalue(X[S])[0] * len(S)
        vals = np.array([top_covariance_eigenvalue(X[[j for j in S if j != k]])[0] for k in S]) * (len(S) - 1)
        S.remove(S[int(np.flatnonzero(vals <= vals.min() + tie_rtol * current)[0])])
    return S


def caf(X, f):
    """Weights c_i = 1; while sum c > n - 2f: mean and covariance under c, tau_i = squared
    projection on the top eigenvector, c_i *= 1 - tau_i / max over weighted tau; the mean of
    smallest top eigenvalue."""
    n = X.shape[0]
    c = np.ones(n)
    best, best_val = X.mean(axis=0), math.inf
    for _ in range(n):
        if c.sum() <= n - 2 * f:
            break
        val, v, mu = top_covariance_eigenvalue(X, c)
        if val < best_val:
            best, best_val = mu, val
        tau = np.array([float((x - mu) @ v) ** 2 for x in X])
        top = tau[c > 0].max()
        if top <= 0:
            break
        c = np.maximum(c * (1 - tau / top), 0)
    return best


def dnc(X, f, column_sets, filter_frac=1.0):
    n = X.shape[0]
    good = set(range(n))
    for cols in column_sets:
        Y = X[:, cols]
        Z = Y - Y.mean(axis=0)
        v = np.linalg.svd(Z)[2][0]
        scores = [float(z @ v) ** 2 for z in Z]
        good &= set(sorted(range(n), key=lambda i: (scores[i], i))[: n - math.floor(filter_frac * f)])
    return X[sorted(good)].mean(axis=0)


def fltrust(X, g0):
    g0n = math.sqrt(sum(v * v for v in g0))
    total, acc = 0.0, np.zeros(X.shape[1])
    for x in X:
        xn = math.sqrt(sum(v * v for v in x))
        t = max(0.0, float(x @ g0) / (xn * g0n)) if xn > 0 else 0.0
        total += t
        acc += t * g0n / xn * x if t > 0 else 0.0
    return acc / total if total > 0 else acc


def monna(X, f, index):
    D = sq_dist_matrix(X)
    order = sorted(range(X.shape[0]), key=lambda j: (j != index, D[index, j], j))[: X.shape[0] - f]
    return X[order].mean(axis=0)


def clipped_clustering(X, history=()):
    """Clip to the median of all norms (history and these), average-linkage clusters of the
    cosine distances into two, mean of the clipped rows of the larger one."""
    from scipy.cluster.hierarchy import fcluster, linkage

    n = X.shape[0]
    norms = [math.sqrt(sum(v * v for v in x)) for x in X]
    tau = float(np.median(list(history) + norms))
    Y = np.stack([x * min(1.0, tau / nx) if nx > 0 else x for x, nx in zip(X, norms)])
    dist = [1 - float(X[i] @ X[j]) / (norms[i] * norms[j]) for i in range(n) for j in range(i + 1, n)]
    labels = fcluster(linkage(np.array(dist), method="average"), 2, criterion="maxclust")
    groups = [[i for i in range(n) if labels[i] == k] for k in sorted(set(labels))]
    big = max(len(g) for g in groups)
    chosen = [g for g in groups if len(g) == big]
    assert len(chosen) == 1, "equal cluster sizes: not covered by this reference"
    return Y[chosen[0]].mean(axis=0)


def weiszfeld_fixed(X, iters, z0=None):
    """Exactly ``iters`` plain Weiszfeld steps from the mean or ``z0``."""
    z = X.mean(axis=0) if z0 is None else np.array(z0, dtype=float)
    for _ in range(iters):
        w = np.array([1.0 / math.sqrt(sum((x - z) ** 2)) for x in X])
        z = (w[:, None] * X).sum(axis=0) / w.sum()
    return z
