"""Robust all-reduce (issue 16): every rule, pipelines, non-finite rows, uneven shards, ``k``
updates per rank, the DDP hook and ``robust_step``, in 3 (and 4) gloo processes, against the
single-process rule on ``torch.cat`` of every rank's updates.

Each world size is launched once per module (``tests/collective_worker.py`` runs every case
and saves what each rank got); the tests below compare.
"""

from __future__ import annotations

import math
import sys
import warnings

import pytest
import torch

import collective_worker as cw
from collective_worker import launch
import robustagg as ra
from robustagg.collective import robust_all_reduce, shard_bounds

RTOL = 1e-6  # float32 aggregates: ||got - ref|| <= RTOL ||ref|| (and entries of ``last`` to RTOL of their scale)
# ``last``'s diagnostics (scores, weights) come from a Gram matrix summed over shards in another
# order; some amplify that rounding (flag's IRLS weights (1 - v + eps)^(-1/2) at v ~ 1 by ~100x):
# compared per entry to 1e-4 relative. Selections and counts are compared exactly.
LAST_RTOL = 1e-4
# The Flag Aggregator's IRLS amplifies the Gram matrix's rounding: on "nan:flag" round 1 the
# single-process float32 result is itself 6.0e-7 (relative) from the float64 one, the collective
# 4.9e-7, and the two 1.05e-6 apart. Its outputs are compared to 2e-6.
FLAG_RTOL = 2e-6


@pytest.fixture(scope="module")
def world3(tmp_path_factory):
    return launch(3, "cases,hooks", tmp_path_factory.mktemp("w3"))


@pytest.fixture(scope="module")
def world4(tmp_path_factory):
    return launch(4, "some", tmp_path_factory.mktemp("w4"))


def same(a, b, where: str, rtol: float = 0.0) -> None:
    """``a`` (a rank's) equals ``b`` (the reference): float tensors to RTOL of their scale (and
    ``rtol`` per entry), integers and lists exactly."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, where
        if a.dtype.is_floating_point:
            scale = float(b.abs().nan_to_num(0, 0, 0).max()) if b.numel() else 0.0
            ok = torch.isclose(a.double(), b.double(), rtol=rtol, atol=max(scale, 1e-30) * RTOL, equal_nan=True)
            assert bool(ok.all()), f"{where}: max diff {float((a.double() - b.double()).abs().max()):.3g}, scale {scale:.3g}"
        else:
            assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            same(a[k], b[k], f"{where}[{k!r}]", rtol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]", rtol)
    elif isinstance(a, float) and isinstance(b, float) and not (math.isnan(a) and math.isnan(b)):
        assert a == pytest.approx(b, rel=max(rtol, RTOL), abs=1e-12), where
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"


def close(got: torch.Tensor, ref: torch.Tensor, where: str, rtol: float = RTOL) -> None:
    """``got`` equals ``ref`` to ``rtol`` relative (Euclidean norms, in float64)."""
    assert got.shape == ref.shape, where
    err, scale = float(torch.linalg.vector_norm((got - ref).double())), float(torch.linalg.vector_norm(ref.double()))
    assert err <= rtol * scale, f"{where}: relative error {err / max(scale, 1e-300):.3g}"


def check(results, world: int, case: str) -> None:
    rule = cw.build(case)
    for t in range(cw.ROUNDS):
        X = torch.cat(cw.inputs(case, world, t))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = rule(X)
        got = [results[r][case][t] for r in range(world)]
        for r in range(world):
            where = f"{case} round {t} rank {r}"
            assert "error" not in got[r], f"{where}: {got[r]['error']}"
            close(got[r]["out"], ref, f"{where} output", FLAG_RTOL if "flag" in case else RTOL)
            same(got[r]["last"], rule.last, f"{where} last", LAST_RTOL)  # identical selections
            same(got[r]["kept"], rule.kept, f"{where} kept")
            assert got[r]["dropped"] == rule.dropped, where
            same(got[r]["state"], rule.state_dict(), f"{where} state")
            # and every rank holds bit for bit the same aggregate, last and state
            assert torch.equal(got[r]["out"], got[0]["out"]), where
            same(got[r]["last"], got[0]["last"], f"{where} last vs rank 0")


@pytest.mark.parametrize("case", list(cw.CASES))
def test_every_rule_matches_one_process(world3, case):
    check([r["cases"] for r in world3], 3, case)


@pytest.mark.parametrize("case", cw.SOME)
def test_four_ranks(world4, case):
    check([r["some"] for r in world4], 4, case)


def test_nonfinite_rows_dropped_and_counted(world3):
    """A NaN row, an Inf row and a row of 1e20 (its squared norm overflows float32): the
    distance rules drop all three, coordinate rules the two non-finite ones, on every rank."""
    for case, dropped in (("nan:krum", 3), ("nan:median", 2), ("nan:nnm>krum", 3)):
        for r in range(3):
            assert world3[r]["cases"][case][0]["dropped"] == dropped, case


@pytest.mark.parametrize("kind", ["ddp", "step"])
def test_ddp_hook_and_robust_step(world3, kind):
    """Two steps (DDP rebuilds its buckets after the first; several buckets each), the last
    rank Byzantine (-10 x its gradient): every rank's gradient is the rule over whole gradients."""
    rule = ra.get("geometric-median", f=1) if kind == "ddp" else ra.get("trimmed-mean", f=1)
    for step in range(2):
        rows = torch.stack([world3[r]["hooks"][kind][step]["row"] for r in range(3)])
        ref = rule(rows)
        for r in range(3):
            close(world3[r]["hooks"][kind][step]["got"], ref, f"{kind} step {step} rank {r}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak resident set from /proc (Linux only)")
def test_memory_per_rank_at_most_three_rows(tmp_path):
    """Issue 16: at most 3 d floats per rank beyond its own input (one row of d = 4M floats per
    rank, 2 ranks). The received (n, d / w) block is freed before the result is gathered, and
    with gloo each rank broadcasts its shard into its slice of the result (gloo's all-gather
    stages a copy of its output: 3.5 d in all)."""
    results = launch(2, "memory", tmp_path, env={"MALLOC_MMAP_THRESHOLD_": "65536"})
    for r in range(2):
        for rule, peak in results[r]["memory"].items():
            assert peak <= 3.0, f"rank {r} {rule}: peak {peak:.2f} d"


def test_shard_bounds():
    assert shard_bounds(10, 3) == [0, 4, 8, 10]
    assert shard_bounds(9, 3) == [0, 3, 6, 9]
    assert shard_bounds(2, 4) == [0, 1, 2, 2, 2]


def test_needs_an_initialised_group():
    with pytest.raises(RuntimeError, match="init_process_group"):
        robust_all_reduce(torch.ones(3), ra.get("median"))
    with pytest.raises(TypeError, match="robustagg rule"):
        robust_all_reduce(torch.ones(3), "median")
