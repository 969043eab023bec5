"""The ``robustagg`` command.

Each subcommand lives in the package it belongs to and exposes two functions,
``add_arguments(parser)`` and ``run(args) -> int``; this module only wires them. A
subcommand's module is imported only when that subcommand runs, so ``robustagg --help``
imports neither torch nor Flower, and ``robustagg list`` reads the registered names from the
source files (``@register("name", ...)`` decorators) instead of importing the registries.
To add a subcommand, append ``(name, module, help)`` to :data:`SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

#: (name, module holding add_arguments/run, one-line help)
SUBCOMMANDS = [
    ("list", "robustagg.cli", "list rules, attacks, faults, poisoning, participation models, datasets, models, certification methods"),
    ("train", "robustagg.train.cli", "train a model under attack from a TOML configuration (parameter server or MoNNA)"),
    ("certify", "robustagg.election.cli", "certified accuracy of saved ensemble scores (DPA, FA, run-off election)"),
    ("election", "robustagg.election.cli", "train and certify a DPA/FA ensemble from a TOML configuration"),
    ("flower", "robustagg.flower_cli", "run a training configuration as a Flower simulation (needs robustagg[flower])"),
    ("reproduce", "robustagg.reproduce_cli", "rerun a seed paper's experiment at CPU scale (flag, monna, roe, afl, all)"),
]

_PACKAGE = Path(__file__).resolve().parent

#: family -> (source files, the registering callables, the module to import when a file
#: registers names that are not string literals)
FAMILIES: Dict[str, Tuple[Sequence[str], Sequence[str], str]] = {
    "rules": (("aggregators/*.py",), ("register",), "robustagg.aggregators"),
    "attacks": (("attacks/*.py",), ("register",), "robustagg.attacks"),
    "faults": (("faults/*.py",), ("register",), "robustagg.faults"),
    "poisoning": (("poisoning/__init__.py",), ("_registered",), "robustagg.poisoning"),
    "participation": (("participation/*.py",), ("register",), "robustagg.participation"),
    "datasets": (("data/*.py",), ("DATASETS.register",), "robustagg.data"),
    "models": (("models.py",), ("MODELS.register",), "robustagg.models"),
    "methods": (("election/certificates.py",), ("METHODS.register",), "robustagg.election"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:  # the `list` subcommand
    parser.add_argument("what", nargs="?", default="all", choices=["all", *FAMILIES])


def _callee(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_callee(node.value)}.{node.attr}"
    return ""


def registered_names(family: str) -> List[str]:
    """The names registered in ``family`` (as ``robustagg.<family>.available()`` lists them),
    read from the source; a family that registers computed names is imported instead."""
    patterns, callees, module = FAMILIES[family]
    names = set()
    for pattern in patterns:
        for path in sorted(_PACKAGE.glob(pattern)):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not (isinstance(node, ast.Call) and _callee(node.func) in callees and node.args):
                    continue
                first = node.args[0]
                if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                    return _imported(family, module)
                names.add(first.value.strip().lower().replace("_", "-").replace(" ", "-"))
    return sorted(names)


def _imported(family: str, module: str) -> List[str]:
    mod = importlib.import_module(module)
    registry = {"datasets": "DATASETS", "models": "MODELS", "methods": "METHODS"}.get(family, "REGISTRY")
    return getattr(mod, registry).available()


def run(args: argparse.Namespace) -> int:  # the `list` subcommand
    for name in FAMILIES:
        if args.what in ("all", name):
            print(f"{name}: {', '.join(registered_names(name))}")
    return 0


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported to add its arguments."""
    from robustagg import __version__

    parser = argparse.ArgumentParser(prog="robustagg", description="Byzantine-robust aggregation and collaborative learning")
    parser.add_argument("--version", action="version", version=f"robustagg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_text in SUBCOMMANDS:
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_module=module)
        if name == command:
            importlib.import_module(module).add_arguments(sp)
    return parser


def _command(argv: Sequence[str]) -> Optional[str]:
    names = {name for name, _, _ in SUBCOMMANDS}
    return next((a for a in argv if a in names), None)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (ValueError, TypeError, OSError) as exc:  # bad configs and inputs: one clear line
        print(f"robustagg {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
