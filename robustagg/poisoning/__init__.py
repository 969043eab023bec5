"""Data poisoning: functions over ``(X, y)`` returning ``(X_poisoned, y_poisoned, poisoned_indices)``.

>>> import numpy as np
>>> from robustagg import poisoning
>>> X, y = np.zeros((100, 8, 8)), np.arange(100) % 10
>>> Xp, yp, idx = poisoning.label_flip(X, y, fraction=0.3, seed=1)
>>> len(idx), bool((yp[idx] == 9 - y[idx]).all()), bool((y == np.arange(100) % 10).all())
(30, True, True)

Every function copies its inputs (numpy or torch, returned in the same type) and never
modifies them. ``get(name, **params)`` builds a configured poisoner ``p(X, y)`` from the
registry (``available()`` lists the names). A Byzantine worker that poisons its data still
computes its update honestly on the poisoned copy: the trainer applies these functions to
the worker's partition (MoNNA's "LF" attack is ``label_flip`` with ``C = 10``).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, List

from robustagg._registry import Registry
from robustagg.poisoning.augment import augmented
from robustagg.poisoning.backdoor import apply_trigger, attack_success_rate, backdoor, patch_box
from robustagg.poisoning.labels import label_flip, targeted_label_flip

REGISTRY = Registry("poisoning")


class Poisoner:
    """A poisoning function with its parameters bound: ``Poisoner(label_flip, fraction=0.2)(X, y)``."""

    def __init__(self, function: Callable[..., Any], **params: Any) -> None:
        try:  # unknown or missing parameters fail now, not at the first call
            inspect.signature(function).bind(None, None, **params)
        except TypeError as exc:
            raise TypeError(f"poisoning {function.__name__!r}: {exc}") from None
        self.function = function
        self.params = params

    def __call__(self, X: Any, y: Any):
        return self.function(X, y, **self.params)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"Poisoner({self.function.__name__}{', ' if args else ''}{args})"


def _registered(name: str, function: Callable[..., Any]) -> None:
    sig = inspect.signature(function)
    keyword = [p for n, p in sig.parameters.items() if n not in ("X", "y")]

    def factory(**params: Any) -> Poisoner:
        return Poisoner(function, **params)

    factory.__signature__ = sig.replace(parameters=keyword)  # type: ignore[attr-defined]
    factory.__doc__ = function.__doc__
    REGISTRY.register(name)(factory)


# one call per name, with the name as a literal: `robustagg list` reads them from the source
_registered("label-flip", label_flip)
_registered("targeted-label-flip", targeted_label_flip)
_registered("backdoor", backdoor)
_registered("augmented", augmented)


def get(name: str, **params: Any) -> Poisoner:
    """A configured poisoner: ``get("backdoor", target=0, fraction=0.05)(X, y)``."""
    return REGISTRY.get(name, **params)


def available() -> List[str]:
    """Names of every registered poisoning function."""
    return REGISTRY.available()


__all__ = [
    "Poisoner", "REGISTRY", "apply_trigger", "attack_success_rate", "augmented", "available", "backdoor",
    "get", "label_flip", "patch_box", "targeted_label_flip",
]
