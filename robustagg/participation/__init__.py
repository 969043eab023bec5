r"""Anarchic participation: who arrives in each round, with how many local steps and how stale.

A :class:`Participation` model combines three parts:

* an **arrival process** (:class:`Bernoulli`, :class:`MarkovOnOff`, :class:`Trace`): which of
  the ``n`` workers send an update in round ``t``;
* a **local-step model** (:class:`FixedSteps`, :class:`UniformSteps`, :class:`SpeedSteps`):
  :math:`K_{t,i}`, the number of local SGD steps behind worker ``i``'s update;
* a **delay model** (:class:`NoDelay`, :class:`UniformDelay`, :class:`GeometricDelay`,
  :class:`CategoricalDelay`, :class:`FixedDelay`): the staleness :math:`\tau_{t,i}`, i.e. the
  update was computed on :math:`x_{t-\tau}`, with :math:`\tau \le \tau_{\max}` and
  :math:`\tau \le t` (nothing is older than round 0).

``model.round(t)`` returns the list of ``(worker, local_steps, staleness)`` tuples of the
workers that arrive, sorted by worker. Round ``t``'s randomness comes from one generator,
``numpy.random.default_rng([seed, t])``, which draws ``n`` arrival uniforms, then the local
steps and the delays of all ``n`` workers (arrived or not), so the result depends only on
``(seed, t)``: the same for any order of calls to ``round``. (The Markov chain's state at
``t`` depends on the arrival uniforms of rounds ``0..t``; they are computed once and cached.)

>>> from robustagg.participation import Participation, Bernoulli, UniformSteps, UniformDelay
>>> model = Participation(4, arrival=Bernoulli([1.0, 0.0, 1.0, 0.0]), local_steps=UniformSteps(2, 2),
...                       delay=UniformDelay(0), seed=7)
>>> model.round(5)
[Arrival(worker=0, local_steps=2, staleness=0), Arrival(worker=2, local_steps=2, staleness=0)]

References
----------
Yang, Zhang, Khanduri, Liu, "Anarchic Federated Learning", ICML 2022.
"""


from __future__ import annotations

from typing import Any, List, Optional

import numpy as np

from robustagg._validation import check_int
from robustagg.participation._common import REGISTRY, Arrival, _round_rng, arrival_uniforms, register
from robustagg.participation.arrivals import ArrivalProcess, Bernoulli, Full, MarkovOnOff, Trace
from robustagg.participation.delays import (CategoricalDelay, Delay, FixedDelay, GeometricDelay, NoDelay,
                                            UniformDelay)
from robustagg.participation.local_steps import FixedSteps, LocalSteps, SpeedSteps, UniformSteps

__all__ = ["Arrival", "ArrivalProcess", "Bernoulli", "Full", "MarkovOnOff", "Trace", "LocalSteps", "FixedSteps",
           "UniformSteps", "SpeedSteps", "Delay", "NoDelay", "UniformDelay", "CategoricalDelay", "GeometricDelay",
           "FixedDelay", "Participation", "arrival_uniforms", "get", "available", "register", "REGISTRY"]


@register("anarchic", "participation")
class Participation:
    r"""Anarchic participation of ``n`` workers (AFL): arrivals, local steps and staleness.

    Parameters
    ----------
    n : int
        Number of workers, numbered ``0..n-1``.
    arrival : ArrivalProcess, float or sequence of floats
        A number or per-worker sequence means :class:`Bernoulli` with those probabilities.
    local_steps : LocalSteps, int or (low, high)
        An int means :class:`FixedSteps`, a pair :class:`UniformSteps` (inclusive).
    delay : Delay or None
        ``None`` means :class:`NoDelay`. Staleness is capped at ``t``.
    seed : int
        Round ``t`` depends only on ``(seed, t)``.

    ``round(t)`` returns the sorted list of :class:`Arrival` ``(worker, local_steps, staleness)``.
    An empty list is a round in which nobody arrives (AFA-CD then waits or skips; AFA-CS
    reuses its stored updates).

    References
    ----------
    Yang, Zhang, Khanduri, Liu, "Anarchic Federated Learning", ICML 2022.
    """

    def __init__(self, n: int, arrival: Any = 1.0, local_steps: Any = 1, delay: Optional[Delay] = None,
                 seed: int = 0) -> None:
        self.n = check_int(n, "n", minimum=1)
        self.seed = check_int(seed, "seed", minimum=0)
        if not isinstance(arrival, ArrivalProcess):
            if isinstance(arrival, (str, bytes)):
                raise TypeError("arrival must be an ArrivalProcess or Bernoulli probabilities; "
                                "build named processes with robustagg.participation.get(name, ...)")
            arrival = Bernoulli(arrival)
        if isinstance(local_steps, (tuple, list)) and len(local_steps) == 2:
            local_steps = UniformSteps(*local_steps)
        elif not isinstance(local_steps, LocalSteps):
            local_steps = FixedSteps(local_steps)
        if delay is None:
            delay = NoDelay()
        if not isinstance(delay, Delay):
            raise TypeError(f"delay must be a Delay model or None, got {type(delay).__name__}")
        for part in (arrival, local_steps, delay):
            part.check(self.n)
        self.arrival, self.local_steps, self.delay = arrival, local_steps, delay

    @property
    def max_delay(self) -> int:
        """The staleness bound :math:`\\tau_{\\max}`."""
        return int(self.delay.max_delay)

    def round(self, t: int) -> List[Arrival]:
        """The arrivals of round ``t``: ``[(worker, local_steps, staleness), ...]`` sorted by worker."""
        t = check_int(t, "round t", minimum=0)
        rng = _round_rng(self.seed, t)
        present = self.arrival.arrived(t, self.n, self.seed, rng.random(self.n))
        steps = self.local_steps.draw(self.n, rng)
        stale = np.minimum(self.delay.draw(self.n, rng), t)
        return [Arrival(int(i), int(steps[i]), int(stale[i])) for i in np.flatnonzero(present)]

    def __repr__(self) -> str:
        return (f"Participation(n={self.n}, arrival={self.arrival!r}, local_steps={self.local_steps!r}, "
                f"delay={self.delay!r}, seed={self.seed})")


def get(name: str, **params: Any) -> Any:
    """Build a registered component: ``get("markov", p_on=0.2, p_off=0.5)``, ``get("anarchic", n=10)``."""
    return REGISTRY.get(name, **params)


def available() -> List[str]:
    """Names of every registered arrival process, local-step model, delay model and ``anarchic``."""
    return REGISTRY.available()
