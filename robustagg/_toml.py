"""Reading and writing the TOML configuration files of every subcommand (training, Flower,
elections): :func:`read_toml` (one-line errors naming the file), a small writer
(:func:`dumps`) and the ``--set`` value parser (:func:`parse_scalar`).

This module sits below ``robustagg.train`` and ``robustagg.election`` and imports neither.

Keys whose value is ``None`` are left out (TOML has no null; in a configuration ``None``
means "the default").

The standard library reads TOML (:mod:`tomllib`) but cannot write it; configurations are
nested tables of scalars, arrays and inline tables, which this writer covers. ``loads(dumps(d))``
gives back ``d`` (tested).
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from typing import Any, Dict, List, Union

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(key: str) -> str:
    return key if _BARE.match(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(str(k))} = {_value(v)}" for k, v in value.items() if v is not None) + "}"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _table(lines: List[str], path: List[str], table: Dict[str, Any]) -> None:
    table = {k: v for k, v in table.items() if v is not None}  # TOML has no null: None = the default
    plain = {k: v for k, v in table.items() if not isinstance(v, dict) and not _is_table_array(v)}
    # a nested dict that is empty, or whose values are all scalars, is written inline when it
    # is a ``params``-like leaf; proper sections (dicts holding dicts) become sub-tables
    subtables = {k: v for k, v in table.items() if isinstance(v, dict)}
    arrays = {k: v for k, v in table.items() if _is_table_array(v)}
    for key, value in plain.items():
        lines.append(f"{_key(key)} = {_value(value)}")
    inline = {k: v for k, v in subtables.items() if path and not any(isinstance(x, dict) for x in v.values())}
    for key, value in inline.items():
        lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in subtables.items():
        if key in inline:
            continue
        lines.append("")
        lines.append("[" + ".".join(_key(p) for p in path + [key]) + "]")
        _table(lines, path + [key], value)
    for key, items in arrays.items():
        for item in items:
            lines.append("")
            lines.append("[[" + ".".join(_key(p) for p in path + [key]) + "]]")
            _table(lines, path + [key], {k: v for k, v in item.items()})


def dumps(data: Dict[str, Any]) -> str:
    """``data`` (nested dicts of scalars, lists and dicts) as a TOML document."""
    lines: List[str] = []
    _table(lines, [], data)
    return "\n".join(lines).lstrip("\n") + "\n"


def read_toml(path: Union[str, "os.PathLike[str]"]) -> Dict[str, Any]:
    """The tables of the TOML file ``path``.

    Raises ``OSError`` (e.g. a missing file) or ``ValueError`` (a directory, a TOML syntax
    error), each with a one-line message naming the file.
    """
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except IsADirectoryError:
        raise ValueError(f"configuration file {str(path)!r} is a directory") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: invalid TOML: {exc}") from None


def loads(text: str) -> Dict[str, Any]:
    return tomllib.loads(text)


def parse_scalar(text: str) -> Any:
    """A ``--set`` value: any TOML value (``0.1``, ``true``, ``[1, 2]``, ``{p = 0.5}``, ``"x"``);
    anything that does not parse as TOML (``krum``, ``trimmed-mean``) is taken as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
