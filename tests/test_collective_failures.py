"""Robust all-reduce failures (issue 16, item 5): a rank that sends NaN is dropped and counted
on every rank; ranks that disagree on ``d`` or on the rule all raise ValueError; a rank that
stops answering makes the others raise CollectiveError after the timeout instead of hanging."""

from __future__ import annotations

import pytest
import torch
from collective_worker import launch

import robustagg as ra


def test_nan_rank_mismatched_ranks_and_hung_rank(tmp_path):
    results = launch(3, "nanrank,mismatch,hang", tmp_path)
    honest = torch.stack([results[r]["nanrank"]["row"] for r in range(2)])
    for r in range(3):
        got = results[r]["nanrank"]
        assert got["dropped"] == 1 and got["kept"].tolist() == [0, 1]
        assert torch.equal(got["out"], ra.get("mean")(honest))
    for r in range(3):  # another d, another rule on rank 0: a one-line ValueError on every rank
        size, rule = results[r]["mismatch"]["errors"]
        assert "rank 0: (1, 5, float32)" in size and "rank 1: (1, 4, float32)" in size
        assert f"rank(s) [1, 2] pass another rule than rank 0 (rank {r} passes TrimmedMean(f={int(r == 0)}))" in rule
        assert results[r]["mismatch"]["after"].tolist() == [1.0, 1.0, 1.0]
    for r in range(2):  # the last rank slept 6 s; the others gave up after the 2 s timeout
        hang = results[r]["hang"]
        assert hang["error"] is not None and "timeout 2 s" in hang["error"], hang
        assert hang["seconds"] < 5.0


@pytest.mark.parametrize("stages", [["dnc"], ["fltrust"], ["nnm", "fltrust"]])
def test_rules_that_do_not_split_over_shards_are_refused_up_front(stages):
    """DnC and FLTrust have no shard decomposition yet: a clear error before any communication
    (not a silently different aggregate)."""
    import robustagg as ra
    from robustagg.collective import robust_all_reduce

    built = [ra.get(name, f=1) for name in stages]
    rule = built[0] if len(built) == 1 else ra.pipeline(*built)
    with pytest.raises(ValueError, match=f"{stages[-1]} runs in one process only"):
        robust_all_reduce(torch.zeros(4), rule)
