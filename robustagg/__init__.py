"""robustagg: Byzantine-robust aggregation and collaborative learning.

>>> import torch, robustagg as ra
>>> updates = torch.randn(10, 1000)
>>> ra.get("trimmed-mean", f=2)(updates).shape
torch.Size([1000])

Every name is imported on first access (PEP 562), so ``import robustagg`` and the
``robustagg`` command's ``--help`` and ``list`` do not import torch.
"""

import importlib

__version__ = "0.1.0"

#: names re-exported from robustagg.aggregators
_AGGREGATOR_NAMES = (
    "Aggregator", "NonFiniteUpdateWarning", "Pipeline", "PreAggregator", "available", "flatten", "get",
    "pipeline", "unflatten",
)
#: names re-exported from robustagg.gradients
_GRADIENT_NAMES = ("aggregate_gradients", "stack_gradients")
_LAZY = ("aggregators", "attacks", "collective", "data", "election", "faults", "models", "participation", "poisoning", "train")


def __getattr__(name):
    """``robustagg.get``, ``robustagg.attacks`` etc. are imported on first access."""
    if name in _AGGREGATOR_NAMES:
        return getattr(importlib.import_module("robustagg.aggregators"), name)
    if name in _LAZY:
        return importlib.import_module(f"robustagg.{name}")
    if name in _GRADIENT_NAMES:
        return getattr(importlib.import_module("robustagg.gradients"), name)
    raise AttributeError(f"module 'robustagg' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_AGGREGATOR_NAMES) | set(_GRADIENT_NAMES) | set(_LAZY))


__all__ = [
    "Aggregator", "NonFiniteUpdateWarning", "Pipeline", "PreAggregator", "aggregate_gradients", "aggregators",
    "available", "flatten", "get", "pipeline", "stack_gradients", "unflatten", "__version__",
]
