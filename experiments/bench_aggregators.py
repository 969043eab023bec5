"""Speed and memory of every rule, as ratios to floors measured in the same run.

Floors: one read of the input (``X.sum(0)``) and one Gram matrix (``X @ X.T``).
Peers: ByzFL's implementation of the same rule when ``byzfl`` is installed
(``make bench`` installs it with ``--no-deps``; it is never a runtime dependency).

    python experiments/bench_aggregators.py                 # the issue's three sizes
    python experiments/bench_aggregators.py --quick         # small sizes, a smoke run
    python experiments/bench_aggregators.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import gc
import math
import importlib
import importlib.util
import os
import platform
import re
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import robustagg as ra  # noqa: E402
from bench_doc import write_section  # noqa: E402

RULES = ["mean", "median", "trimmed-mean", "meamed", "geometric-median", "krum", "multi-krum", "bulyan",
         "centered-clipping", "nnm", "bucketing", "clipping", "arc"]
#: issue 15's rules (section "aggregators-new", sizes (15, 1e6) and (60, 1e6))
NEW_RULES = ["nnm", "cge", "mda", "smea", "caf", "dnc", "clipped-clustering", "fltrust", "monna"]
NEW_NOTE = (
    "ByzFL has MDA, SMEA, CAF, MoNNA and NNM; its MDA and SMEA enumerate every subset and are not run "
    "past 5,000 subsets (n = 60, f = 12: C(60, 12) ~ 1.4e12). blades (PyPI 0.1.1234, the only release) ships "
    "no aggregator modules (its ClippedClustering, DnC and FLTrust live in the repository's `fllib`) and pins "
    "torchvision 0.15 (it would replace torch): no blades column. FLTrust is timed with a given reference "
    "vector; DnC with its defaults (sub_dim 10,000, 5 rounds). Ratios to the floors are from the same run; "
    "absolute times vary between runs (the machine is a VM), by up to ~3x when other jobs share the cores."
)
#: ByzFL enumerates every subset for these: not run beyond this many
PEER_MAX_SUBSETS = 5000

# our rule -> (ByzFL class, constructor kwargs given f); None where ByzFL has no such rule
PEERS = {
    "mean": ("Average", lambda f: {}),
    "median": ("Median", lambda f: {}),
    "trimmed-mean": ("TrMean", lambda f: {"f": f}),
    "meamed": ("Meamed", lambda f: {"f": f}),
    "geometric-median": ("GeometricMedian", lambda f: {}),
    "krum": ("Krum", lambda f: {"f": f}),
    "multi-krum": ("MultiKrum", lambda f: {"f": f}),
    "centered-clipping": ("CenteredClipping", lambda f: {"L": 1, "tau": 10.0}),
    "nnm": ("NNM", lambda f: {"f": f}),
    "bucketing": ("Bucketing", lambda f: {"s": 2}),
    "clipping": ("Clipping", lambda f: {"c": 1.0}),
    "arc": ("ARC", lambda f: {"f": f}),
    "mda": ("MDA", lambda f: {"f": f}),
    "smea": ("SMEA", lambda f: {"f": f}),
    "caf": ("CAF", lambda f: {"f": f}),
    "monna": ("MoNNA", lambda f: {"f": f, "idx": 0}),
}

TARGETS = {
    "median": ("<= 10x read", lambda r: r["time"] <= 10 * r["read"]),
    "trimmed-mean": ("<= 10x read", lambda r: r["time"] <= 10 * r["read"]),
    "meamed": ("<= 10x read", lambda r: r["time"] <= 10 * r["read"]),
    "krum": ("<= 1.5x Gram", lambda r: r["time"] <= 1.5 * r["gram"]),
    "multi-krum": ("<= 1.5x Gram", lambda r: r["time"] <= 1.5 * r["gram"]),
    "nnm": ("<= 1.5x Gram", lambda r: r["time"] <= 1.5 * r["gram"]),
    "bulyan": ("<= 3 Gram + 10 read", lambda r: r["time"] <= 3 * r["gram"] + 10 * r["read"]),
    **{name: ("<= 1.5x Gram", lambda r: r["time"] <= 1.5 * r["gram"])
       for name in ("cge", "mda", "smea", "clipped-clustering", "fltrust")},
}


def load_byzfl():
    """Import ``byzfl.aggregators`` without running ``byzfl/__init__.py`` (it imports torchvision,
    which has no CPU build beside torch 2.13 here; the aggregators themselves do not need it)."""
    spec = importlib.util.find_spec("byzfl")
    if spec is None:
        return None
    if "byzfl" not in sys.modules:
        package = types.ModuleType("byzfl")
        package.__path__ = list(spec.submodule_search_locations)  # type: ignore[attr-defined]
        sys.modules["byzfl"] = package
    try:
        return importlib.import_module("byzfl.aggregators")
    except Exception as exc:  # pragma: no cover - depends on the install
        print(f"byzfl present but not importable: {exc}")
        return None


def _status(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1)) * 1024


def peak_extra_bytes(fn: Callable[[], object]) -> Optional[int]:
    """Peak resident memory above the level before ``fn`` (Linux: resets VmHWM via clear_refs)."""
    try:
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")
        before = _status("VmRSS")
        out = fn()
        peak = _status("VmHWM")
        del out
        return max(0, peak - before)
    except (OSError, AttributeError):
        return None


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: compiles kernels, touches memory
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_time_fresh(fn: Callable[[torch.Tensor], object], X: torch.Tensor, repeats: int) -> float:
    """Like :func:`median_time`, but every call gets its own copy of ``X`` (copy time excluded).

    ByzFL's ``Clipping`` and ``ARC`` overwrite their input's rows in place: timed on one shared
    input, every call after the first finds the rows already clipped and only computes norms.
    """
    fn(X.clone())
    times = []
    for _ in range(repeats):
        copy = X.clone()
        start = time.perf_counter()
        fn(copy)
        times.append(time.perf_counter() - start)
        del copy
    return statistics.median(times)


def bench_size(n: int, d: int, repeats: int, rules: List[str], byzfl) -> Dict:
    f = n // 5
    X = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    read = median_time(lambda: X.sum(0), repeats)
    gram = median_time(lambda: X @ X.T, repeats)
    rows = []
    for name in rules:
        extra = {"reference": torch.randn(d, generator=torch.Generator().manual_seed(1))} if name == "fltrust" else {}
        rule = ra.get(name, f=f, **extra)
        t = median_time(lambda: rule(X), repeats)
        mem = peak_extra_bytes(lambda: rule(X))
        row = {"rule": name, "time": t, "read": read, "gram": gram, "mem": mem, "byzfl": None}
        too_many = name in ("mda", "smea") and math.comb(n, f) > PEER_MAX_SUBSETS
        if byzfl is not None and name in PEERS and not too_many:
            cls, kwargs = PEERS[name]
            peer = getattr(byzfl, cls)(**kwargs(f))
            row["byzfl"] = median_time_fresh(peer, X, max(1, repeats // 2))
        rows.append(row)
        print(f"  {name:<18} {t * 1e3:9.1f} ms  {t / read:6.1f}x read  {t / gram:5.2f}x Gram"
              + (f"  mem {mem / X.nbytes:4.2f}x input" if mem is not None else "")
              + (f"  ByzFL {row['byzfl'] * 1e3:9.1f} ms (ByzFL / ours {row['byzfl'] / t:5.1f}x)" if row["byzfl"] else ""),
              flush=True)
    return {"n": n, "d": d, "f": f, "read": read, "gram": gram, "rows": rows, "bytes": X.nbytes}


def flag_section(quick: bool) -> str:
    """The Flag Aggregator rows (issue targets: <= 4x one Gram matrix, >= 10x faster than the SVD path)."""
    from bench_flag import FULL_SIZES, QUICK_SIZES, flag_benchmark_rows, format_table

    rows = flag_benchmark_rows(sizes=QUICK_SIZES if quick else FULL_SIZES, repeats=3 if quick else 5)
    return "\n".join([
        "## Flag Aggregator",
        "",
        "FA with iters = 5 (float32, CPU). `x gram` divides by `ops.gram(X)` (the Gram matrix the rule "
        "computes first); the `x@x.T` row gives the plain product's time for the same input. `init=random` "
        "is the reference's seeded d x m draw (serial CPU random numbers); `init=data` needs no draw "
        "(see docs/flag.md). The SVD path is the literal reference iteration, run once.",
        "",
        format_table(rows),
        "",
    ])


def markdown(results: List[Dict], peers: bool) -> str:
    lines = [
        "## Aggregation rules",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, float32 on CPU. "
        "Times are medians over repeats after one warm-up call (which compiles the numba kernels; "
        "the compile is cached on disk). `read` = `X.sum(0)`, `Gram` = `X @ X.T`, both measured in the "
        "same run; memory is the peak resident memory above the level before the call, as a multiple "
        "of the input's size. f = n // 5.",
        "",
        "Regenerate with `make bench`.",
        "",
    ]
    for res in results:
        lines += [
            f"### n = {res['n']}, d = {res['d']:,} (f = {res['f']}; input {res['bytes'] / 2**20:.0f} MiB)",
            "",
            f"Floors: read {res['read'] * 1e3:.1f} ms, Gram {res['gram'] * 1e3:.1f} ms.",
            "",
            "| rule | time (ms) | / read | / Gram | extra memory | ByzFL (ms) | ByzFL / ours | speed target | met "
            "| memory <= 2x | ByzFL / ours >= 2 |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- |",
        ]
        peer_target = (res["n"], res["d"]) == (15, 10**6)  # the issue's "vs ByzFL" size
        for r in res["rows"]:
            target, check = TARGETS.get(r["rule"], ("", None))
            met = "" if check is None else ("yes" if check(r) else "**no**")
            mem = "" if r["mem"] is None else f"{r['mem'] / res['bytes']:.2f}x"
            mem_ok = "" if r["mem"] is None else ("yes" if r["mem"] <= 2 * res["bytes"] else "**no**")
            peer = "" if not r["byzfl"] else f"{r['byzfl'] * 1e3:.1f}"
            speed = "" if not r["byzfl"] else f"{r['byzfl'] / r['time']:.1f}x"
            peer_ok = "" if not (r["byzfl"] and peer_target) else ("yes" if r["byzfl"] >= 2 * r["time"] else "**no**")
            lines.append(
                f"| {r['rule']} | {r['time'] * 1e3:.1f} | {r['time'] / r['read']:.1f} | {r['time'] / r['gram']:.2f} "
                f"| {mem} | {peer} | {speed} | {target} | {met} | {mem_ok} | {peer_ok} |"
            )
        lines.append("")
    if not peers:
        lines.append("ByzFL was not installed for this run: its columns are empty.")
    if any(r["rule"] in NEW_RULES[1:] for res in results for r in res["rows"]):
        lines += ["", NEW_NOTE + f" Load average when the run finished: {os.getloadavg()[0]:.1f} "
                  f"(the benchmark itself keeps up to {torch.get_num_threads()} threads busy)."]
    return "\n".join(lines) + "\n"


def _new_section(text: str) -> str:
    return text.replace("## Aggregation rules", "## Issue 15's rules", 1).replace(
        "Regenerate with `make bench`.",
        "Regenerate with `python experiments/bench_aggregators.py --new --write docs/benchmarks.md`.", 1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rules", nargs="*", default=RULES)
    parser.add_argument("--no-peers", action="store_true", help="skip ByzFL even when installed")
    parser.add_argument("--no-flag", action="store_true", help="skip the Flag Aggregator section")
    parser.add_argument("--write", type=Path, help="write the sections into this markdown file")
    parser.add_argument("--new", action="store_true",
                        help="issue 15's rules at (15, 1e6) and (60, 1e6), written as section aggregators-new")
    args = parser.parse_args(argv)
    sizes = [(15, 20_000), (30, 20_000)] if args.quick else [(15, 10**6), (60, 10**6), (15, 11 * 10**6)]
    if args.new:
        sizes, args.rules, args.no_flag = sizes[:2], NEW_RULES, True
    byzfl = None if args.no_peers else load_byzfl()
    results = []
    for n, d in sizes:
        print(f"n = {n}, d = {d:,}", flush=True)
        results.append(bench_size(n, d, args.repeats, args.rules, byzfl))
    text = markdown(results, byzfl is not None)
    flag = None if args.no_flag else flag_section(args.quick)
    if args.write:
        write_section(args.write, "aggregators-new" if args.new else "aggregators",
                      _new_section(text) if args.new else text)
        if flag:
            write_section(args.write, "flag", flag)
        print(f"wrote {args.write}")
    else:
        print(text)
        print(flag or "")


if __name__ == "__main__":
    main()
