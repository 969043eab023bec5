"""The ``robustagg flower`` subcommand: a ``robustagg train`` configuration as a Flower simulation.

``robustagg flower CONFIG.toml [--set key=value ...] [--backend ray|inline] [--num-cpus N] [--out DIR]``

runs :func:`federated.simulate` on the configuration (the TOML format of ``robustagg train``,
plus an optional ``[flower]`` table; see ``docs/flower.md``) and prints the test accuracy per
round of every run (the main strategy and each ``flower.compare`` entry).

robustagg does not depend on Flower: this module imports ``federated`` (and with it
``flwr``) only inside :func:`run`, and says how to install it when it is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import Any, Dict, List

INSTALL_HINT = 'pip install "robustagg[flower]"  (flwr[simulation] >= 1.41, < 1.43)'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG.toml",
                        help="a `robustagg train` configuration, optionally with a [flower] table (docs/flower.md)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key, e.g. --set aggregator.name=krum --set flower.num_cpus=1 (repeatable)")
    parser.add_argument("--backend", choices=["ray", "inline"], default=None,
                        help="ray: flwr.simulation on Ray (default); inline: the same apps in this process")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs Ray may use (flower.num_cpus)")
    parser.add_argument("--out", default=None, help="results directory (run.out_dir); '' writes nothing")


def _flower_missing() -> str:
    missing = [name for name in ("flwr", "federated") if importlib.util.find_spec(name) is None]
    if not missing:
        return ""
    if "flwr" in missing:
        return f"Flower is not installed: {INSTALL_HINT}"
    return "the `federated` package is not importable: install robustagg from its source tree (pip install -e .)"


def _row(values: List[float]) -> str:
    return " ".join(f"{v:.3f}" for v in values)


def report(history: Dict[str, Any]) -> str:
    """The accuracy table printed after a run."""
    lines = []
    for h in [history] + list(history.get("compare", [])):
        lines.append(f"{h['label']:<28} rounds {h['round'][0]}..{h['round'][-1]}  accuracy {_row(h['accuracy'])}")
        last = h["metrics"][h["round"][-1]]
        certified = {k.rsplit("-", 1)[1]: v for k, v in last.items() if k.startswith("certified-accuracy-")}
        if certified:
            lines.append(f"{'':<28} certified accuracy at radius " +
                         ", ".join(f"{r}: {v:.3f}" for r, v in certified.items()))
    if history.get("out_dir"):
        lines.append(f"results in {history['out_dir']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    problem = _flower_missing()
    if problem:
        print(f"robustagg flower: error: {problem}", file=sys.stderr)
        return 2
    from federated import simulate  # lazily: robustagg itself never imports federated or flwr

    overrides = list(args.overrides)
    if args.backend:
        overrides.append(f"flower.backend={args.backend}")
    if args.num_cpus is not None:
        overrides.append(f"flower.num_cpus={args.num_cpus}")
    history = simulate(args.config, overrides, out_dir=args.out)
    print(report(history))
    return 0
