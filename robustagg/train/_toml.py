"""Kept for imports of ``robustagg.train._toml``: the TOML helpers live in :mod:`robustagg._toml`."""

from robustagg._toml import dumps, loads, parse_scalar, read_toml, tomllib  # noqa: F401
