"""System faults on what a worker sends: seeded, composable ``fault(t, worker, update)`` transforms.

>>> import torch
>>> from robustagg import faults
>>> chain = faults.Compose(faults.get("straggler", delay=1), faults.get("packet-loss", fraction=0.5, seed=3))
>>> chain(0, 4, torch.ones(6)) is None          # round 0's update is still in flight
True
>>> chain(1, 4, torch.ones(6)).shape            # round 0's update arrives at round 1, half zeroed
torch.Size([6])

A fault returns the (possibly changed) update or ``None``, the *missing* update: nothing
from that worker reached the server in that round. Inputs are never modified in place.
``get(name, **params)`` builds a fault, ``available()`` lists them; randomness is derived
from ``(seed, t, worker)``, so a seed reproduces the same faults in any call order.
"""

from typing import Any, List

from robustagg.faults.base import MISSING, REGISTRY, Compose, Fault, is_missing, register
from robustagg.faults.transforms import BitFlip, Crash, Drop, NonFinite, PacketLoss, Straggler


def get(name: str, **params: Any) -> Fault:
    """Build the fault registered as ``name``: ``get("drop", q=0.2, seed=1)``."""
    return REGISTRY.get(name, **params)


def available() -> List[str]:
    """Names of every registered fault."""
    return REGISTRY.available()


def compose(*faults: Any) -> Compose:
    """``compose(a, b)(t, w, u) == b(t, w, a(t, w, u))``."""
    return Compose(*faults)


__all__ = [
    "BitFlip", "Compose", "Crash", "Drop", "Fault", "MISSING", "NonFinite", "PacketLoss", "REGISTRY",
    "Straggler", "available", "compose", "get", "is_missing", "register",
]
