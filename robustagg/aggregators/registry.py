"""The aggregator registry: ``robustagg.get(name, **params)`` and ``robustagg.available()``."""

from __future__ import annotations

from typing import Any, List

from robustagg._registry import Registry

REGISTRY = Registry("aggregator")
register = REGISTRY.register


def get(name: str, **params: Any):
    """Build the rule or pre-aggregator registered as ``name`` with ``params``.

    >>> import robustagg as ra
    >>> ra.get("trimmed-mean", f=2)
    TrimmedMean(f=2)
    """
    return REGISTRY.get(name, **params)


def available() -> List[str]:
    """Names of every registered rule and pre-aggregator."""
    return REGISTRY.available()
