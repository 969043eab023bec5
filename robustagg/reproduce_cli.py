"""The ``robustagg reproduce`` subcommand: rerun a seed paper's experiment at CPU scale.

``robustagg reproduce NAME|all [--quick] [--out DIR] [--processes N] [--fresh]``

=========  ==========================================================  ====================
name       paper                                                       script
=========  ==========================================================  ====================
``flag``   Almasi et al., Flag Aggregator (ICLR 2024)                  experiments/flag.py
``monna``  Farhadkhani et al., MoNNA (ICML 2023)                       experiments/monna.py
``roe``    Rezaei et al., Run-Off Election (ICML 2023)                 experiments/roe.py
``afl``    Yang et al., Anarchic Federated Learning (ICML 2022)        experiments/afl.py
=========  ==========================================================  ====================

Each writes ``results/<name>/`` (``results/<name>-quick/`` with ``--quick``): ``table.md``,
``metrics.csv``, ``plot.png``; a killed reproduction resumes when started again. The scripts
live in the source tree's ``experiments/`` folder (they are not part of the installed
package), so this command needs a source checkout (``pip install -e .``) or ``--experiments``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional

#: name -> (script in experiments/, paper)
REPRODUCTIONS: Dict[str, tuple] = {
    "flag": ("flag.py", "Almasi et al., Flag Aggregator, ICLR 2024"),
    "monna": ("monna.py", "Farhadkhani et al., Robust Collaborative Learning with Linear Gradient Overhead, ICML 2023"),
    "roe": ("roe.py", "Rezaei et al., Run-Off Election, ICML 2023"),
    "afl": ("afl.py", "Yang et al., Anarchic Federated Learning, ICML 2022"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="+", metavar="NAME", help=f"one or more of: {', '.join(REPRODUCTIONS)}, all")
    parser.add_argument("--quick", action="store_true", help="the small variant (about 2 minutes each)")
    parser.add_argument("--out", default=None,
                        help="output folder (one name only; default results/<name> or results/<name>-quick)")
    parser.add_argument("--processes", type=int, default=None, help="parallel training processes (default: cores)")
    parser.add_argument("--fresh", action="store_true", help="discard earlier runs and start over")
    parser.add_argument("--experiments", default=None, help="the experiments/ folder (default: the source tree's)")
    parser.add_argument("--no-progress", action="store_true")


def experiments_dir(given: Optional[str] = None) -> Path:
    """The source tree's ``experiments/`` folder (or ``given``); a clear error when absent."""
    path = Path(given) if given else Path(__file__).resolve().parents[1] / "experiments"
    if not (path / "_repro.py").exists():
        raise FileNotFoundError(f"no reproduction scripts in {path}: `robustagg reproduce` needs the source tree "
                                "(git clone, then pip install -e .) or --experiments PATH/TO/experiments")
    return path


def load(name: str, folder: Path) -> ModuleType:
    """Import ``experiments/<script>`` of reproduction ``name`` as a module."""
    if name not in REPRODUCTIONS:
        raise ValueError(f"unknown reproduction {name!r}; available: {', '.join(REPRODUCTIONS)}, all")
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    module_name = f"robustagg_reproduction_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, folder / REPRODUCTIONS[name][0])
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def reproduce(name: str, *, quick: bool = False, out: Optional[str] = None, processes: Optional[int] = None,
              fresh: bool = False, progress: bool = True, experiments: Optional[str] = None) -> dict:
    """Run one reproduction; returns its result dict (``out``, ``verdict``, ...)."""
    module = load(name, experiments_dir(experiments))
    scale = "quick" if quick else "full"
    if name == "roe":  # its own runner: ensembles of base models rather than training runs
        return _roe(module, quick, out, processes, fresh, progress)
    return module.run(scale, out, processes=processes, fresh=fresh, progress=progress)


def _roe(module: ModuleType, quick: bool, out: Optional[str], processes: Optional[int], fresh: bool,
         progress: bool) -> dict:
    """ROE: the logistic-regression ensembles (``full``/``quick``) and, at full scale, the same
    ensembles of CNNs (``cnn``, into ``<out>-cnn``); one verdict line over both."""
    import shutil

    scales = ["quick"] if quick else ["full", "cnn"]
    results = {}
    for scale in scales:
        where = None if out is None else (out if scale != "cnn" else f"{out.rstrip('/')}-cnn")
        if fresh:
            shutil.rmtree(where or ("results/roe" if scale == "full" else f"results/roe-{scale}"), ignore_errors=True)
        # progress: a bar per ensemble on a terminal, about ten lines per ensemble in a log
        results[scale] = module.run(scale, where, jobs=processes or 2, progress=progress)
    parts = []
    for scale, res in results.items():
        v = res["verdict"]
        label = {"full": "logistic base models", "quick": "logistic base models, FA d = 4", "cnn": "CNN base models"}
        parts.append(f"{label[scale]}: " + "; ".join(
            f"{b.upper()}+ROE − {b.upper()} {v[b]['gains'][0]:+.1f} pts at radius 0, {v[b]['gains'][-1]:+.1f} at "
            f"radius 25 (mean {v[b]['mean_gain']:+.1f}; >= {b.upper()} at every radius: {'yes' if v[b]['holds'] else 'no'})"
            for b in ("dpa", "fa")))
    first = results[scales[0]]
    holds = all(r["verdict"][b]["holds"] for r in results.values() for b in ("dpa", "fa"))
    return dict(first, verdict=dict(first["verdict"], holds=holds, line=" | ".join(parts)),
                others={s: r for s, r in results.items() if s != scales[0]})


def run(args: argparse.Namespace) -> int:
    names: List[str] = list(REPRODUCTIONS) if "all" in args.names else list(dict.fromkeys(args.names))
    for name in names:
        if name not in REPRODUCTIONS:
            raise ValueError(f"unknown reproduction {name!r}; available: {', '.join(REPRODUCTIONS)}, all")
    if args.out and len(names) > 1:
        raise ValueError("--out needs a single reproduction name")
    verdicts = []
    for name in names:
        start = time.perf_counter()
        print(f"== {name}: {REPRODUCTIONS[name][1]} ({'quick' if args.quick else 'full'} scale)", flush=True)
        res = reproduce(name, quick=args.quick, out=args.out, processes=args.processes, fresh=args.fresh,
                        progress=not args.no_progress, experiments=args.experiments)
        took = time.perf_counter() - start
        verdicts.append(f"{name}: {res['verdict']['line']} [{took / 60:.1f} min; {res['out']}/table.md]")
        print(f"== {name} done in {took / 60:.1f} min: {res['out']}/table.md, metrics.csv, plot.png", flush=True)
    print("\nVerdicts:")
    for line in verdicts:
        print(f"* {line}")
    return 0
