"""Robust all-reduce against ``dist.all_reduce`` and against gathering to rank 0 (issue 16).

    python experiments/bench_collective.py [--worlds 2 4] [--d 1e6] [--reps 3] [--write docs/collective.md]

For each world size ``w`` and size ``d`` it starts ``w`` gloo processes on this machine; each
rank holds one float32 update of ``d`` values. Per rule (at least one per family) it times, as the
slowest rank's median over ``reps`` calls after a warm-up:

* ``all_reduce``: ``dist.all_reduce`` of the same tensor (the mean's cost floor), timed again
  just before each rule (on a shared machine the floor drifts with the load);
* ``robust``: :func:`robustagg.collective.robust_all_reduce`;
* ``gather``: the parameter-server path: ``dist.gather`` to rank 0, the rule on the ``(n, d)``
  stack there, ``dist.broadcast`` of the result.

It also reports the bytes each rank sent (counted by the collective; the formula
``4 (2 d (w-1)/w + n^2)`` beside it) and each method's peak memory beyond the input (the
largest over ranks of the peak resident set during the calls minus the resident set before,
reset through ``/proc/self/clear_refs``; Linux only, else blank).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import robustagg as ra  # noqa: E402

# at least one rule per family (FLTrust and DnC besides); f is the largest the bound allows for n = w (at most 1)
RULES = ["mean", "median", "trimmed-mean", "krum", "nnm>mean", "geometric-median", "flag", "fltrust", "dnc"]
BEGIN, END = "<!-- bench_collective:begin -->", "<!-- bench_collective:end -->"


def build(name: str, n: int, d: int):
    """The rule ``name`` with the largest ``f <= 1`` that ``n`` inputs allow (None if none does);
    FLTrust gets a server reference (the same seeded ``d``-vector on every rank)."""
    for f in (1, 0):
        parts = [ra.get(p, f=f) for p in name.split(">")]
        rule = parts[0] if len(parts) == 1 else ra.pipeline(*parts)
        if rule.min_inputs() <= n:
            if name == "fltrust":
                rule.set_reference(torch.randn(d, generator=torch.Generator().manual_seed(12345)))
            return rule, f
    return None, None


def _memory() -> tuple:
    """(VmRSS, VmHWM) in bytes, or (None, None) off Linux."""
    try:
        fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
        return tuple(int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM"))
    except OSError:  # pragma: no cover - not Linux
        return None, None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:  # pragma: no cover - not Linux / not allowed
        return False


def worker(out: str, d: int, reps: int, rules) -> None:
    import torch.distributed as dist

    from robustagg.collective import robust_all_reduce

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, w = dist.get_rank(), dist.get_world_size()
    x = torch.randn(d, generator=torch.Generator().manual_seed(rank))

    def run_allreduce(rule):
        y = x.clone()
        dist.all_reduce(y)
        return y / w

    def run_gather(rule):
        rows = [torch.empty_like(x) for _ in range(w)] if rank == 0 else None
        dist.gather(x, rows, dst=0)
        y = rule(torch.stack(rows)) if rank == 0 else torch.empty_like(x)
        dist.broadcast(y, src=0)
        return y

    stats: dict = {}

    def run_robust(rule):
        return robust_all_reduce(x, rule, stats=stats)

    results = {}
    for name in rules:
        rule, f = build(name, w, d)
        if rule is None:
            continue
        for method, fn in (("all_reduce", run_allreduce), ("robust", run_robust), ("gather", run_gather)):
            fn(rule)  # warm-up
            times, peak = [], None
            for _ in range(reps):
                dist.barrier()
                rss, _ = _memory()
                ok = _reset_peak()
                start = time.perf_counter()
                y = fn(rule)
                elapsed = time.perf_counter() - start
                _, hwm = _memory()
                del y
                times.append(elapsed)
                if ok and rss is not None:
                    peak = max(peak or 0, hwm - rss)
            results[(name, method)] = {"time": statistics.median(times), "peak": peak, "f": f,
                                       "bytes": stats.get("bytes_sent") if method == "robust" else None}
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def launch(w: int, d: int, reps: int, timeout: float, rules):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tempfile.mkdtemp(prefix="bench_collective_")
    # large blocks straight from mmap, returned on free: the resident set then follows live tensors
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(w), OMP_NUM_THREADS="1",
               MALLOC_MMAP_THRESHOLD_="65536",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", out, "--d", str(d), "--reps", str(reps),
                               "--rules", *rules],
                              env=dict(env, RANK=str(r))) for r in range(w)]
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if any(codes):
        raise SystemExit(f"bench_collective: a rank failed (exit codes {codes})")
    return [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in range(w)]


def table(rows) -> str:
    head = ("| w | d | rule (f) | all_reduce s | robust s | gather-to-0 s | robust / all_reduce | "
            "robust / gather | MB sent per rank (formula) | peak MB robust / gather (rank max) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        mb = lambda b: "" if b is None else f"{b / 2**20:.1f}"  # noqa: E731
        lines.append(
            f"| {r['w']} | {r['d']:.0e} | {r['rule']} ({r['f']}) | {r['ar']:.4f} | {r['robust']:.4f} | {r['gather']:.4f} | "
            f"{r['robust'] / r['ar']:.1f}x | {r['robust'] / r['gather']:.2f}x | {mb(r['bytes'])} ({mb(r['formula'])}) | "
            f"{mb(r['peak_robust'])} / {mb(r['peak_gather'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="robust all-reduce benchmark")
    parser.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--d", type=float, nargs="+", default=[1e6])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rules", nargs="+", default=RULES, help=f"rules to time (default: {' '.join(RULES)})")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--write", type=Path, help="replace the table between the bench markers of this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, int(args.d[0]), args.reps, args.rules)
    rows = []
    for d in map(int, args.d):
        for w in args.worlds:
            res = launch(w, d, args.reps, args.timeout, args.rules)
            for name in args.rules:
                if (name, "robust") not in res[0]:
                    continue
                get = lambda m, k: [r[(name, m)][k] for r in res]  # noqa: E731
                peaks = lambda m: None if None in get(m, "peak") else max(get(m, "peak"))  # noqa: E731
                n, gram = w, name not in ("mean", "median", "trimmed-mean")
                rows.append({"w": w, "d": d, "rule": name, "f": res[0][(name, "robust")]["f"],
                             "ar": max(get("all_reduce", "time")),
                             "robust": max(get("robust", "time")), "gather": max(get("gather", "time")),
                             "bytes": max(get("robust", "bytes")),
                             "formula": 4 * (2 * d * (w - 1) / w + (n * n if gram else 0)),
                             "peak_robust": peaks("robust"), "peak_gather": peaks("gather")})
            print(table([r for r in rows if r["w"] == w and r["d"] == d]).split("\n", 2)[-1], flush=True)
    text = table(rows)
    print(text)
    if args.write:
        doc = args.write.read_text()
        if BEGIN not in doc or END not in doc:
            raise SystemExit(f"bench_collective: {args.write} has no {BEGIN} ... {END} markers")
        head, rest = doc.split(BEGIN, 1)
        args.write.write_text(head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1])


if __name__ == "__main__":
    main()
