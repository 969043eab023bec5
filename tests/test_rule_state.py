"""``state_dict()`` / ``load_state_dict()``: only the state kept between calls, restored bit-identically."""

from __future__ import annotations

import io

import pytest
import torch

import robustagg as ra

STATEFUL = {"centered-clipping": {"center"}, "bucketing": {"generator"}, "dnc": {"generator"},
            "clipped-clustering": {"norms"}}


def _inputs(seed, n=9, d=4):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _through_disk(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("name", ra.available())
def test_state_holds_only_what_is_kept_between_calls(name):
    rule = ra.get(name, f=1)
    rule(_inputs(0))
    state = rule.state_dict()
    assert set(state) == STATEFUL.get(name, set())  # no hyper-parameters, no `last`, no scratch


BUILDERS = {
    "centered-clipping": lambda: ra.get("centered-clipping", f=1, tau=0.5, iters=2),
    "bucketing": lambda: ra.get("bucketing", f=1, s=2, seed=4),
    "pipeline": lambda: ra.pipeline(ra.get("bucketing", f=1, s=2, seed=4), ra.get("centered-clipping", f=1, tau=0.5)),
}


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_a_restored_rule_continues_bit_identically(kind):
    rule = BUILDERS[kind]()
    for t in range(3):
        rule(_inputs(t))
    state = _through_disk(rule.state_dict())
    restored = BUILDERS[kind]()
    restored.load_state_dict(state)
    for t in range(3, 7):
        assert torch.equal(rule(_inputs(t)), restored(_inputs(t)))


def test_a_state_dict_is_a_snapshot_not_a_view():
    rule = BUILDERS["pipeline"]()
    rule(_inputs(0))
    state = rule.state_dict()
    before = [s.copy() for s in state["stages"]]
    rule(_inputs(1))
    fresh = BUILDERS["pipeline"]()
    fresh.load_state_dict(state)
    rule.load_state_dict({"stages": before})
    assert torch.equal(rule(_inputs(2)), fresh(_inputs(2)))


def test_loading_a_fresh_state_resets():
    rule = ra.get("centered-clipping", tau=0.5)
    fresh_state = rule.state_dict()
    first = rule(_inputs(0))
    rule(_inputs(1))
    rule.load_state_dict(fresh_state)
    assert torch.equal(rule(_inputs(0)), first)


def test_bad_state_dicts_name_the_key():
    with pytest.raises(ValueError, match=r"unknown state key\(s\) \['centre'\]"):
        ra.get("centered-clipping").load_state_dict({"centre": None})
    with pytest.raises(ValueError, match="lacks \\['generator'\\]"):
        ra.get("bucketing").load_state_dict({})
    with pytest.raises(ValueError, match="unknown state key"):
        ra.get("krum").load_state_dict({"center": None})
    with pytest.raises(TypeError, match="must be a dict"):
        ra.get("krum").load_state_dict([])
    with pytest.raises(ValueError, match=r"1 stage\(s\), the pipeline has 2"):
        ra.pipeline(ra.get("nnm"), ra.get("median")).load_state_dict({"stages": [{}]})
