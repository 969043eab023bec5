"""Shared test cases: how to build each rule, and seeded inputs."""

from __future__ import annotations

import numpy as np
import torch

import robustagg as ra

#: extra constructor parameters per registered rule (everything else runs with its defaults).
PARAMS = {
    "centered-clipping": {"tau": 1.0, "iters": 3},
    "bucketing": {"s": 2, "seed": 1},
    "clipping": {"c": 1.5},
}

#: registered rules whose output depends on the order of the inputs by design.
ORDER_DEPENDENT = {"bucketing", "monna"}  # monna: centred on the caller's own row


def build(name: str, f: int, **extra):
    return ra.get(name, f=f, **{**PARAMS.get(name, {}), **extra})


def min_n(name: str, f: int) -> int:
    return build(name, f).min_inputs()


def pipelines(f: int):
    """The compositions the tests exercise (name -> pipeline)."""
    return {
        "nnm>trimmed-mean": ra.pipeline(ra.get("nnm", f=f), ra.get("trimmed-mean", f=f)),
        "nnm>krum": ra.pipeline(ra.get("nnm", f=f), ra.get("krum", f=f)),
        "arc>mean": ra.pipeline(ra.get("arc", f=f), ra.get("mean", f=f)),
        "clipping>median": ra.pipeline(ra.get("clipping", f=f, c=1.5), ra.get("median", f=f)),
        "bucketing>geometric-median": ra.pipeline(
            ra.get("bucketing", f=f, s=2, seed=3), ra.get("geometric-median", f=f)
        ),
    }


def gaussian(n: int, d: int, seed: int, *, scale: float = 1.0, offset: float = 0.0) -> np.ndarray:
    """``(n, d)`` float64 Gaussian rows (no ties with probability one)."""
    rng = np.random.default_rng(seed)
    return offset + scale * rng.standard_normal((n, d))


def as_tensor(X: np.ndarray, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(X, dtype=dtype)
