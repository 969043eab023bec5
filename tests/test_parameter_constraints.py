"""Declared parameter constraints, checked registry-wide; the bound's docs are generated from ``bound``."""

from __future__ import annotations

import inspect
import pathlib
import re

import pytest

import robustagg as ra
from robustagg._validation import check_f_bound
from robustagg.aggregators.registry import REGISTRY, rule_table

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "index.md"


def _parameters(name):
    sig = inspect.signature(REGISTRY.resolve(name).__init__)
    return [p for p in sig.parameters if p != "self"]


CASES = [
    (name, param, value)
    for name in ra.available()
    for param in _parameters(name)
    for value in REGISTRY.resolve(name)._parameter_constraints[param].invalid_values()
]


@pytest.mark.parametrize("name", ra.available())
def test_every_parameter_is_declared(name):
    cls = REGISTRY.resolve(name)
    assert set(_parameters(name)) == set(cls._parameter_constraints), name
    ra.get(name)  # the defaults satisfy the constraints


@pytest.mark.parametrize("name,param,value", CASES, ids=[f"{n}-{p}-{v!r}" for n, p, v in CASES])
def test_an_invalid_value_is_rejected_naming_the_parameter(name, param, value):
    with pytest.raises((ValueError, TypeError)) as info:
        ra.get(name, **{param: value})
    assert re.search(rf"\b{param}\b", str(info.value)), str(info.value)
    assert "\n" not in str(info.value)


def test_every_rule_has_invalid_cases():
    assert {name for name, _, _ in CASES} == set(ra.available())


def test_an_integral_float_is_not_an_integer():
    with pytest.raises(TypeError, match="f must be an integer, got 2.0"):
        ra.get("median", f=2.0)
    with pytest.raises(TypeError, match="s must be an integer"):
        ra.get("bucketing", s=3.0)


@pytest.mark.parametrize("name", ra.available())
def test_docstring_bound_comes_from_bound(name):
    cls = REGISTRY.resolve(name)
    check_f_bound(name, 100, 1, bound=cls.bound)  # a bound the contract knows
    doc = cls.__doc__
    assert doc.count(f"Needs ``{cls.bound}``") == 1
    assert len(re.findall(r"[Nn]eeds ``n", doc)) == 1  # no other, hand-written bound


def test_docs_rule_table_is_generated_from_the_rules():
    text = DOCS.read_text(encoding="utf-8")
    assert rule_table() in text, "docs/index.md is stale: run `python -m robustagg.aggregators docs/index.md`"
    for name in ra.available():
        cls = REGISTRY.resolve(name)
        assert cls.summary and cls.bound.replace(">=", "≥") in rule_table()
