"""The ``robustagg`` command.

Each subcommand lives in the package it belongs to and exposes two functions,
``add_arguments(parser)`` and ``run(args) -> int``; this module only wires them
(imported lazily, so ``robustagg list`` does not import the trainer or Flower).
To add one, append ``(name, module, help)`` to :data:`SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

#: (name, module holding add_arguments/run, one-line help)
SUBCOMMANDS = [
    ("list", "robustagg.cli", "list rules, attacks, faults, poisoning, participation models, datasets, models"),
    ("train", "robustagg.train.cli", "train a model under attack from a TOML configuration (parameter server or MoNNA)"),
    ("certify", "robustagg.election.cli", "certified accuracy of saved ensemble scores (DPA, FA, run-off election)"),
    ("election", "robustagg.election.cli", "train and certify a DPA/FA ensemble from a TOML configuration"),
    ("flower", "robustagg.flower_cli", "run a training configuration as a Flower simulation (needs robustagg[flower])"),
    ("reproduce", "robustagg.reproduce_cli", "rerun a seed paper's experiment at CPU scale (flag, monna, roe, afl, all)"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:  # the `list` subcommand
    parser.add_argument(
        "what", nargs="?", default="all",
        choices=["all", "rules", "attacks", "faults", "poisoning", "participation", "datasets", "models"],
    )


def run(args: argparse.Namespace) -> int:  # the `list` subcommand
    import robustagg as ra

    families = {
        "rules": ra.available,
        "attacks": lambda: ra.attacks.available(),
        "faults": lambda: ra.faults.available(),
        "poisoning": lambda: ra.poisoning.available(),
        "participation": lambda: ra.participation.available(),
        "datasets": lambda: ra.data.available(),
        "models": lambda: ra.models.available(),
    }
    for name, listing in families.items():
        if args.what in ("all", name):
            print(f"{name}: {', '.join(listing())}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robustagg", description="Byzantine-robust aggregation and collaborative learning")
    from robustagg import __version__

    parser.add_argument("--version", action="version", version=f"robustagg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_text in SUBCOMMANDS:
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(sp)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as exc:  # bad configs and inputs: one clear line
        print(f"robustagg {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
