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


class _WholeVector(ra.aggregators.base.Aggregator):
    """A rule that declares it needs every coordinate in one process."""

    name = "whole-vector"
    shardable = False

    def _aggregate(self, X, f, G):
        return X.mean(dim=0)


@pytest.mark.parametrize("pipe", [False, True])
def test_rules_that_do_not_split_over_shards_are_refused_up_front(pipe):
    """A rule (or a pipeline's stage) with ``shardable = False``: a clear error before any
    communication (not a silently different aggregate). Every registered rule splits."""
    from robustagg.collective import robust_all_reduce

    rule = ra.pipeline(ra.get("nnm", f=1), _WholeVector(f=1)) if pipe else _WholeVector(f=1)
    with pytest.raises(ValueError, match="whole-vector runs in one process only"):
        robust_all_reduce(torch.zeros(4), rule)
    from robustagg.aggregators.registry import REGISTRY, available

    assert [name for name in available() if not REGISTRY.resolve(name).shardable] == []
