"""Shared machinery of the paper reproductions (``experiments/{flag,monna,afl}.py``).

A reproduction is a grid of training runs. :func:`run_grid` trains every run of the grid in
single-threaded worker processes (small models use processes far better than intra-op
threads), each one resumable:

* every run lives in ``<out>/runs/<key>/``; it checkpoints every ``run.checkpoint_every``
  steps and, when it finishes, writes ``done.json`` (its configuration, its history and its
  wall time) atomically;
* started again, :func:`run_grid` reuses every ``done.json`` whose configuration equals the
  one asked for, continues every run that has a checkpoint of the same configuration and
  starts the others (a checkpoint of another configuration is discarded).

So a killed reproduction loses at most ``checkpoint_every`` steps per run in flight. The
helpers below write the summary files (``metrics.csv``, ``table.md``, ``plot.png``)
atomically too.
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
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from robustagg._io import digest_path  # noqa: E402
from robustagg.train import checkpoint  # noqa: E402
from robustagg.train.checkpoint import atomic_write_bytes, atomic_write_text  # noqa: E402

Job = Dict[str, Any]  # {"key": str, "config": dict (a TrainConfig dict), **metadata}


def default_out(name: str, scale: str) -> Path:
    """``results/<name>`` for the full scale, ``results/<name>-<scale>`` for the others."""
    return Path("results") / (name if scale == "full" else f"{name}-{scale}")


def _normal(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The configuration as the trainer stores it (defaults filled in), for comparisons."""
    from robustagg.train import TrainConfig

    return TrainConfig.from_dict(dict(config)).to_dict()


def _run_dir(out: Path, key: str) -> Path:
    return out / "runs" / key


def _with_paths(job: Job, out: Path) -> Dict[str, Any]:
    cfg = json.loads(json.dumps(job["config"]))
    run = cfg.setdefault("run", {})
    run["out_dir"] = str(out / "runs")
    run["name"] = job["key"]
    return cfg


def _load_done(path: Path, config: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    if not path.exists():
        return None
    try:
        done = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return done if done.get("config") == config else None


def _die_with_parent() -> None:
    """Pool initializer: on Linux, end this worker when the parent dies (a killed reproduction
    must not leave workers behind that finish runs and race with the next start)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
            if os.getppid() == 1:  # the parent died before the call
                os._exit(1)
        except OSError:  # pragma: no cover - no libc: workers end with the pool as usual
            pass


def _train(args: Any) -> Dict[str, Any]:
    """Train (or continue) one run in this process; returns its ``done.json`` record."""
    job, out, metrics = args
    import torch

    torch.set_num_threads(1)
    from robustagg.train import build

    cfg = _with_paths(job, out)
    start = time.perf_counter()

    def fresh() -> Any:
        trainer = build(cfg)
        if metrics is not None:
            trainer.add_metrics(metrics)
        return trainer

    trainer = fresh()
    resumed = None
    path = trainer.checkpoint_path
    if path is not None and (path.exists() or checkpoint.previous_path(path).exists()):
        try:
            trainer.load_checkpoint()  # the latest that verifies, else the previous one
            resumed = trainer.t
        except ValueError:  # another configuration, or no checkpoint that verifies: start over
            _remove_checkpoints(path)
            trainer = fresh()
    history = trainer.run(write=False)
    record = {"key": job["key"], "config": trainer.config.to_dict(), "history": [dict(r) for r in history],
              "wall": time.perf_counter() - start, "resumed_from": resumed,
              "meta": {k: v for k, v in job.items() if k not in ("key", "config")}}
    atomic_write_text(_run_dir(out, job["key"]) / "done.json", json.dumps(record, default=_json_default))
    if path is not None:
        _remove_checkpoints(path)  # done.json replaces them
    return record


def _remove_checkpoints(path: Path) -> None:
    for p in (path, checkpoint.previous_path(path)):
        for q in (p, digest_path(p)):
            if q.exists():
                q.unlink()


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _prepare(jobs: Sequence[Job]) -> None:
    """Load the datasets once in the parent so forked workers inherit them."""
    import torch

    torch.set_num_threads(1)  # the parent never starts a thread pool: forking stays safe
    from robustagg import data

    for name in sorted({j["config"].get("data", {}).get("name", "digits") for j in jobs}):
        data.load(name)


def run_grid(jobs: Sequence[Job], out: Any, *, processes: Optional[int] = None, fresh: bool = False,
             progress: bool = True, metrics: Optional[Callable[[Any], Dict[str, float]]] = None
             ) -> List[Dict[str, Any]]:
    """Train every job (or reuse its finished record); return the records in the order of ``jobs``,
    each with ``trained`` (whether this call trained or continued it, rather than reusing it).

    Parameters
    ----------
    jobs : list of dict
        ``{"key": unique directory name, "config": TrainConfig dict, **metadata}``.
    out : path
        The reproduction's folder; runs go to ``out/runs/<key>/``.
    processes : int, optional
        Parallel single-threaded runs (default: the number of cores).
    fresh : bool
        Delete ``out/runs`` first.
    metrics : callable, optional
        ``fn(trainer) -> dict`` added to every run's evaluation rows
        (:meth:`robustagg.train.Trainer.add_metrics`); a module-level function, since it is
        sent to the worker processes.
    """
    out = Path(out)
    keys = [j["key"] for j in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError("run_grid: job keys must be unique")
    if fresh:
        shutil.rmtree(out / "runs", ignore_errors=True)
    records: Dict[str, Dict[str, Any]] = {}
    todo = []
    for job in jobs:
        normal = _normal(_with_paths(job, out))
        done = _load_done(_run_dir(out, job["key"]) / "done.json", normal)
        if done is not None:
            records[job["key"]] = done
        else:
            todo.append(job)
    if progress:
        print(f"{len(jobs) - len(todo)} of {len(jobs)} runs already done; training {len(todo)}", flush=True)
    processes = max(1, min(processes or (os.cpu_count() or 1), len(todo) or 1))
    start = time.perf_counter()
    import torch

    threads = torch.get_num_threads()  # runs in this process set one thread: restored below
    if todo:
        tasks = [(job, out, metrics) for job in todo]
        if processes == 1:
            iterator: Iterable[Dict[str, Any]] = map(_train, tasks)
            pool = None
        else:
            fork = sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()
            if fork:
                _prepare(todo)
            pool = multiprocessing.get_context("fork" if fork else "spawn").Pool(processes,
                                                                                initializer=_die_with_parent)
            iterator = pool.imap_unordered(_train, tasks, chunksize=1)
        try:
            for i, record in enumerate(iterator, 1):
                records[record["key"]] = record
                if progress:
                    best = max((r.get("accuracy") or 0.0 for r in record["history"]), default=float("nan"))
                    spent = time.perf_counter() - start
                    left = spent / i * (len(todo) - i)
                    print(f"  [{i}/{len(todo)}] {record['key']}: final accuracy "
                          f"{record['history'][-1].get('accuracy') or float('nan'):.3f}, best {best:.3f} "
                          f"({record['wall']:.0f} s; {spent:.0f} s elapsed, about {left:.0f} s left)", flush=True)
        finally:
            if pool is not None:
                pool.close()
                pool.join()
            torch.set_num_threads(threads)
    trained = {j["key"] for j in todo}
    return [dict(records[k], trained=k in trained) for k in keys]


# ---------------------------------------------------------------------- summaries


def column(record: Mapping[str, Any], key: str) -> List[float]:
    """A history column of a record, ``nan`` where missing."""
    out = []
    for row in record["history"]:
        value = row.get(key)
        out.append(float("nan") if value is None else float(value))
    return out


def final(record: Mapping[str, Any], key: str = "accuracy") -> float:
    values = column(record, key)
    return values[-1] if values else float("nan")


def best(record: Mapping[str, Any], key: str = "accuracy") -> float:
    values = [v for v in column(record, key) if math.isfinite(v)]
    return max(values) if values else float("nan")


def mean_std(values: Sequence[float]) -> tuple:
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def write_csv(path: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows of dicts as CSV, written atomically (floats with 4 decimals)."""
    fields: Dict[str, None] = {}
    for row in rows:
        fields.update(dict.fromkeys(row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(Path(path), buf.getvalue())


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: Optional[str] = None) -> str:
    """A GitHub markdown table; ``align`` is one character per column (``l`` or ``r``)."""
    align = align or "l" + "r" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(value: float, std: Optional[float] = None) -> str:
    """An accuracy in percent (``nan`` prints as ``-``)."""
    if not math.isfinite(value):
        return "-"
    return f"{100 * value:.1f}" + ("" if std is None or not math.isfinite(std) else f" ± {100 * std:.1f}")


def save_figure(fig: Any, path: Any) -> None:
    """A matplotlib figure as PNG, written atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(Path(path), buf.getvalue())


def new_figure(rows: int, cols: int, size: tuple) -> tuple:
    """A figure on the Agg canvas (no pyplot, no global backend) and its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def write_json(path: Any, value: Any) -> None:
    atomic_write_text(Path(path), json.dumps(value, indent=1, default=_json_default))


def elapsed(records: Sequence[Mapping[str, Any]]) -> float:
    """Core-seconds of training in the records' runs: each run's cumulative training time (its
    last history row's ``time``, which a resumed run carries over from its checkpoint; evaluation
    excluded), summed."""
    total = 0.0
    for r in records:
        t = r["history"][-1].get("time") if r.get("history") else None
        total += float(t) if t is not None else float(r.get("wall", 0.0))
    return total


def timed(fn: Callable[[], Any]) -> tuple:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def script_main(argv: Optional[Sequence[str]], run: Callable[..., Dict[str, Any]], name: str, doc: str,
                quick_help: str) -> int:
    """The command line every reproduction script shares: ``[--quick] [--out] [--processes]
    [--fresh] [--no-progress]``; runs ``run(scale, out, processes, fresh, progress)``, prints the table."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--out", default=None, help=f"output folder (default results/{name} or results/{name}-quick)")
    ap.add_argument("--processes", type=int, default=None, help="parallel runs (default: one per core)")
    ap.add_argument("--fresh", action="store_true", help="discard earlier runs in the output folder")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    res = run("quick" if args.quick else "full", args.out, args.processes, args.fresh, not args.no_progress)
    print(res["table"])
    print(f"wrote {res['out']}/table.md, metrics.csv, plot.png, summary.json in {time.perf_counter() - start:.0f} s")
    return 0
