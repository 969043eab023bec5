"""Byzantine attacks on updates: what the ``f`` faulty workers send.

>>> import torch
>>> from robustagg import attacks
>>> honest = torch.randn(12, 100)
>>> attacks.get("alie")(honest, f=3).shape
torch.Size([3, 100])

Every attack is called as ``attack(honest, f, *, aggregator=None, generator=None)`` and
returns an ``(f, d)`` tensor in ``honest``'s dtype and device (see :class:`Attack`).
``available()`` lists the names; ``docs/threats.md`` gives each formula and source.
The label-flip attack of the MoNNA paper is a data attack: see
:func:`robustagg.poisoning.label_flip` (the trainer computes the Byzantine workers' updates
on flipped labels).
"""

from typing import Any, List

from robustagg.attacks.base import REGISTRY, Attack, RandomAttack, register
from robustagg.attacks.classic import (
    ALIE, FOE, IPM, Gaussian, Inf, Mimic, NaN, Random, Reverse, SignFlip, Zero, alie_z,
)
from robustagg.attacks.gradient_label_flip import GradientLabelFlip, flipped_gradient  # needs a model: not registered
from robustagg.attacks.optimized import ALIEOpt, FOEOpt, IPMOpt, LineSearchAttack, evaluate_rule, line_search


def get(name: str, **params: Any) -> Attack:
    """Build the attack registered as ``name``: ``get("alie", z=1.5)``, ``get("alie-opt")``."""
    return REGISTRY.get(name, **params)


def available() -> List[str]:
    """Names of every registered attack."""
    return REGISTRY.available()


__all__ = [
    "ALIE", "ALIEOpt", "Attack", "FOE", "FOEOpt", "Gaussian", "GradientLabelFlip", "IPM", "IPMOpt", "Inf", "LineSearchAttack",
    "Mimic", "NaN", "REGISTRY", "Random", "RandomAttack", "Reverse", "SignFlip", "Zero", "alie_z",
    "available", "evaluate_rule", "flipped_gradient", "get", "line_search", "register",
]
