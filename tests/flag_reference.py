"""The Flag Aggregator written out in float64 NumPy, pair by pair, and the inputs its tests use."""

import math

import numpy as np


def numpy_reference(X, Y0, m, lam=0.0, iters=5, tol=1e-10, eps=1e-7, output="reference"):
    """The reference algorithm written out in float64 numpy, pair by pair.

    ``Y0 = None`` stands for an init orthogonal to every input. Returns ``(aggregate, objectives)``."""
    X = np.asarray(X, dtype=np.float64)
    p, d = X.shape
    norms = np.linalg.norm(X, axis=1)
    U = [X[i] / norms[i] if norms[i] > 0 else np.zeros(d) for i in range(p)]

    def sq(Y, x):
        return 0.0 if Y is None else float(np.sum((Y.T @ x) ** 2))

    def E(Y):
        return sum(math.sqrt(max(0.0, 1.0 - sq(Y, u))) for u in U)

    def step(Y):
        cols = [(abs(1.0 - sq(Y, u)) + eps) ** -0.25 * u for u in U]
        if lam > 0:
            for i in range(p):
                for j in range(p):
                    if i != j:
                        diff = U[i] - U[j]
                        cols.append(lam / (p * (p - 1)) * (abs(1.0 - sq(Y, diff)) + eps) ** -0.25 * diff)
        return np.linalg.svd(np.stack(cols, axis=1), full_matrices=False)[0][:, :m]

    err = [E(Y0)]
    Y, prev, diff, it = Y0, Y0, 1.0, 1
    while it <= iters and diff > tol and err[it - 1] > tol:
        prev = Y
        Y = step(Y)
        err.append(E(Y))
        diff = err[it - 1] - err[it]
        it += 1
    if diff <= 0:
        Y, err = prev, err[:-1]
    if Y is None:
        return np.zeros(d), err
    if output == "reference":
        return sum(Y @ (Y.T @ u) for u in U) / m, err
    return Y @ (Y.T @ X.sum(axis=0)) / p, err


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def orthonormal(d, m, seed):
    return np.linalg.qr(np.random.default_rng(seed).uniform(-0.5, 0.5, size=(d, m)))[0]


def inputs(p, d, seed, structure=3):
    """Inputs sharing a low-dimensional structure plus noise (so the IRLS weights differ)."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(structure, d))
    X = rng.normal(size=(p, structure)) @ basis + 0.5 * rng.normal(size=(p, d))
    X[p // 2:] += 3.0 * basis[0]
    return X
