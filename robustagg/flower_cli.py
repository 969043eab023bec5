"""The ``robustagg flower`` subcommand: a ``robustagg train`` configuration, or an existing Flower app.

``robustagg flower CONFIG.toml [--set key=value ...] [--backend ray|inline] [--num-cpus N] [--out DIR]``

runs :func:`federated.simulate` on the configuration (the TOML format of ``robustagg train``,
plus an optional ``[flower]`` table; see ``docs/flower.md``), shows one line per round on
stderr, and prints the test accuracy per round of every run (the main strategy and each
``flower.compare`` entry).

``robustagg flower --app DIR [--rule NAME --f F] [--num-supernodes N] [--run-config key=value ...]
[--backend inline|ray | --deploy]``

runs the Flower app in ``DIR`` unchanged, its ``FedAvg`` swapped for ``RobustStrategy(NAME, f=F)``
(:func:`federated.run_app`; without ``--rule``, FedAvg as it is), in simulation or, with
``--deploy``, on a local SuperLink and ``N`` SuperNodes (:func:`federated.deploy.deploy_app`;
exit status 1 when the deployed run fails).

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
    parser.add_argument("config", metavar="CONFIG.toml", nargs="?",
                        help="a `robustagg train` configuration, optionally with a [flower] table (docs/flower.md)")
    parser.add_argument("--app", metavar="DIR", help="run this Flower app directory (pyproject.toml) instead")
    parser.add_argument("--rule", help="--app: swap FedAvg for RobustStrategy with this rule (default: keep FedAvg)")
    parser.add_argument("--f", type=int, default=0, help="--app: declared Byzantine nodes for --rule")
    parser.add_argument("--num-supernodes", type=int, default=3, help="--app: nodes to simulate or start")
    parser.add_argument("--run-config", action="append", default=[], metavar="KEY=VALUE",
                        help="--app: override a key of the app's run config (TOML value; repeatable)")
    parser.add_argument("--deploy", action="store_true",
                        help="--app: a real local deployment (SuperLink + SuperNodes, dependency installation off)")
    parser.add_argument("--timeout", type=float, default=600.0, help="--deploy: seconds the run may take")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key, e.g. --set aggregator.name=krum --set flower.num_cpus=1 (repeatable)")
    parser.add_argument("--backend", choices=["ray", "inline"], default=None,
                        help="ray: flwr.simulation on Ray (default for CONFIG); inline: the same apps in this process "
                             "(default for --app)")
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
    if args.app:
        return run_app(args)
    if not args.config:
        raise ValueError("give a CONFIG.toml or --app DIR")
    from federated import print_progress, simulate  # lazily: robustagg itself never imports federated or flwr

    overrides = list(args.overrides)
    if args.backend:
        overrides.append(f"flower.backend={args.backend}")
    if args.num_cpus is not None:
        overrides.append(f"flower.num_cpus={args.num_cpus}")
    history = simulate(args.config, overrides, out_dir=args.out, progress=print_progress())
    print(report(history))
    return 0


def _run_config(items: List[str]) -> Dict[str, Any]:
    import tomllib

    out: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--run-config {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value  # a bare word: a string
    return out


def run_app(args: argparse.Namespace) -> int:
    """``--app DIR``: the app in simulation (inline or Ray) or deployed locally."""
    run_config = _run_config(args.run_config)
    if args.deploy:
        from federated.deploy import DeploymentFailed, deploy_app

        try:
            done = deploy_app(args.app, args.num_supernodes, aggregator=args.rule, run_config=run_config,
                              timeout=args.timeout, log=sys.stderr, f=args.f)
        except DeploymentFailed as exc:
            print(f"robustagg flower: the deployed run failed: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 1
        print(f"run {done['run_id']}: {done['status']} in {done['seconds']:.1f} s "
              f"({args.num_supernodes} SuperNodes, SuperLink on 127.0.0.1:{done['ports']['superlink']})")
        return 0
    from federated import run_app as simulate_app

    kwargs = {"f": args.f} if args.rule else {}
    result = simulate_app(args.app, args.rule, num_supernodes=args.num_supernodes, backend=args.backend or "inline",
                          run_config=run_config, num_cpus=args.num_cpus or 2, **kwargs)
    name = f"RobustStrategy({args.rule}, f={args.f})" if args.rule else "FedAvg"
    central = result.evaluate_metrics_serverapp
    for rnd in sorted(central):
        print(f"{name} round {rnd}: " + " ".join(f"{k} {float(v):.4f}" for k, v in central[rnd].items()
                                               if not isinstance(v, list)))
    for e in getattr(result.strategy, "history", []):
        print(f"round {e['round']}: accepted {e['ids']}s {e['accepted']}"
              + (f", rejected {sorted(e['rejected'])}" if e["rejected"] else "")
              + (f", trusted {e['trusted']}" if "trusted" in e else "") + (" (skipped)" if e["skipped"] else ""))
    return 0
