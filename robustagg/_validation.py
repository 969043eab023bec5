"""The one set of argument checks used by every rule, attack and fault.

Each helper returns the validated value so constructors read
``self.f = check_int(f, "f", minimum=0)``. Aggregation rules declare their parameters
instead (``_parameter_constraints``, with :class:`Integer`, :class:`Real`, :class:`Choice`,
:class:`Opaque`) and read ``self.tau = self._check("tau", tau)``; each constraint also lists
values it rejects, from which a registry-wide test checks every rule's errors.
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


# ------------------------------------------------------------------ declared constraints
#
# A rule declares ``_parameter_constraints = {"tau": Real(minimum=0, strict_min=True), ...}``
# and its constructor reads ``self.tau = self._check("tau", tau)``: the checks live here,
# in one place, and a registry-wide test derives invalid values from the declarations.


class Integer:
    """An ``int`` (``bool`` and floats rejected, ``2.0`` too) in ``[minimum, maximum]``; ``None``
    is accepted when ``optional``."""

    def __init__(self, minimum: Optional[int] = None, maximum: Optional[int] = None, optional: bool = False) -> None:
        self.minimum, self.maximum, self.optional = minimum, maximum, optional

    def check(self, value: Any, name: str) -> Any:
        if value is None and self.optional:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
        return check_int(value, name, minimum=self.minimum, maximum=self.maximum)

    def invalid_values(self) -> list:
        out: list = [1.5, 2.0, "1", True] + ([] if self.optional else [None])
        if self.minimum is not None:
            out.append(self.minimum - 1)
        if self.maximum is not None:
            out.append(self.maximum + 1)
        return out


class Real:
    """A real number (not NaN, not ``bool``) in the interval the bounds give."""

    def __init__(self, minimum: Optional[float] = None, maximum: Optional[float] = None, *,
                 strict_min: bool = False, strict_max: bool = False) -> None:
        self.minimum, self.maximum = minimum, maximum
        self.strict_min, self.strict_max = strict_min, strict_max

    def check(self, value: Any, name: str) -> float:
        return check_float(value, name, minimum=self.minimum, maximum=self.maximum,
                           strict_min=self.strict_min, strict_max=self.strict_max)

    def invalid_values(self) -> list:
        out: list = [float("nan"), "1", None, True]
        if self.minimum is not None:
            out.append(self.minimum if self.strict_min else self.minimum - 1.0)
        if self.maximum is not None:
            out.append(self.maximum if self.strict_max else self.maximum + 1.0)
        return out


class Choice:
    """One of a few strings."""

    def __init__(self, *options: str) -> None:
        self.options = options

    def check(self, value: Any, name: str) -> str:
        return check_choice(value, name, self.options)

    def invalid_values(self) -> list:
        return ["no-such-option", None, 1]


class Opaque:
    """A parameter the rule's constructor checks itself (e.g. an init matrix); ``invalid``
    lists values it must reject."""

    def __init__(self, invalid: Sequence[Any]) -> None:
        self.invalid = list(invalid)

    def check(self, value: Any, name: str) -> Any:
        return value

    def invalid_values(self) -> list:
        return list(self.invalid)
