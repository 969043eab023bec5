"""Benchmark: server-side aggregation time of RobustStrategy vs the bare rule (issue 7 target).

Setting: 20 clients, the Flag Aggregator MNIST CNN (``fa-cnn``, d = 21,840 parameters).
For each rule the script times, per round (median of ``--repeats``):

* ``rule``: ``rule.aggregate(X)`` on the stacked ``(20, d)`` float32 update tensor;
* ``strategy``: ``RobustStrategy.aggregate_train`` on 20 mocked reply ``Message`` objects
  (decoding the replies' arrays, subtracting the global model, rejecting malformed or
  non-finite replies, the rule, the server step and building the new ``ArrayRecord``):
  the wrapper's *overhead* is ``strategy - rule`` in ms and its *ratio* ``strategy / rule``
  (target <= 1.2); the two are timed alternately, round by round, so load affects both;
* ``memory floor``: the memory work any wrapper must add (one subtract pass that turns the
  received vectors into the update matrix, one row-sum pass for the non-finite check), with
  no per-reply Python, and the ratio a wrapper doing only that would reach;
* ``flower``: Flower's own strategy on the same replies where one exists (FedAvg,
  FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan).

``set_global`` (decoding the global arrays once per round, done in ``configure_train``) is
reported separately. ``--simulate`` also runs a short real Ray simulation (20 nodes,
``mnist-5k``) and reports the ``seconds`` / ``rule_seconds`` the strategy logged per round.

    PYTHONPATH=. python experiments/bench_flower.py [--repeats 30] [--rules median krum] [--clock cpu]
                                                     [--no-flower] [--simulate]

On a shared machine, ``--clock cpu`` (the calling thread's CPU time; torch runs with one
thread) leaves out the time the process is descheduled; the ratio stays indicative only.

References
----------
Beutel et al., "Flower: A Friendly Federated Learning Research Framework", arXiv:2007.14390, 2020.
Almasi, Mishra, Vamanan, Ravi, "Flag Aggregator", ICLR 2024 (the FA MNIST CNN).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as fl
from flwr.supercore.task_identity import TaskIdentity

import robustagg as ra
from federated import RobustStrategy
from robustagg import models

N, F = 20, 4
RULES = ["mean", "median", "trimmed-mean", "meamed", "krum", "multi-krum", "bulyan", "geometric-median",
         "centered-clipping", "nnm+trimmed-mean", "flag"]


def build_rule(name: str) -> Optional[ra.Aggregator]:
    if name == "nnm+trimmed-mean":
        return ra.pipeline(ra.get("nnm", f=F), ra.get("trimmed-mean", f=F))
    try:
        return ra.get(name, f=F)
    except ValueError:  # e.g. flag before the Flag Aggregator is merged
        return None


def flower_peer(name: str):
    common = dict(fraction_evaluate=0.0)
    return {
        "mean": lambda: fl.FedAvg(**common),
        "median": lambda: fl.FedMedian(**common),
        "trimmed-mean": lambda: fl.FedTrimmedAvg(beta=F / N, **common),
        "krum": lambda: fl.Krum(num_malicious_nodes=F, **common),
        "multi-krum": lambda: fl.MultiKrum(num_malicious_nodes=F, num_nodes_to_select=N - F, **common),
        "bulyan": lambda: fl.Bulyan(num_malicious_nodes=F, **common),
    }.get(name)


def make_replies(glob: ArrayRecord, U: np.ndarray) -> List[Message]:
    out = []
    for i, u in enumerate(U):
        instruction = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=1000 + i,
                              message_type="train")
        arrays, o = ArrayRecord(), 0
        for k in glob.keys():
            a = glob[k].numpy()
            if a.dtype.kind == "f":
                arrays[k] = Array((a + u[o:o + a.size].reshape(a.shape)).astype(a.dtype))
                o += a.size
            else:
                arrays[k] = glob[k]
        metrics = MetricRecord({"num-examples": 100, "local-steps": 1})
        out.append(Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=instruction))
    return out


def timeit(fn: Callable[[], object], repeats: int, setup: Optional[Callable[[], object]] = None) -> float:
    times = []
    for _ in range(repeats + 1):  # the first call warms up (numba compilation, allocations)
        arg = setup() if setup else None
        tic = CLOCK()
        fn() if arg is None else fn(arg)
        times.append(CLOCK() - tic)
    return statistics.median(times[1:])


CLOCK = time.perf_counter  # --clock cpu: time.thread_time


def alternate(first: Callable[[], object], second: Callable[[], object], repeats: int):
    """Median seconds of ``first`` and of ``second``, called alternately (after one warm-up each)."""
    a, b = [], []
    for i in range(repeats + 1):
        tic = CLOCK()
        first()
        mid = CLOCK()
        second()
        end = CLOCK()
        if i:
            a.append(mid - tic)
            b.append(end - mid)
    return statistics.median(a), statistics.median(b)


def bench(rules: List[str], repeats: int, flower: bool = True) -> List[Dict[str, object]]:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    net = models.build("fa-cnn", input_shape=(1, 28, 28), num_classes=10, seed=0)
    glob = ArrayRecord(net.state_dict())
    d = models.num_parameters(net)
    U = (0.01 * np.random.default_rng(0).standard_normal((N, d))).astype(np.float32)
    replies = make_replies(glob, U)
    X = torch.from_numpy(U.copy())
    rows = []
    t_floor = memory_floor(U, glob, repeats)
    for name in rules:
        rule = build_rule(name)
        if rule is None:
            print(f"{name}: not available in this tree, skipped")
            continue
        strategy = RobustStrategy(build_rule(name), fraction_evaluate=0.0)
        strategy.set_global(glob)
        t_global = timeit(lambda: strategy.set_global(glob), repeats)
        t_rule, t_strategy = alternate(lambda: rule.aggregate(X), lambda: strategy.aggregate_train(1, replies),
                                       repeats)
        inside = statistics.median(e["rule_seconds"] for e in strategy.history[1:])
        peer = flower_peer(name) if flower else None
        t_flower = None
        if peer is not None:
            fl_strategy = peer()
            # Flower's FedMedian/FedTrimmedAvg/Bulyan pop arrays out of the replies: fresh copies each call
            t_flower = timeit(lambda r: fl_strategy.aggregate_train(1, r), repeats,
                              setup=lambda: copy.deepcopy(replies))
        rows.append({"rule": name, "rule_ms": 1e3 * t_rule, "strategy_ms": 1e3 * t_strategy,
                     "overhead_ms": 1e3 * (t_strategy - t_rule), "floor_ms": 1e3 * t_floor,
                     "inside_ms": 1e3 * inside, "ratio": t_strategy / t_rule,
                     "floor_ratio": (t_rule + t_floor) / t_rule, "set_global_ms": 1e3 * t_global,
                     "flower_ms": None if t_flower is None else 1e3 * t_flower})
    return rows


def memory_floor(U: np.ndarray, glob: ArrayRecord, repeats: int) -> float:
    """The memory work any wrapper must do, with no Python per reply or array: one pass that
    subtracts the global model from the 20 received vectors into the update matrix, and one
    row-sum pass for the non-finite check (the received bytes are modelled by one array)."""
    from federated._updates import Layout

    g = Layout(glob).flatten(glob)
    received = U + g
    X = np.empty_like(U)

    def work():
        np.subtract(received, g, out=X)
        X.sum(axis=1)

    return timeit(work, repeats)


def print_table(rows: List[Dict[str, object]], d: int) -> None:
    print(f"\n{N} clients, fa-cnn (d = {d:,}), float32, torch threads = {torch.get_num_threads()}, "
          f"median of the rounds")
    print("| rule | rule on stacked updates (ms) | RobustStrategy.aggregate_train (ms) | overhead (ms) | ratio | "
          "memory floor (ms) | ratio at the floor | rule inside the strategy (ms) | set_global (ms) | "
          "Flower's strategy (ms) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        flower = "-" if r["flower_ms"] is None else f"{r['flower_ms']:.2f}"
        print(f"| {r['rule']} | {r['rule_ms']:.2f} | {r['strategy_ms']:.2f} | {r['overhead_ms']:.2f} | "
              f"{r['ratio']:.2f} | {r['floor_ms']:.2f} | {r['floor_ratio']:.2f} | {r['inside_ms']:.2f} | "
              f"{r['set_global_ms']:.2f} | {flower} |")
    print("overhead = aggregate_train - rule; memory floor = one subtract pass into the (n, d) matrix plus the "
          "row-sum non-finite check, without any per-reply Python; ratio at the floor = (rule + floor) / rule, "
          "the best any wrapper that decodes and checks the replies can do")


def simulate_short(rule: str, rounds: int) -> None:
    from federated import simulate

    config = {"data": {"name": "mnist-5k"}, "model": {"name": "fa-cnn"}, "mode": "fedavg",
              "workers": {"n": N, "f": 0, "local_steps": 5}, "aggregator": {"name": rule, "f": F},
              "optimizer": {"lr": 1.0, "local_lr": 0.1}, "run": {"steps": rounds, "eval_every": rounds, "out_dir": ""}}
    history = simulate(config, flower={"num_cpus": 2, "ray_temp_dir": "/tmp/ray_robustagg_bench"})
    for e in history["strategy"]:
        print(f"simulation round {e['round']}: aggregate_train {1e3 * e['seconds']:.2f} ms, "
              f"rule {1e3 * e.get('rule_seconds', float('nan')):.2f} ms, accepted {len(e['accepted'])}")
    print("accuracy", [round(a, 3) for a in history["accuracy"]])


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rules", nargs="*", default=RULES)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: time.perf_counter; cpu: the calling thread's CPU time (time.thread_time), "
                             "which leaves out the time a loaded machine keeps the process descheduled (valid "
                             "with --threads 1: every timed operation runs on the calling thread)")
    parser.add_argument("--no-flower", action="store_true", help="skip Flower's own strategies (Bulyan takes seconds)")
    parser.add_argument("--simulate", action="store_true", help="also run a short 20-node Ray simulation")
    parser.add_argument("--simulate-rule", default="trimmed-mean")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.thread_time if args.clock == "cpu" else time.perf_counter
    rows = bench(args.rules, args.repeats, flower=not args.no_flower)
    print(f"clock: {args.clock}")
    d = models.num_parameters(models.build("fa-cnn", input_shape=(1, 28, 28), num_classes=10))
    print_table(rows, d)
    if args.simulate:
        simulate_short(args.simulate_rule, args.rounds)


if __name__ == "__main__":
    main()
