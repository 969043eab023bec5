"""Every registered rule runs with its defaults and returns the documented shape."""

import pytest
import torch

import robustagg as ra


@pytest.mark.parametrize("name", ra.available())
def test_every_rule_runs(name):
    X = torch.randn(15, 50)
    rule = ra.get(name, f=3)
    out = rule(X)
    assert torch.isfinite(out).all()
    if isinstance(rule, ra.PreAggregator):
        assert out.dim() == 2 and out.shape[1] == 50
    else:
        assert out.shape == (50,)
