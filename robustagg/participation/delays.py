"""Delay models: how stale (in rounds) each arriving update is."""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from robustagg._validation import check_float, check_int
from robustagg.participation._common import Number, _Component, _expand, _per_worker, register

class Delay(_Component):
    """Staleness of an arrival: ``draw(n, rng) -> int array (n,)`` in ``[0, max_delay]``."""

    max_delay: int = 0

    def check(self, n: int) -> None:
        """Validate per-worker parameters against the number of workers."""

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


@register("no-delay")
class NoDelay(Delay):
    r"""Fresh updates only: :math:`\tau = 0`."""

    def draw(self, n, rng):
        return np.zeros(n, dtype=np.int64)


@register("uniform-delay")
class UniformDelay(Delay):
    r"""Uniform staleness: :math:`\tau \sim \mathcal U\{0, \dots, \tau_{\max}\}`."""

    def __init__(self, max_delay: int = 1) -> None:
        self.max_delay = check_int(max_delay, "max_delay", minimum=0)

    def draw(self, n, rng):
        return rng.integers(0, self.max_delay + 1, size=n)


@register("categorical-delay")
class CategoricalDelay(Delay):
    r"""Staleness with given probabilities: :math:`\Pr[\tau = k] = \mathrm{probs}[k]`,
    :math:`k = 0, \dots, \tau_{\max} = \mathrm{len(probs)} - 1` (normalised to sum to 1)."""

    def __init__(self, probs: Sequence[Number] = (1.0,)) -> None:
        p = np.asarray(probs, dtype=np.float64)
        if p.ndim != 1 or p.size == 0 or np.any(p < 0) or not np.isfinite(p).all() or p.sum() <= 0:
            raise ValueError(f"probs must be a non-empty sequence of non-negative numbers, got {probs!r}")
        self.probs = tuple(float(x) for x in p / p.sum())
        self.max_delay = p.size - 1

    def draw(self, n, rng):
        return rng.choice(len(self.probs), size=n, p=self.probs)


@register("geometric-delay")
class GeometricDelay(CategoricalDelay):
    r"""Truncated geometric staleness: :math:`\Pr[\tau = k] \propto p\,(1 - p)^k`,
    :math:`k = 0, \dots, \tau_{\max}` (most updates fresh, a tail of stale ones)."""

    def __init__(self, p: float = 0.5, max_delay: int = 4) -> None:
        self.p = check_float(p, "p", minimum=0.0, maximum=1.0, strict_min=True)
        max_delay = check_int(max_delay, "max_delay", minimum=0)
        super().__init__(self.p * (1 - self.p) ** np.arange(max_delay + 1))


@register("fixed-delay")
class FixedDelay(Delay):
    r"""Deterministic per-worker staleness: :math:`\tau_{t,i} = \tau_i` (persistent stragglers)."""

    def __init__(self, delays: Union[int, Sequence[int]] = 0) -> None:
        self.delays = delays
        values = np.atleast_1d(np.asarray(delays))
        if values.ndim != 1 or values.dtype.kind not in "iu" or np.any(values < 0):
            raise ValueError(f"delays must be a non-negative int or a sequence of them, got {delays!r}")
        self.max_delay = int(values.max())

    def check(self, n):
        _per_worker(self.delays, "delays", n, minimum=0.0)

    def draw(self, n, rng):
        return _expand(self.delays, n).astype(np.int64)


# ---------------------------------------------------------------- the model
