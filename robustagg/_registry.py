"""Name -> class registries with helpful errors (shared by rules, attacks, faults...)."""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Dict, List, TypeVar

T = TypeVar("T")


def normalize_name(name: str) -> str:
    """Registry names are lower case with dashes: ``"Trimmed_Mean"`` -> ``"trimmed-mean"``."""
    if not isinstance(name, str):
        raise TypeError(f"a name must be a string, got {type(name).__name__}")
    return name.strip().lower().replace("_", "-").replace(" ", "-")


class Registry:
    """A mapping from names to factories (usually classes).

    ``get(name, **params)`` builds the object and turns the two common mistakes,
    an unknown name and an unknown parameter, into errors that say what exists.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, Callable[..., Any]] = {}
        self._aliases: Dict[str, str] = {}

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        def decorator(factory: T) -> T:
            key = normalize_name(name)
            if key in self._items or key in self._aliases:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._items[key] = factory  # type: ignore[assignment]
            for alias in aliases:
                self._aliases[normalize_name(alias)] = key
            if isinstance(factory, type) and not factory.__dict__.get("name"):
                factory.name = key  # type: ignore[attr-defined]  (not inherited from a parent rule)
            return factory

        return decorator

    def available(self) -> List[str]:
        return sorted(self._items)

    def resolve(self, name: str) -> Callable[..., Any]:
        key = normalize_name(name)
        key = self._aliases.get(key, key)
        if key not in self._items:
            choices = self.available()
            close = difflib.get_close_matches(key, choices + list(self._aliases), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(choices)}"
            )
        return self._items[key]

    def get(self, name: str, **params: Any) -> Any:
        factory = self.resolve(name)
        check_params(factory, params, f"{self.kind} {normalize_name(name)!r}")
        return factory(**params)

    def __contains__(self, name: str) -> bool:
        key = normalize_name(name)
        return key in self._items or key in self._aliases


def check_params(factory: Callable[..., Any], params: Dict[str, Any], what: str) -> None:
    """Raise ``TypeError`` naming the accepted parameters when ``params`` has an unknown key."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature
        return
    accepted = [
        p.name
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
    ]
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    for key in params:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise TypeError(
                f"{what} has no parameter {key!r}.{hint} It takes: {', '.join(accepted) or 'nothing'}"
            )


class ParamsRepr:
    """``repr`` from the constructor's parameters: ``TrimmedMean(f=2)``.

    Every parameter of ``__init__`` that is stored under the same attribute name is shown;
    subclasses adjust what is shown by overriding :meth:`_params`.
    """

    def _params(self) -> Dict[str, Any]:
        names = inspect.signature(type(self).__init__).parameters
        return {k: getattr(self, k) for k in names if k != "self" and hasattr(self, k)}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({params})"

