"""Local-step models: how many local SGD steps are behind each worker's update."""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from robustagg._validation import check_int
from robustagg.participation._common import Number, _Component, _expand, _per_worker, register

class LocalSteps(_Component):
    """How many local steps each worker ran: ``draw(n, rng) -> int array (n,)``, all >= 1."""

    def check(self, n: int) -> None:
        """Validate per-worker parameters against the number of workers."""

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


@register("fixed-steps")
class FixedSteps(LocalSteps):
    r"""The same number of local steps every time: :math:`K_{t,i} = k`."""

    def __init__(self, k: int = 1) -> None:
        self.k = check_int(k, "k", minimum=1)

    def draw(self, n, rng):
        return np.full(n, self.k, dtype=np.int64)


@register("uniform-steps")
class UniformSteps(LocalSteps):
    r"""Uniform integer local steps: :math:`K_{t,i} \sim \mathcal U\{\mathrm{low}, \dots, \mathrm{high}\}`
    (both included; mean :math:`(\mathrm{low} + \mathrm{high}) / 2`)."""

    def __init__(self, low: int = 1, high: int = 5) -> None:
        self.low = check_int(low, "low", minimum=1)
        self.high = check_int(high, "high", minimum=self.low)

    def draw(self, n, rng):
        return rng.integers(self.low, self.high + 1, size=n)


@register("speed-steps")
class SpeedSteps(LocalSteps):
    r"""Per-worker speed: worker ``i`` runs :math:`s_i` steps per round on average.

    .. math:: K_{t,i} = 1 + P_{t,i}, \qquad P_{t,i} \sim \mathrm{Poisson}(s_i - 1),
              \qquad \mathbb E[K_{t,i}] = s_i

    ``speeds`` holds one value :math:`s_i \ge 1` per worker (or one for all).
    """

    def __init__(self, speeds: Union[Number, Sequence[Number]] = 1.0) -> None:
        self.speeds = speeds
        _per_worker(speeds, "speeds", np.size(speeds), minimum=1.0)

    def check(self, n):
        _per_worker(self.speeds, "speeds", n, minimum=1.0)

    def draw(self, n, rng):
        return 1 + rng.poisson(_expand(self.speeds, n) - 1.0)


# ---------------------------------------------------------------- delays
