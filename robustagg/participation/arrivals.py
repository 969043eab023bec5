"""Arrival processes: which of the ``n`` workers send an update in round ``t``."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from robustagg._validation import check_choice, check_int
from robustagg.participation._common import Number, _Component, _expand, _per_worker, arrival_uniforms, register

class ArrivalProcess(_Component):
    """Which workers arrive: ``arrived(t, n, seed, u) -> bool array (n,)``, where ``u`` holds
    round ``t``'s arrival uniforms (:func:`arrival_uniforms`)."""

    def check(self, n: int) -> None:
        """Validate per-worker parameters against the number of workers."""

    def arrived(self, t: int, n: int, seed: int, u: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@register("bernoulli")
class Bernoulli(ArrivalProcess):
    r"""Independent arrivals: worker ``i`` arrives in each round with probability :math:`p_i`.

    .. math:: \Pr[i \in M_t] = p_i, \quad \text{independent over } i \text{ and } t

    ``p`` is one number or a sequence of per-worker probabilities.
    """

    def __init__(self, p: Union[Number, Sequence[Number]] = 0.5) -> None:
        self.p = p
        _per_worker(p, "p", np.size(p), minimum=0.0, maximum=1.0)

    def check(self, n):
        _per_worker(self.p, "p", n, minimum=0.0, maximum=1.0)

    def arrived(self, t, n, seed, u):
        return u < _expand(self.p, n)


@register("full", "everyone")
class Full(Bernoulli):
    r"""Every worker arrives in every round (the default): :math:`M_t = \{0, \dots, n-1\}`.

    The same draws as ``bernoulli`` with ``p = 1``, so a run's other random components do
    not change when a configuration names it.
    """

    def __init__(self) -> None:
        super().__init__(1.0)


@register("markov", "markov-on-off")
class MarkovOnOff(ArrivalProcess):
    r"""On/off Markov chain per worker: an "off" worker turns on with probability ``p_on``
    per round, an "on" worker turns off with probability ``p_off``; it arrives while on.

    .. math:: \Pr[\mathrm{on}_{t+1} \mid \mathrm{off}_t] = p_{on}, \quad
              \Pr[\mathrm{off}_{t+1} \mid \mathrm{on}_t] = p_{off}, \quad
              \pi_{on} = \frac{p_{on}}{p_{on} + p_{off}}

    The long-run arrival frequency is :math:`\pi_{on}`; on periods last
    :math:`1/p_{off}` rounds on average. ``initial``: ``"stationary"`` (on with probability
    :math:`\pi_{on}` at round 0), ``"on"`` or ``"off"``. Per-worker sequences are accepted.
    """

    def __init__(self, p_on: Union[Number, Sequence[Number]] = 0.5, p_off: Union[Number, Sequence[Number]] = 0.5,
                 initial: str = "stationary") -> None:
        self.p_on, self.p_off = p_on, p_off
        self.initial = check_choice(initial, "initial", ("stationary", "on", "off"))
        self._cache: Dict[Tuple[int, int], List[np.ndarray]] = {}
        self.check(max(np.size(p_on), np.size(p_off)))

    def check(self, n):
        on = _per_worker(self.p_on, "p_on", n, minimum=0.0, maximum=1.0)
        off = _per_worker(self.p_off, "p_off", n, minimum=0.0, maximum=1.0)
        if self.initial == "stationary" and np.any(on + off == 0):
            raise ValueError("initial='stationary' needs p_on + p_off > 0 for every worker")

    def arrived(self, t, n, seed, u):
        on, off = _expand(self.p_on, n), _expand(self.p_off, n)
        states = self._cache.setdefault((seed, n), [])
        while len(states) <= t:
            s = len(states)
            u = arrival_uniforms(seed, s, n)
            if s == 0:
                start = {"on": np.ones(n), "off": np.zeros(n)}.get(self.initial)
                states.append(u < (on / np.where(on + off > 0, on + off, 1.0) if start is None else start))
            else:
                states.append(np.where(states[-1], u >= off, u < on))
        return states[t].copy()


@register("trace", "replay")
class Trace(ArrivalProcess):
    r"""Replay recorded arrivals: ``trace[t]`` lists the workers that arrive in round ``t``.

    ``trace`` is a ``(T, n)`` 0/1 (or bool) array, or a sequence of ``T`` iterables of worker
    ids. After round ``T - 1`` the trace repeats (``cycle=True``) or nobody arrives.
    """

    def __init__(self, trace: Any, cycle: bool = True) -> None:
        if not isinstance(cycle, bool):
            raise TypeError(f"cycle must be a bool, got {cycle!r}")
        self.cycle = cycle
        if isinstance(trace, np.ndarray) and trace.ndim == 2:
            if not np.isin(trace, (0, 1)).all():
                raise ValueError("a (T, n) trace array must hold 0/1 or booleans")
            self._rounds = [tuple(int(i) for i in np.flatnonzero(row)) for row in trace]
            self._width: Optional[int] = trace.shape[1]
        else:
            if isinstance(trace, (str, bytes)) or not isinstance(trace, Iterable):
                raise TypeError("trace must be a (T, n) array or a sequence of iterables of worker ids")
            self._rounds = [tuple(sorted({check_int(i, "worker id in trace", minimum=0) for i in row}))
                            for row in trace]
            self._width = None
        if not self._rounds:
            raise ValueError("trace must hold at least one round")
        self.trace = trace

    def check(self, n):
        if self._width is not None and self._width != n:
            raise ValueError(f"the trace has {self._width} columns but the model has n={n} workers")
        top = max((max(r) for r in self._rounds if r), default=-1)
        if top >= n:
            raise ValueError(f"the trace names worker {top} but the model has n={n} workers")

    def arrived(self, t, n, seed, u):
        out = np.zeros(n, dtype=bool)
        if t < len(self._rounds) or self.cycle:
            out[list(self._rounds[t % len(self._rounds)])] = True
        return out

    def __repr__(self):
        return f"Trace({len(self._rounds)} rounds, cycle={self.cycle})"


# ---------------------------------------------------------------- local steps
