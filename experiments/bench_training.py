"""Training benchmarks (issue 5 targets), on CPU:

(a) the time split of one parameter-server step -- gradient compute, attack, aggregation,
    optimizer -- for the Flag Aggregator MNIST CNN (``fa-cnn``, 21,840 parameters) with 15
    workers of which 3 run ALIE, for several rules; target: aggregation <= 10% of a step;
(b) steps per second of the ``torch.distributed`` path (``torchrun``, gloo, one thread per
    process) with 4 processes against the in-process trainer on the same configuration;
    target >= 1.5x. The distributed path can only win by using more cores than the
    in-process trainer uses well: on a 2-core machine it cannot reach 1.5x (see the verdict).

    python experiments/bench_training.py                       # prints the tables
    python experiments/bench_training.py --quick               # a smoke run
    python experiments/bench_training.py --write docs/benchmarks.md

``--write`` replaces only the ``<!-- training --> ... <!-- /training -->`` section of the file
(appending it when missing) and leaves the rest (the aggregator benchmark's tables) untouched.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from robustagg.train import ParameterServer, TrainConfig  # noqa: E402
from bench_doc import write_section  # noqa: E402

RULES = ["mean", "median", "trimmed-mean", "krum", "geometric-median", "flag", "nnm+trimmed-mean"]
PHASES = ["t_compute", "t_attack", "t_aggregate", "t_optimizer"]


def config(rule: str, steps: int, **run: object) -> TrainConfig:
    """fa-cnn on mnist-5k, 15 workers, 3 Byzantine running ALIE, batch 32 (the demo's setting)."""
    agg = ({"pipeline": [{"name": "nnm"}, {"name": "trimmed-mean"}]} if rule == "nnm+trimmed-mean"
           else {"name": rule})
    return TrainConfig.from_dict({
        "data": {"name": "mnist-5k"}, "model": {"name": "fa-cnn"},
        "workers": {"n": 15, "f": 3, "batch_size": 32}, "attack": {"name": "alie"}, "aggregator": agg,
        "optimizer": {"lr": 0.05, "momentum": 0.9},
        "run": {"steps": steps, "eval_every": steps, "out_dir": "", **run},
    })


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ---------------------------------------------------------------------- (a) the split


def time_split(rule: str, warmup: int, steps: int) -> Dict[str, float]:
    """Mean seconds per step of each phase over ``steps`` steps after ``warmup`` steps."""
    ps = ParameterServer(config(rule, warmup + steps))
    for _ in range(warmup):  # numba compilation, allocator warm-up
        ps.step()
    rows = [ps.step() for _ in range(steps)]
    out = {k: statistics.fmean(r[k] for r in rows) for k in PHASES}
    out["step"] = sum(out[k] for k in PHASES)
    return out


# ---------------------------------------------------------------------- (b) distributed


def in_process_rate(rule: str, warmup: int, steps: int, threads: int) -> float:
    """Steps per second of the in-process trainer with ``threads`` torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ps = ParameterServer(config(rule, warmup + steps))
        for _ in range(warmup):
            ps.step()
        tic = time.perf_counter()
        for _ in range(steps):
            ps.step()
        return steps / (time.perf_counter() - tic)
    finally:
        torch.set_num_threads(before)


def distributed_rate(rule: str, warmup: int, steps: int, nproc: int) -> float:
    """Steps per second of ``torchrun --nproc-per-node nproc`` (rank 0's training clock,
    evaluation excluded, between step ``warmup`` and step ``warmup + steps``)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(rule, warmup + steps, eval_every=warmup, out_dir=tmp, name="bench")
        path = Path(tmp) / "bench.toml"
        path.write_text(cfg.to_toml())
        env = dict(os.environ, OMP_NUM_THREADS="1",
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "robustagg.train.distributed", str(path), "--no-progress"]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"torchrun failed:\n{done.stderr[-3000:]}")
        with open(Path(tmp) / "bench" / "metrics.csv") as fh:
            rows = {int(r["step"]): float(r["time"]) for r in csv.DictReader(fh)}
    return steps / (rows[warmup + steps] - rows[warmup])


# ---------------------------------------------------------------------- report


def markdown(split: Dict[str, Dict[str, float]], rates: Dict[str, float], args: argparse.Namespace) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "## Training",
        "",
        f"`python experiments/bench_training.py` on {platform.processor() or platform.machine()}, {cores()} cores, "
        f"torch {torch.__version__}, {datetime.date.today()}; load average {load:.1f} when it finished. "
        + ("**Taken on a shared machine** (other jobs were running), so absolute times are inflated and "
           "noisy; the ratios are the useful part." if args.shared else ""),
        "",
        "Configuration: `mnist-5k`, `fa-cnn` (21,840 parameters), 15 workers of which 3 run ALIE, batch 32 per "
        "worker, server momentum 0.9 (the `make demo` setting); CPU.",
        "",
        f"### Time split of a parameter-server step (in-process, {args.threads} torch thread(s), "
        f"mean of {args.steps} steps after {args.warmup})",
        "",
        "| rule | step (ms) | gradient compute | attack | aggregation | optimizer "
        "| aggregation share (target <= 10%) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for rule, s in split.items():
        share = s["t_aggregate"] / s["step"]
        cells = [f"{1e3 * s[k]:.2f}" for k in PHASES]
        lines.append(f"| {rule} | {1e3 * s['step']:.1f} | " + " | ".join(cells)
                     + f" | {100 * share:.1f}% {'(met)' if share <= 0.10 else '(**not met**)'} |")
    lines += ["", "Gradient compute is the 12 honest workers' forward/backward passes (one after the other, "
              "in one process); the attack is ALIE's coordinate-wise mean and standard deviation of the "
              "honest rows; aggregation includes stacking the rows.", ""]
    base_name = max((k for k in rates if k.startswith("in-process")), key=rates.get)
    base = rates[base_name]
    lines += [f"### torch.distributed against the in-process trainer (`{args.rule}`, {args.steps} steps after "
              f"{args.warmup}, evaluation excluded, best of {args.repeats} interleaved repetitions)", "",
              f"| path | processes x threads | steps / s | vs the faster in-process setting ({base_name}) |",
              "| --- | --- | ---: | ---: |"]
    for name, (procs, rate) in ((k, v) for k, v in _labelled(rates)):
        lines.append(f"| {name} | {procs} | {rate:.2f} | {rate / base:.2f}x |")
    dist4 = rates.get("4 processes (torchrun, gloo)")
    verdict = ""
    if dist4 is not None:
        met = dist4 / base >= 1.5
        verdict = (f"Target (>= 1.5x with 4 processes against the faster in-process setting): "
                   f"**{'met' if met else 'not met'}** ({dist4 / base:.2f}x).")
        if args.shared:
            verdict += (" On a shared machine this ratio moves from run to run with the other jobs' load; "
                        "read it as an estimate.")
        if cores() < 4:
            verdict += (f" With {cores()} cores, 4 processes cannot use more than {cores()}, so the ceiling "
                        f"against a one-threaded process is {cores()}x.")
        if not met and cores() < 4:
            verdict += (" The gain stays below that ceiling because every step adds a broadcast of the model "
                        "and a gather of the rows, and the worker ranks wait while rank 0 runs the attack, "
                        "the rule and the optimizer. The target needs at least 4 free cores.")
        dist2 = rates.get("2 processes (torchrun, gloo)")
        if dist2 is not None and cores() < 4 and dist2 > dist4:
            verdict += (f" Here 2 processes ({dist2 / base:.2f}x) beat 4: more single-threaded processes than "
                        "cores only add switching and waiting.")
        slow = [k for k in rates if k.startswith("in-process, torch default")]
        if slow and rates[slow[0]] < base:
            threads = re.search(r"\((\d+) threads\)", slow[0]).group(1)
            verdict += (f" The in-process trainer's default threading ({threads} threads) is slower than one "
                        f"thread here ({rates[slow[0]]:.2f} against {base:.2f} steps/s: "
                        "intra-op threads of a small CNN on a busy machine), so against the default the "
                        f"4-process run is {dist4 / rates[slow[0]]:.1f}x faster.")
    lines += ["", verdict]
    return "\n".join(lines) + "\n"


def _labelled(rates: Dict[str, float]):
    for name, rate in rates.items():
        match = re.search(r"\((\d+) threads\)", name)
        if match:
            procs = f"1 x {match.group(1)}"
        elif name.startswith("in-process"):
            procs = "1 x 1"
        else:
            procs = f"{name.split()[0]} x 1"
        yield name, (procs, rate)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few steps, two rules (a smoke run)")
    parser.add_argument("--rules", nargs="*", default=RULES)
    parser.add_argument("--rule", default="trimmed-mean", help="rule of the distributed comparison")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the time split (default 1)")
    parser.add_argument("--nproc", type=int, nargs="*", default=[2, 4], help="distributed process counts")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of the steps/s runs (best kept)")
    parser.add_argument("--shared", action="store_true", help="say in the report that the machine was shared")
    parser.add_argument("--write", type=Path, help="replace the training section of this markdown file")
    args = parser.parse_args(argv)
    if args.quick:
        args.rules, args.steps, args.warmup, args.nproc, args.repeats = ["mean", "flag"], 4, 2, [2], 1
    default_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    split = {}
    for rule in args.rules:
        split[rule] = time_split(rule, args.warmup, args.steps)
        s = split[rule]
        print(f"{rule:>18}: step {1e3 * s['step']:7.1f} ms, " + ", ".join(
            f"{k[2:]} {100 * s[k] / s['step']:5.1f}%" for k in PHASES), flush=True)
    measure = {"in-process, 1 thread": lambda: in_process_rate(args.rule, args.warmup, args.steps, 1)}
    if default_threads != 1:
        measure[f"in-process, torch default ({default_threads} threads)"] = (
            lambda: in_process_rate(args.rule, args.warmup, args.steps, default_threads))
    for nproc in args.nproc:
        measure[f"{nproc} processes (torchrun, gloo)"] = (
            lambda nproc=nproc: distributed_rate(args.rule, args.warmup, args.steps, nproc))
    samples: Dict[str, List[float]] = {name: [] for name in measure}
    for rep in range(args.repeats):  # interleaved, so a burst of other load hits every path alike
        for name in (list(measure) if rep % 2 == 0 else list(measure)[::-1]):
            samples[name].append(measure[name]())
    rates = {name: max(values) for name, values in samples.items()}  # best of the repeats
    for name, rate in rates.items():
        print(f"{name:>40}: {rate:6.2f} steps/s", flush=True)
    text = markdown(split, rates, args)
    if args.write:
        write_section(args.write, "training", text)
        print(f"wrote the training section of {args.write}")
    else:
        print(text)


if __name__ == "__main__":
    main()
