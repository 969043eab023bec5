"""Participation: frequencies and means match the parameters (within 5 standard deviations of
the estimate, with the Markov chain's autocorrelation accounted for), bounds hold, and rounds
are deterministic for a seed in any call order."""

import math
import random

import numpy as np
import pytest

from robustagg import participation as P

T = 3000


def table(model, rounds=T):
    """(rounds, n) arrays of presence, local steps and staleness (-1 where absent)."""
    present = np.zeros((rounds, model.n), bool)
    steps = np.full((rounds, model.n), -1)
    stale = np.full((rounds, model.n), -1)
    for t in range(rounds):
        for worker, k, tau in model.round(t):
            present[t, worker], steps[t, worker], stale[t, worker] = True, k, tau
    return present, steps, stale


def test_bernoulli_per_worker_frequencies():
    p = [0.1, 0.5, 0.9, 0.0, 1.0]
    present, _, _ = table(P.Participation(5, arrival=P.Bernoulli(p), seed=3))
    for i, pi in enumerate(p):
        tol = 5 * math.sqrt(pi * (1 - pi) / T) + 1e-12
        assert abs(present[:, i].mean() - pi) <= tol


def test_markov_long_run_frequency_and_run_length():
    p_on, p_off = 0.2, 0.3
    present, _, _ = table(P.Participation(4, arrival=P.MarkovOnOff(p_on, p_off), seed=1))
    pi = p_on / (p_on + p_off)
    lam = 1 - p_on - p_off  # lag-1 autocorrelation inflates the variance of the mean
    tol = 5 * math.sqrt(pi * (1 - pi) / T * (1 + lam) / (1 - lam))
    for i in range(4):
        assert abs(present[:, i].mean() - pi) <= tol
    starts = np.sum(present[1:] & ~present[:-1])
    mean_run = present.sum() / max(starts, 1)
    assert abs(mean_run - 1 / p_off) < 0.25 * (1 / p_off)


def test_markov_initial_states():
    on = P.Participation(3, arrival=P.MarkovOnOff(0.0, 0.0, initial="on"))
    assert [a.worker for a in on.round(50)] == [0, 1, 2]
    off = P.Participation(3, arrival=P.MarkovOnOff(0.0, 0.0, initial="off"))
    assert off.round(50) == []
    with pytest.raises(ValueError, match="p_on \\+ p_off > 0"):
        P.MarkovOnOff(0.0, 0.0)


def test_trace_replay():
    trace = [[0, 2], [], [1]]
    model = P.Participation(3, arrival=P.Trace(trace))
    assert [[a.worker for a in model.round(t)] for t in range(6)] == [[0, 2], [], [1]] * 2
    once = P.Participation(3, arrival=P.Trace(np.array([[1, 0, 1], [0, 1, 0]]), cycle=False))
    assert [a.worker for a in once.round(1)] == [1] and once.round(2) == []
    with pytest.raises(ValueError, match="names worker 5"):
        P.Participation(3, arrival=P.Trace([[5]]))
    with pytest.raises(ValueError, match="3 columns"):
        P.Participation(4, arrival=P.Trace(np.ones((2, 3), bool)))


def test_local_step_means():
    _, steps, _ = table(P.Participation(4, local_steps=P.UniformSteps(2, 9), seed=2))
    k = steps[steps > 0]
    sd = math.sqrt(((9 - 2 + 1) ** 2 - 1) / 12 / k.size)
    assert k.min() == 2 and k.max() == 9 and abs(k.mean() - 5.5) < 5 * sd
    speeds = [1.0, 2.5, 6.0]
    _, steps, _ = table(P.Participation(3, local_steps=P.SpeedSteps(speeds), seed=5))
    for i, s in enumerate(speeds):
        assert steps[:, i].min() >= 1
        assert abs(steps[:, i].mean() - s) < 5 * math.sqrt(max(s - 1, 1e-12) / T) + 1e-12
    _, steps, _ = table(P.Participation(2, local_steps=4), rounds=20)
    assert np.all(steps == 4)
    _, steps, _ = table(P.Participation(2, local_steps=(3, 5)), rounds=200)
    assert set(np.unique(steps)) == {3, 4, 5}


def test_staleness_distribution_and_bound():
    probs = P.GeometricDelay(p=0.4, max_delay=3).probs
    _, _, stale = table(P.Participation(5, delay=P.GeometricDelay(p=0.4, max_delay=3), seed=4))
    late = stale[10:].ravel()  # past the first rounds, where staleness is capped at t
    assert late.max() <= 3
    for k, pk in enumerate(probs):
        assert abs(np.mean(late == k) - pk) < 5 * math.sqrt(pk * (1 - pk) / late.size)
    assert np.all(stale[:4] <= np.arange(4)[:, None])  # nothing older than round 0
    _, _, stale = table(P.Participation(3, delay=P.UniformDelay(4), seed=1))
    assert abs(stale[10:].mean() - 2.0) < 5 * math.sqrt(2.0 / stale[10:].size)
    _, _, stale = table(P.Participation(3, delay=P.FixedDelay([0, 1, 5])), rounds=20)
    assert np.all(stale[10:] == [0, 1, 5]) and P.Participation(3, delay=P.FixedDelay([0, 1, 5])).max_delay == 5


@pytest.mark.parametrize("arrival", [P.Bernoulli([0.3, 0.6, 0.9]), P.MarkovOnOff(0.3, 0.4)])
def test_rounds_deterministic_in_any_order(arrival):
    def make():
        return P.Participation(3, arrival=arrival.__class__(*_args(arrival)), local_steps=P.UniformSteps(1, 6),
                               delay=P.UniformDelay(3), seed=11)

    forward = [make().round(t) for t in range(40)]
    model = make()
    order = list(range(40))
    random.Random(0).shuffle(order)
    shuffled = {t: model.round(t) for t in order}
    assert all(shuffled[t] == forward[t] for t in range(40))
    one = make()
    assert one.round(39) == forward[39] and one.round(3) == forward[3]
    other = P.Participation(3, arrival=arrival, local_steps=P.UniformSteps(1, 6), delay=P.UniformDelay(3), seed=12)
    assert [other.round(t) for t in range(40)] != forward


def _args(arrival):
    return (arrival.p,) if isinstance(arrival, P.Bernoulli) else (arrival.p_on, arrival.p_off)


def test_round_format_and_errors():
    model = P.get("anarchic", n=3, arrival=1.0, local_steps=2, seed=0)
    assert model.round(0) == [(0, 2, 0), (1, 2, 0), (2, 2, 0)]
    with pytest.raises(ValueError, match="p must be <= 1"):
        P.Bernoulli(1.2)
    with pytest.raises(ValueError, match="n=3"):
        P.Participation(3, arrival=P.Bernoulli([0.1, 0.2]))
    with pytest.raises(ValueError, match="high must be >= 4"):
        P.UniformSteps(4, 2)
    with pytest.raises(ValueError, match="speeds must be >= 1"):
        P.SpeedSteps([0.5])
    with pytest.raises(TypeError, match="ArrivalProcess"):
        P.Participation(3, arrival="markov")
    with pytest.raises(ValueError, match="round t must be >= 0"):
        model.round(-1)
    assert {"bernoulli", "markov", "trace", "fixed-steps", "uniform-steps", "speed-steps", "no-delay",
            "uniform-delay", "geometric-delay", "categorical-delay", "anarchic"} <= set(P.available())
