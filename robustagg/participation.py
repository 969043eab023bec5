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

from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from robustagg._registry import ParamsRepr, Registry
from robustagg._validation import check_choice, check_float, check_int

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
