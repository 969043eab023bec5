"""The configuration of one election run (``robustagg election CONFIG.toml``), read and checked.

A configuration names the dataset, how its training set is partitioned, the
base model, how each base model trains, and what to certify::

    out = "results/election-mnist5k"      # where models, scores and certificates go

    [data]
    dataset = "mnist-5k"                  # robustagg.data.load(dataset, **params)
    params = {}
    test_points = 1000                    # optional: the first n test points

    [partition]
    method = "fa"                         # "dpa" or "fa"
    k = 80
    d = 16                                # FA only (required there)
    hash = "pixel-sum"                    # or "sha256"
    seed = 0                              # FA only, optional: shift seed (default: the reference's)

    [model]
    name = "logistic"                     # robustagg.models.model_fn(name, **params)
    params = {}

    [train]                               # every key optional
    epochs = 30
    lr = 0.02
    batch_size = 10
    momentum = 0.9
    weight_decay = 0.0
    seed = 0
    jobs = 1

    [certify]                             # every key optional
    methods = ["fa", "fa+roe"]            # default: the partition's method and its run-off
    radii = [0, 5, 10, 15, 20, 25]

Unknown sections or keys raise a ``ValueError`` that suggests the closest known
name (``difflib``); values of the wrong type a ``TypeError``; values out of
range a ``ValueError``. Numbers are checked with :mod:`robustagg._validation`.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Dict, Mapping, Union

from robustagg._toml import read_toml
from robustagg._validation import check_choice, check_float, check_int

__all__ = ["DEFAULT_RADII", "SCHEMA", "load_config", "validate_config"]

DEFAULT_RADII = [0, 5, 10, 15, 20, 25]
_REQUIRED = object()

#: section -> key -> (kind, default, check options); kind is "str", "int", "float",
#: "table", "int list", "str list" or a tuple of allowed strings. ``out`` is top-level.
SCHEMA: Dict[str, Any] = {
    "out": ("str", "results/election", {}),
    "data": {
        "dataset": ("str", _REQUIRED, {}),
        "params": ("table", {}, {}),
        "test_points": ("int", None, {"minimum": 1}),
    },
    "partition": {
        "method": (("dpa", "fa"), _REQUIRED, {}),
        "k": ("int", _REQUIRED, {"minimum": 1}),
        "d": ("int", None, {"minimum": 1}),
        "hash": (("pixel-sum", "sha256"), "pixel-sum", {}),
        "seed": ("int", None, {}),
    },
    "model": {
        "name": ("str", _REQUIRED, {}),
        "params": ("table", {}, {}),
    },
    "train": {
        "epochs": ("int", 30, {"minimum": 0}),
        "lr": ("float", 0.02, {"minimum": 0.0}),
        "batch_size": ("int", 10, {"minimum": 1}),
        "momentum": ("float", 0.9, {"minimum": 0.0}),
        "weight_decay": ("float", 0.0, {"minimum": 0.0}),
        "seed": ("int", 0, {}),
        "jobs": ("int", 1, {"minimum": 1}),
    },
    "certify": {
        "methods": ("str list", None, {}),
        "radii": ("int list", DEFAULT_RADII, {"minimum": 0}),
    },
}


def _unknown(key: str, where: str, known: Any) -> ValueError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"unknown key {key!r} in {where}.{hint} Known keys: {', '.join(known)}")


def _check(value: Any, name: str, kind: Any, opts: Dict[str, Any]) -> Any:
    if isinstance(kind, tuple):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string, got {value!r} ({type(value).__name__})")
        return check_choice(value, name, kind)
    if kind == "str":
        if not isinstance(value, str) or not value:
            raise TypeError(f"{name} must be a non-empty string, got {value!r} ({type(value).__name__})")
        return value
    if kind == "int":
        return check_int(value, name, **opts)
    if kind == "float":
        return check_float(value, name, **opts)
    if kind == "table":
        if not isinstance(value, Mapping):
            raise TypeError(f"{name} must be a table ({{key = value, ...}}), got {value!r}")
        return dict(value)
    if not isinstance(value, (list, tuple)) or not value:  # "int list" / "str list"
        raise TypeError(f"{name} must be a non-empty list, got {value!r} ({type(value).__name__})")
    item = kind.split()[0]
    return [_check(v, f"{name}[{i}]", item, opts) for i, v in enumerate(value)]


def _section(raw: Mapping[str, Any], schema: Mapping[str, Any], where: str) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key in raw:
        if key not in schema:
            raise _unknown(key, where, schema)
    for key, (kind, default, opts) in schema.items():
        name = f"{where}.{key}" if where != "the configuration" else key
        if key in raw and not (raw[key] is None and default is None):  # None: "unset" (dicts only)
            out[key] = _check(raw[key], name, kind, opts)
        elif default is _REQUIRED:
            raise ValueError(f"{name} is required")
        else:
            out[key] = copy.deepcopy(default)
    return out


def validate_config(raw: Mapping[str, Any]) -> Dict[str, Any]:
    """Check a parsed configuration and fill in the defaults.

    Parameters
    ----------
    raw : mapping
        The TOML document as a dict (sections as nested dicts).

    Returns
    -------
    dict
        ``{"out": str, "data": {...}, "partition": {...}, "model": {...},
        "train": {...}, "certify": {...}}`` with every key of :data:`SCHEMA`;
        ``partition["d"]`` is 1 for DPA and ``certify["methods"]`` defaults to
        the partition's method and its run-off (e.g. ``["fa", "fa+roe"]``).

    Raises
    ------
    ValueError
        Unknown sections/keys (with the closest known name), missing required
        keys, values out of range, methods that do not fit the partition.
    TypeError
        Values of the wrong type.
    """
    if not isinstance(raw, Mapping):
        raise TypeError(f"a configuration must be a table, got {type(raw).__name__}")
    top = {key: spec for key, spec in SCHEMA.items() if isinstance(spec, tuple)}
    sections = [key for key, spec in SCHEMA.items() if isinstance(spec, dict)]
    for key in raw:
        if key not in SCHEMA:
            raise _unknown(key, "the configuration", list(SCHEMA))
        if key in sections and not isinstance(raw[key], Mapping):
            raise TypeError(f"[{key}] must be a section (table), got {raw[key]!r}")
    cfg = _section({k: v for k, v in raw.items() if k in top}, top, "the configuration")
    for key in sections:
        cfg[key] = _section(raw.get(key, {}), SCHEMA[key], key)
    part = cfg["partition"]
    if part["method"] == "fa":
        if part["d"] is None:
            raise ValueError("partition.d is required for method 'fa' (e.g. d = 16)")
    else:
        if part["d"] not in (None, 1):
            raise ValueError(f"partition.d applies to method 'fa' only (got d = {part['d']} with 'dpa')")
        if part["seed"] is not None:
            raise ValueError("partition.seed (the FA shift seed) applies to method 'fa' only")
        part["d"] = 1
    allowed = (part["method"], part["method"] + "+roe")
    methods = cfg["certify"]["methods"] or list(allowed)
    for i, m in enumerate(methods):
        check_choice(m, f"certify.methods[{i}] (partition method {part['method']!r})", allowed)
    cfg["certify"]["methods"] = list(dict.fromkeys(methods))
    return cfg


def load_config(source: Union[str, Path, Mapping[str, Any]]) -> Dict[str, Any]:
    """Read a TOML configuration file (or take a dict) and validate it.

    Parameters
    ----------
    source : path or mapping
        A ``.toml`` file, or an already parsed configuration.

    Returns
    -------
    dict
        See :func:`validate_config`.
    """
    if isinstance(source, Mapping):
        return validate_config(source)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"configuration file {str(path)!r} not found")
    raw = read_toml(path)
    try:
        return validate_config(raw)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{path}: {exc}") from None
