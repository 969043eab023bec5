"""The one set of argument checks used by every rule, attack and fault.

Each helper returns the validated value so constructors read
``self.f = check_int(f, "f", minimum=0)``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Sequence


def check_int(value: Any, name: str, *, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_float(
    value: Any,
    name: str,
    *,
    minimum: Optional[float] = None,
    maximum: Optional[float] = None,
    strict_min: bool = False,
    strict_max: bool = False,
) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    if minimum is not None and (value < minimum or (strict_min and value == minimum)):
        op = ">" if strict_min else ">="
        raise ValueError(f"{name} must be {op} {minimum}, got {value}")
    if maximum is not None and (value > maximum or (strict_max and value == maximum)):
        op = "<" if strict_max else "<="
        raise ValueError(f"{name} must be {op} {maximum}, got {value}")
    return value


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_f_bound(rule: str, n: int, f: int, *, bound: str) -> None:
    """Raise the contract's error when ``n`` inputs cannot tolerate ``f`` Byzantine ones.

    ``bound`` is one of ``"n > f"``, ``"n > 2f"``, ``"n > 2f + 2"``,
    ``"n >= 4f + 3"`` and names the rule's requirement in the message.
    """
    ok = {
        "n > f": n > f,
        "n > 2f": n > 2 * f,
        "n > 2f + 2": n > 2 * f + 2,
        "n >= 4f + 3": n >= 4 * f + 3,
    }
    if bound not in ok:
        raise ValueError(f"unknown bound {bound!r}")
    if not ok[bound]:
        raise ValueError(f"{rule} needs {bound} (got n={n}, f={f})")


def min_inputs(bound: str, f: int) -> int:
    """The smallest ``n`` that satisfies ``bound`` for a given ``f``."""
    return {
        "n > f": f + 1,
        "n > 2f": 2 * f + 1,
        "n > 2f + 2": 2 * f + 3,
        "n >= 4f + 3": 4 * f + 3,
    }[bound]
