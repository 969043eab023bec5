"""Faults: exact reproduction for a seed (in any call order), documented effects, composition."""

import math

import numpy as np
import pytest
import torch

from robustagg import faults

SEEDED = [
    ("drop", {"q": 0.5}),
    ("packet-loss", {"fraction": 0.3, "packet_size": 4}),
    ("bit-flip", {"count": 7}),
    ("bit-flip", {"rate": 0.01}),
    ("nonfinite", {"value": "mixed", "prob": 0.5, "fraction": 0.3}),
]


def popcount(a: np.ndarray) -> int:
    return int(np.unpackbits(a.view(np.uint8)).sum())


def outputs(fault, calls, d=257):
    res = {}
    for t, w in calls:
        u = torch.linspace(-3, 3, d) + w
        res[(t, w)] = fault(t, w, u)
    return res


def same(a, b):
    if a is None or b is None:
        return a is b
    return torch.equal(torch.nan_to_num(a, nan=1234.5), torch.nan_to_num(b, nan=1234.5))


@pytest.mark.parametrize("name, params", SEEDED)
def test_seeded_faults_reproduce_in_any_order(name, params):
    calls = [(t, w) for t in range(6) for w in range(4)]
    first = outputs(faults.get(name, seed=9, **params), calls)
    again = outputs(faults.get(name, seed=9, **params), list(reversed(calls)))
    assert all(same(first[k], again[k]) for k in calls)
    other = outputs(faults.get(name, seed=10, **params), calls)
    assert not all(same(first[k], other[k]) for k in calls)


def test_crash_and_worker_subset():
    crash = faults.get("crash", start=3, workers=[1, 2])
    u = torch.ones(4)
    assert crash(2, 1, u) is u and crash(3, 1, u) is None and crash(10, 2, u) is None
    assert crash(10, 0, u) is u
    assert crash(0, 1, None) is None


def test_drop_frequency():
    drop = faults.get("drop", q=0.3, seed=1)
    u = torch.zeros(2)
    trials = 4000
    missing = sum(drop(t, w, u) is None for t in range(1000) for w in range(4))
    # binomial: within 5 standard deviations
    assert abs(missing / trials - 0.3) < 5 * math.sqrt(0.3 * 0.7 / trials)


def test_straggler_delivers_stale_updates():
    s = faults.get("straggler", delay=2, workers=[0])
    updates = [torch.full((3,), float(t)) for t in range(6)]
    got = [s(t, 0, updates[t] if t != 3 else None) for t in range(6)]
    assert got[0] is None and got[1] is None
    assert torch.equal(got[2], updates[0]) and torch.equal(got[3], updates[1]) and torch.equal(got[4], updates[2])
    assert got[5] is None  # round 3's update was missing upstream
    assert s(0, 1, updates[0]) is updates[0]  # other workers are not delayed
    updates[0].fill_(99)  # the buffer holds copies
    s.reset()
    assert s(7, 0, torch.ones(3)) is None and len(s._buffer[0]) == 1


def test_packet_loss_fraction_packets_and_shape():
    u = torch.arange(1, 10001, dtype=torch.float32).reshape(100, 100)
    u0 = u.clone()
    out = faults.get("packet-loss", fraction=0.25, packet_size=10, seed=2)(4, 1, u)
    assert torch.equal(u, u0) and out.shape == u.shape
    zero = (out.reshape(-1) == 0).reshape(1000, 10)
    assert torch.all(zero.all(dim=1) | (~zero).all(dim=1))  # whole packets are lost
    share = float(zero.all(dim=1).float().mean())
    assert abs(share - 0.25) < 5 * math.sqrt(0.25 * 0.75 / 1000)
    kept = out.reshape(-1) != 0
    assert torch.equal(out.reshape(-1)[kept], u.reshape(-1)[kept])


@pytest.mark.parametrize("dtype, np_int", [(torch.float32, np.int32), (torch.float64, np.int64),
                                           (torch.float16, np.int16)])
def test_bit_flip_count_is_exact(dtype, np_int):
    u = torch.randn(300, dtype=dtype)
    u0 = u.clone()
    out = faults.get("bit-flip", count=11, seed=3)(0, 0, u)
    assert torch.equal(u, u0)
    diff = u.numpy().view(np_int) ^ out.numpy().view(np_int)
    assert popcount(diff) == 11


def test_bit_flip_rate_and_sign_bits():
    u = torch.rand(20000) + 1.0
    out = faults.get("bit-flip", rate=0.001, seed=4)(1, 2, u)
    flips = popcount(u.numpy().view(np.int32) ^ out.numpy().view(np.int32))
    total = 20000 * 32
    assert abs(flips - 0.001 * total) < 5 * math.sqrt(total * 0.001)
    out = faults.get("bit-flip", count=50, bits=[31], seed=5)(0, 0, u)
    neg = out < 0
    assert int(neg.sum()) == 50 and torch.equal(out[neg], -u[neg]) and torch.equal(out[~neg], u[~neg])
    with pytest.raises(ValueError, match="exactly one"):
        faults.get("bit-flip", count=1, rate=0.1)
    with pytest.raises(ValueError, match="does not exist"):
        faults.get("bit-flip", count=1, bits=[40])(0, 0, torch.ones(3))
    with pytest.raises(TypeError, match="float"):
        faults.get("bit-flip", count=1)(0, 0, torch.ones(3, dtype=torch.int32))


def test_nonfinite_values_and_fraction():
    u = torch.zeros(5000)
    assert torch.isnan(faults.get("nonfinite")(0, 0, u)).all()
    assert torch.equal(faults.get("nonfinite", value="-inf")(0, 0, u), torch.full((5000,), -math.inf))
    out = faults.get("nonfinite", value="inf", fraction=0.2, seed=1)(0, 0, u)
    share = float(torch.isinf(out).float().mean())
    assert abs(share - 0.2) < 5 * math.sqrt(0.2 * 0.8 / 5000) and torch.all(out[~torch.isinf(out)] == 0)
    hit = sum(not torch.isfinite(faults.get("nonfinite", prob=0.25, seed=2)(t, 0, u[:3])).all() for t in range(2000))
    assert abs(hit / 2000 - 0.25) < 5 * math.sqrt(0.25 * 0.75 / 2000)


def test_compose_order_missing_and_numpy():
    chain = faults.compose(faults.get("straggler", delay=1), faults.get("packet-loss", fraction=1.0, seed=1))
    assert chain(0, 0, torch.ones(4)) is None
    assert torch.equal(chain(1, 0, None), torch.zeros(4))  # round 0's update arrives, fully lost
    drop_all = faults.Compose(faults.get("drop", q=1.0), faults.get("nonfinite"))
    assert drop_all(0, 0, torch.ones(3)) is None
    arr = np.ones(6, dtype=np.float32)
    out = faults.get("nonfinite", fraction=1.0)(0, 0, arr)
    assert isinstance(out, np.ndarray) and np.isnan(out).all() and np.all(arr == 1)
    assert faults.is_missing(faults.MISSING)


def test_fault_errors():
    with pytest.raises(ValueError, match="unknown fault"):
        faults.get("crashh")
    with pytest.raises(ValueError, match="q must be <= 1"):
        faults.get("drop", q=1.5)
    with pytest.raises(TypeError, match="workers"):
        faults.get("drop", workers=3)
    with pytest.raises(ValueError, match="round t must be >= 0"):
        faults.get("drop")(-1, 0, torch.ones(2))
    with pytest.raises(TypeError, match="update must be"):
        faults.get("drop")(0, 0, [1.0, 2.0])
    with pytest.raises(TypeError, match="not a fault"):
        faults.Compose(3)
    assert set(faults.available()) == {"bit-flip", "crash", "drop", "nonfinite", "packet-loss", "straggler"}
