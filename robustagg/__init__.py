"""robustagg: Byzantine-robust aggregation and collaborative learning.

>>> import torch, robustagg as ra
>>> updates = torch.randn(10, 1000)
>>> ra.get("trimmed-mean", f=2)(updates).shape
torch.Size([1000])
"""

from robustagg import aggregators
from robustagg.aggregators import (
    Aggregator,
    NonFiniteUpdateWarning,
    Pipeline,
    PreAggregator,
    available,
    flatten,
    get,
    pipeline,
    unflatten,
)
from robustagg.gradients import aggregate_gradients, stack_gradients

__version__ = "0.1.0"

_LAZY = ("attacks", "data", "faults", "models", "participation", "poisoning", "train")


def __getattr__(name):
    """``robustagg.attacks`` etc. are imported on first access (keeps ``import robustagg`` light)."""
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"robustagg.{name}")
    raise AttributeError(f"module 'robustagg' has no attribute {name!r}")

__all__ = [
    "Aggregator", "NonFiniteUpdateWarning", "Pipeline", "PreAggregator", "aggregators", "available",
    "flatten", "get", "pipeline", "unflatten", "__version__",
]
