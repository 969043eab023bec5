"""Shared pieces of the participation models: the registry, ``Arrival`` and round randomness."""

from __future__ import annotations

from typing import Any, NamedTuple, Union

import numpy as np

from robustagg._registry import ParamsRepr, Registry
from robustagg._validation import check_float

REGISTRY = Registry("participation model")
register = REGISTRY.register
Number = Union[int, float]


class Arrival(NamedTuple):
    """One arrival: ``worker`` sent an update after ``local_steps`` steps, ``staleness`` rounds old."""

    worker: int
    local_steps: int
    staleness: int


def _per_worker(value: Any, name: str, n: int, **bounds: Any) -> np.ndarray:
    """A scalar or a length-``n`` sequence as a float array of length ``n`` (validated)."""
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if arr.ndim != 1 or arr.size not in (1, n):
        raise ValueError(f"{name} must be a number or a sequence of n={n} per-worker values, got {value!r}")
    for v in arr:
        check_float(float(v), name, **bounds)
    return np.broadcast_to(arr, (n,)).copy()


def _expand(value: Any, n: int) -> np.ndarray:
    """An already validated scalar or per-worker value as a length-``n`` float array."""
    return np.broadcast_to(np.asarray(value, dtype=np.float64), (n,))


def _round_rng(seed: int, t: int) -> np.random.Generator:
    return np.random.default_rng([seed, t])


def arrival_uniforms(seed: int, t: int, n: int) -> np.ndarray:
    """The ``n`` arrival uniforms of round ``t`` (the first draws of the round's generator)."""
    return _round_rng(seed, t).random(n)


class _Component(ParamsRepr):
    """A part of a participation model (arrivals, local steps, delays)."""


# --------------------------------------------------------------- arrival processes
