"""Reproduce Run-Off Election's certified accuracy (DPA, DPA+ROE, FA, FA+ROE) on mnist-5k.

    python experiments/roe.py [--quick | --scale cnn] [--out results/roe] [--jobs N] [--no-progress]

Setup (full): ``mnist-5k`` (4,000 training / 1,000 test images), the reference's
hash (sum of integer pixel values); DPA with k = 80 partitions (50 training
images per base model on average, as the paper's MNIST k = 1,200 on 60,000);
FA with k = 80 and d = 16 (1,280 base models; each trains on d = 16 of the
k * d = 1,280 buckets, again ~50 images); base model: multinomial logistic
regression, SGD (30 epochs, batch 10, lr 0.02, momentum 0.9). Certified
accuracy at radii 0, 5, ..., 25. ``--quick`` keeps the DPA ensemble and
FA's k = 80 but uses d = 4 (80 + 320 base models instead of 80 + 1,280).
``--scale cnn`` trains the same two ensembles of the FA MNIST CNN (``fa-cnn``
without dropout, 20 epochs, lr 0.01) into ``results/roe-cnn``: stronger base
models, closer to the paper's NiN (about 2.5 minutes on 2 idle cores).
`robustagg reproduce roe` runs ``full`` and ``cnn``.

Outputs in ``--out`` (default ``results/roe``, ``results/roe-quick`` with
``--quick``), each written atomically: ``table.md``, ``metrics.csv``,
``plot.png``, and the two ensembles (``dpa/``, ``fa/``) with their
certificates. A killed run resumes: base models already stored and
certificates already computed are reused.

The claim checked (Rezaei et al., ICML 2023): ROE adds 3-4 points of certified
accuracy over DPA and FA at the same k; in particular ROE >= its base method at
every radius.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Union

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robustagg._io import atomic_write  # noqa: E402
from robustagg.election.pipeline import run_election  # noqa: E402

RADII = [0, 5, 10, 15, 20, 25]
METHODS = ["dpa", "dpa+roe", "fa", "fa+roe"]
TRAIN = {"epochs": 30, "lr": 0.02, "batch_size": 10, "momentum": 0.9, "weight_decay": 0.0, "seed": 0}
#: scale -> k (DPA and FA), d (FA), test points (None: all 1,000), training overrides
#: and base model (default: multinomial logistic regression)
SCALES: Dict[str, Dict[str, Any]] = {
    "full": {"k": 80, "d": 16, "test_points": None, "train": {}},
    "quick": {"k": 80, "d": 4, "test_points": None, "train": {}},
    # the same ensembles of the FA MNIST CNN (no dropout, 20 epochs, lr 0.01): stronger base models
    "cnn": {"k": 80, "d": 16, "test_points": None, "model": {"name": "fa-cnn", "params": {"dropout": 0.0}},
            "train": {"epochs": 20, "lr": 0.01}},
}
LOGISTIC = {"name": "logistic"}


def _scale(scale: Union[str, Mapping[str, Any]]) -> Dict[str, Any]:
    if isinstance(scale, str):
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {list(SCALES)} or a dict, got {scale!r}")
        return dict(SCALES[scale], name=scale)
    return dict({"test_points": None, "train": {}, "name": "custom"}, **scale)


def configs(scale: Union[str, Mapping[str, Any]], out: Path) -> Dict[str, Dict[str, Any]]:
    """The DPA and FA election configurations (see :mod:`robustagg.election.config`) of a scale."""
    sc = _scale(scale)
    k, d = sc["k"], sc["d"]
    base = {"data": {"dataset": "mnist-5k", "test_points": sc["test_points"]}, "model": sc.get("model", LOGISTIC),
            "train": dict(TRAIN, **sc["train"]), "certify": {"radii": RADII}}
    return {
        "dpa": dict(base, out=str(out / "dpa"), partition={"method": "dpa", "k": k, "hash": "pixel-sum"}),
        "fa": dict(base, out=str(out / "fa"), partition={"method": "fa", "k": k, "d": d, "hash": "pixel-sum"}),
    }


def verdict(accuracy: Dict[str, np.ndarray]) -> Dict[str, Dict[str, Any]]:
    """Per base method: ROE's gain in points at each radius, and whether ROE >= base everywhere.

    ``holds`` is the paper's claim (gain >= 0 at every radius); ``gains`` the
    gain per radius of :data:`RADII`; ``wins_from`` the smallest radius from
    which on ROE is never behind (``None`` if it is behind at the largest).
    """
    out = {}
    for base in ("dpa", "fa"):
        gain = np.round(100 * (accuracy[base + "+roe"] - accuracy[base]), 6)
        behind = np.flatnonzero(gain < 0)
        wins_from = RADII[0] if behind.size == 0 else (RADII[behind[-1] + 1] if behind[-1] + 1 < len(RADII) else None)
        out[base] = {"holds": bool(behind.size == 0), "gains": gain.tolist(), "mean_gain": float(gain.mean()),
                     "min_gain": float(gain.min()), "max_gain": float(gain.max()), "wins_from": wins_from}
    return out


def format_markdown(res: Dict[str, Any]) -> str:
    """``table.md``: setup, the certified-accuracy table, the ROE gains and the verdict."""
    acc, v = res["accuracy"], res["verdict"]
    k, d, n = res["k"], res["d"], res["test_points"]
    lines = [f"# ROE reproduction on mnist-5k ({res['scale']} scale)", "",
             f"DPA k = {k}; FA k = {k}, d = {d} ({k * d} base models); {n} test points; "
             f"{res.get('model', 'logistic')} base models; pixel-sum hash. Certified accuracy (%):", "",
             "| radius | " + " | ".join(METHODS) + " | ROE − DPA | ROE − FA |",
             "|---" * (len(METHODS) + 3) + "|"]
    for i, r in enumerate(RADII):
        row = [f"{100 * acc[m][i]:.1f}" for m in METHODS]
        gains = [f"{100 * (acc[b + '+roe'][i] - acc[b][i]):+.1f}" for b in ("dpa", "fa")]
        lines.append(f"| {r} | " + " | ".join(row + gains) + " |")
    lines += ["", "Paper's claim: ROE adds 3-4 points of certified accuracy over DPA and FA at the same k "
              "(and is at least as good at every radius).", ""]
    for b in ("dpa", "fa"):
        x = v[b]
        since = "never" if x["wins_from"] is None else f"from radius {x['wins_from']} on"
        lines.append(f"* {b.upper()}+ROE >= {b.upper()} at every radius: **{'yes' if x['holds'] else 'no'}**; "
                     f"gain {x['mean_gain']:+.1f} points on average over the radii "
                     f"(from {x['min_gain']:+.1f} to {x['max_gain']:+.1f}); ROE >= {b.upper()} {since}.")
    t = res["timing"]
    lines += ["", f"Training: {t['trained']} base models trained in {t['train_s']:.0f} s wall with {t['jobs']} "
              f"jobs ({t['per_model_s']:.3f} s wall per model, about {t['per_model_s'] * t['jobs']:.2f} "
              f"core-seconds), {t['this_run_trained']} of them by the last invocation; certification "
              f"{t['certify_s']:.1f} s.", ""]
    return "\n".join(lines)


def write_metrics(path: Path, res: Dict[str, Any]) -> None:
    """``metrics.csv``: one row per (method, radius)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "k", "d", "num_models", "test_points", "radius", "certified_accuracy"])
    for m in METHODS:
        d = res["d"] if m.startswith("fa") else 1
        for i, r in enumerate(RADII):
            w.writerow([m, res["k"], d, res["k"] * d, res["test_points"], r, f"{res['accuracy'][m][i]:.4f}"])
    atomic_write(path, lambda fh: fh.write(buf.getvalue().encode()))


def write_plot(path: Path, res: Dict[str, Any]) -> None:
    """``plot.png``: certified accuracy against radius, one curve per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    styles = {"dpa": ("C0", "--"), "dpa+roe": ("C0", "-"), "fa": ("C1", "--"), "fa+roe": ("C1", "-")}
    for m in METHODS:
        color, ls = styles[m]
        ax.plot(RADII, 100 * res["accuracy"][m], ls, color=color, marker="o", ms=3, label=m.upper())
    ax.set_xlabel("radius (poisoned training samples)")
    ax.set_ylabel("certified accuracy (%)")
    model = res.get("model", "logistic-regression").strip("`")
    ax.set_title(f"mnist-5k, {model} base models, k = {res['k']} (FA d = {res['d']})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write(path, lambda fh: fh.write(buf.getvalue()))


def _timing(out: Path, trained: int, train_s: float, certify_s: float, jobs: int, total: int) -> Dict[str, Any]:
    """Training time summed over the invocations in ``out`` since the last fresh run (``timing.json``).

    ``trained`` counts model trainings (a model lost and trained again counts twice).
    """
    path = out / "timing.json"
    old = json.loads(path.read_text()) if path.exists() and trained < total else {}
    t = {"trained": old.get("trained", 0) + trained, "train_s": old.get("train_s", 0.0) + train_s,
         "jobs": jobs if trained else old.get("jobs", jobs), "certify_s": certify_s, "this_run_trained": trained}
    t["per_model_s"] = t["train_s"] / t["trained"] if t["trained"] else float("nan")
    atomic_write(path, lambda fh: fh.write(json.dumps(t, indent=1).encode()))
    return t


def run(scale: Union[str, Mapping[str, Any]] = "full", out: Any = None, jobs: int = 1,
        progress: bool = False) -> Dict[str, Any]:
    """Train (or resume) both ensembles, certify, write the outputs and return the results.

    Parameters
    ----------
    scale : {"full", "quick"} or dict
        A name of :data:`SCALES`, or a dict with ``k``, ``d`` and optionally
        ``test_points`` and ``train`` (overrides of :data:`TRAIN`), e.g. for tests.
    out : path, optional
        Output directory (default ``results/roe``, ``results/roe-quick`` for "quick").
    jobs : int
        Worker processes for training (``1``: in this process, one torch thread).
    progress : bool
        Progress over the base models of each ensemble on stderr: a ``tqdm``
        bar on a terminal, else a line at every tenth of the models.

    Returns
    -------
    dict
        ``scale``, ``k``, ``d``, ``test_points``, ``accuracy`` (method -> array
        over :data:`RADII`), ``verdict`` (see :func:`verdict`), ``timing`` and ``out``.
    """
    sc = _scale(scale)
    out = Path(out if out is not None else ("results/roe" if sc["name"] == "full" else f"results/roe-{sc['name']}"))
    accuracy: Dict[str, np.ndarray] = {}
    trained, train_s, certify_s, n = 0, 0.0, 0.0, 0
    for cfg in configs(sc, out).values():  # every base model trains on one torch thread (train_ensemble)
        r = run_election(cfg, jobs=jobs, progress=progress)
        accuracy.update(r.accuracy)
        trained += r.trained
        train_s += r.train_seconds
        certify_s += r.certify_seconds
        n = r.labels.shape[0]
    timing = _timing(out, trained, train_s, certify_s, jobs, sc["k"] * (1 + sc["d"]))
    model = sc.get("model", LOGISTIC)
    res = {"scale": sc["name"], "k": sc["k"], "d": sc["d"], "test_points": n,
           "model": "logistic-regression" if model == LOGISTIC else f"`{model['name']}`",
           "accuracy": {m: accuracy[m] for m in METHODS},
           "out": str(out), "timing": timing}
    res["verdict"] = verdict(res["accuracy"])
    atomic_write(out / "table.md", lambda fh: fh.write(format_markdown(res).encode()))
    write_metrics(out / "metrics.csv", res)
    write_plot(out / "plot.png", res)
    return res


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="FA with d = 4 instead of 16 (400 base models in all)")
    ap.add_argument("--scale", choices=list(SCALES), default=None, help="a named scale (full, quick, cnn)")
    ap.add_argument("--out", default=None, help="output directory (default results/roe or results/roe-<scale>)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes (default 2)")
    ap.add_argument("--no-progress", action="store_true",
                    help="no progress (default: a bar on a terminal, a line per tenth of the models in a log)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    scale = args.scale or ("quick" if args.quick else "full")
    res = run(scale, args.out, args.jobs, progress=not args.no_progress)
    print(format_markdown(res))
    print(f"wrote {res['out']}/table.md, metrics.csv, plot.png in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
