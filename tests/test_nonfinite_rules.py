"""Every core rule returns a finite output when at most f workers send NaN/Inf updates."""

import warnings

import pytest
import torch

import robustagg as ra
from robustagg import attacks, faults

F = 3


def build(name):
    rule = ra.get(name, f=F)
    n = max(15, rule.min_inputs())
    return rule, n


def stacked(n, bad, attack_name, seed):
    """``n`` rows with ``bad`` Byzantine rows from ``attack_name`` at random positions."""
    g = torch.Generator().manual_seed(seed)
    honest = torch.randn(n - bad, 30, generator=g) + 1.0
    byz = attacks.get(attack_name)(honest, bad)
    X = torch.cat([honest, byz])
    return X[torch.randperm(n, generator=g)]


@pytest.mark.parametrize("name", ra.available())
@pytest.mark.parametrize("attack_name", ["nan", "inf"])
def test_rule_finite_under_nonfinite_workers(name, attack_name):
    for bad in (1, F):
        rule, n = build(name)
        X = stacked(n, bad, attack_name, seed=bad)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ra.NonFiniteUpdateWarning)
            out = rule(X)
        assert torch.isfinite(out).all(), f"{name} returned non-finite output with {bad} {attack_name} rows"
    # -inf and partially corrupted rows (a NaN/Inf in a few coordinates) count as non-finite too
    rule, n = build(name)
    X = stacked(n, 0, "zero", seed=7)
    corrupt = faults.get("nonfinite", value="mixed", fraction=0.2, seed=3)
    X[:F] = torch.stack([corrupt(0, w, X[w]) for w in range(F)])
    X[0, 0] = -float("inf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ra.NonFiniteUpdateWarning)
        assert torch.isfinite(rule(X)).all()


@pytest.mark.parametrize("name", ra.available())
def test_more_than_f_nonfinite_rows_is_a_clear_error(name):
    rule, n = build(name)
    X = stacked(n, F + 1, "nan", seed=0)
    with pytest.raises(ValueError, match="non-finite"):
        rule(X)
