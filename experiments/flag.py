"""Reproduce the Flag Aggregator paper's random-attack experiment on the authors' recipe.

    python experiments/flag.py [--quick | --scale NAME] [--out DIR] [--processes N] [--fresh]
    robustagg reproduce flag [--quick]
    python experiments/flag.py --scale gpu          # the paper's setting exactly (CUDA, CIFAR-10)

The paper (Almasi, Mishra, Vamanan, Ravi, "Flag Aggregator: Scalable Distributed Training
under Failures and Augmented Losses using Convex Optimization", ICLR 2024) claims that **FA is
the most accurate rule** under random and augmented-data faults and that **trimmed mean
collapses already at f = 1**. The authors' scripts (``run_exp.sh``: random attack;
``scripts_for_experiments/run_exp_augmented.sh``: 3 augmented-data workers) train a
torchvision ResNet-18 on CIFAR-10 with p = 15 workers, batch 128 per worker, server SGD
lr 0.2, momentum 0.9, weight decay 5e-4, lr x0.2 every 10 epochs (260 iterations), 1,050
iterations, f in {1, 2, 3}, seeds 2021-2023, against flag, bulyan, krum (Multi-Krum selecting
n - f - 2), median, meamed, phocas and trmean. FA as trained there: every input
unit-normalised, one IRLS iteration, m = 8, output Y Y^T sum_i u_i / m (``flag`` with
``iters=1``, its default ``output``). Each Byzantine worker sends a fresh U[0, 1)^d vector.

Scales (``SCALES``):

* ``full`` (default; 99 runs, about 13 minutes on 2 cores): that recipe on CPU. ResNet-18 with the
  torchvision layout (7x7 stride-2 stem + max-pool, BatchNorm) at width 8 (1/8 of 64) on
  mnist-5k (CIFAR-10 cannot be downloaded offline), batch 128, the reference optimiser,
  80 steps with the x0.2 decay every 20 steps (260/1,050 of the run, as in the reference),
  seeds 0-2, f = 1, 2, 3 and 3 augmented-data workers. Cut for time: the iteration count
  (1,050 -> 80), the width, the data; no lambda sweep (see ``fa-cnn``). Two extra panels
  measure the mechanism: zero-mean U[-1/2, 1/2) noise (``centred f=3``) and the remedies
  ``nnm>flag``, ``bucketing>flag``, ``flag m=2`` under the f = 3 random attack.
* ``quick``: f = 3 random and centred noise, 4 rules, 1 seed, 30 steps (``pytest -m slow``).
* ``gpu``: the paper's setting exactly: CIFAR-10 (downloaded), ResNet-18 width 64 with the
  torchvision stem, 1,050 iterations, decay every 260, the 7 rules, f = 1, 2, 3, seeds 0-2
  (63 runs, one process on ``cuda``).
* ``fa-cnn``: the earlier grid, **not a paper setting**: FA's MNIST CNN on mnist-5k, batch 32,
  SGD lr 0.05, momentum 0.9, 300 steps, plus the paper's output formula and a lambda sweep.

Outputs in ``--out`` (default ``results/flag``, ``results/flag-<scale>``), written atomically:
``table.md``, ``metrics.csv``, ``plot.png``, ``summary.json`` and ``runs/<key>/`` (per-run
checkpoints and records). A killed run resumes where it stopped (see ``experiments/_repro.py``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _repro as rp  # noqa: E402

#: the authors' seven rules, in our names ("multi-krum" selects n - f - 2, like their "krum")
RULES = ["flag", "bulyan", "multi-krum", "median", "meamed", "phocas", "trimmed-mean"]
#: measured in the mechanism panels only (random f=3 and centred f=3)
REMEDIES = ["nnm>flag", "bucketing>flag", "flag m=2"]
RECIPE = {"data": {"name": "mnist-5k"}, "model": {"name": "resnet18", "params": {"width": 8, "stem": "imagenet"}},
          "batch_size": 128, "lr": 0.2, "momentum": 0.9, "weight_decay": 5e-4, "decay": 0.2,
          "decay_fraction": 260 / 1050, "iters": 1, "n": 15, "m": 8, "krum_m": "n-f-2"}
FA_CNN = {"data": {"name": "mnist-5k"}, "model": {"name": "fa-cnn", "params": {}}, "batch_size": 32, "lr": 0.05,
          "momentum": 0.9, "weight_decay": 0.0, "decay": 1.0, "decay_fraction": 1.0, "iters": 5, "n": 15, "m": 8,
          "krum_m": "n-f"}
_MAIN = {"seeds": [0, 1, 2], "f_values": [1, 2, 3], "augmented": True, "rules": RULES, "lams": [], "lam_n": 7,
         "lam_m": 4, "centred": [], "remedies": [], "device": "cpu", "paper": True}
SCALES: Dict[str, Dict[str, Any]] = {
    "full": {**RECIPE, **_MAIN, "steps": 80, "eval_every": 10, "centred": ["flag", "multi-krum"],
             "remedies": REMEDIES},
    "quick": {**RECIPE, **_MAIN, "steps": 30, "eval_every": 10, "seeds": [0], "f_values": [3], "augmented": False,
              "rules": ["flag", "multi-krum", "trimmed-mean", "mean"], "centred": ["flag"]},
    "gpu": {**RECIPE, **_MAIN, "data": {"name": "cifar10", "params": {"download": True}},
            "model": {"name": "resnet18", "params": {"width": 64, "stem": "imagenet"}}, "steps": 1050,
            "eval_every": 26, "augmented": False, "device": "cuda"},
    "fa-cnn": {**FA_CNN, **_MAIN, "steps": 300, "eval_every": 25, "paper": False,
               "rules": ["flag", "flag-raw", "bulyan", "multi-krum", "median", "trimmed-mean", "meamed", "mean"],
               "lams": [0.0, 1.0, 4.0, 16.0]},
}
COLLAPSE = 0.20  # "collapses": final accuracy at least this far (20 points) below FA's


def _scale(scale: Union[str, Mapping[str, Any]]) -> Dict[str, Any]:
    if isinstance(scale, str):
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {list(SCALES)} or a dict, got {scale!r}")
        return dict(SCALES[scale], name=scale)
    unknown = set(scale) - set(SCALES["full"]) - {"name"}
    if unknown:
        raise ValueError(f"unknown scale keys {sorted(unknown)}; valid: {sorted(SCALES['full'])}")
    return {**SCALES["full"], "name": "custom", **scale}


def raw_output() -> str:
    """The ``flag`` output option that uses raw gradients: ``"raw"`` (``"paper"`` in older versions)."""
    from robustagg.aggregators import FlagAggregator

    try:
        FlagAggregator(output="raw")
        return "raw"
    except ValueError:
        return "paper"


def _rule(name: str, f: int, sc: Dict[str, Any], lam: float = 0.0, m: Optional[int] = None) -> Dict[str, Any]:
    """The aggregator config of a rule name of the grid (``a>b`` is a pipeline)."""
    if ">" in name:
        pre, last = name.split(">")
        stage = {"name": pre, "f": f, "params": {"s": 2, "seed": 0} if pre == "bucketing" else {}}
        inner = _rule(last, f, sc, m=(sc["m"] + 1) // 2 if pre == "bucketing" else None)  # p = ceil(n / 2) rows
        return {"name": "mean", "f": f, "params": {}, "pipeline": [stage, {k: inner[k] for k in ("name", "f", "params")}]}
    if name.startswith("flag"):
        params: Dict[str, Any] = {"m": m or sc["m"], "lam": lam, "iters": sc["iters"]}
        if name == "flag-raw":
            params["output"] = raw_output()
        elif name.startswith("flag m="):
            params["m"] = int(name.split("=")[1])
        return {"name": "flag", "f": f, "params": params}
    if name == "multi-krum" and sc["krum_m"] == "n-f-2":
        return {"name": name, "f": f, "params": {"m": sc["n"] - f - 2}}
    return {"name": name, "f": f, "params": {}}


def _config(sc: Dict[str, Any], *, n: int, f: int, rule: Dict[str, Any], seed: int, threat: str) -> Dict[str, Any]:
    decay_every = max(1, round(sc["steps"] * sc["decay_fraction"]))
    optimizer: Dict[str, Any] = {"lr": sc["lr"], "momentum": sc["momentum"], "weight_decay": sc["weight_decay"]}
    if sc["decay"] != 1.0:
        optimizer.update(schedule="step", schedule_params={"step_size": decay_every, "gamma": sc["decay"]})
    cfg = {
        "data": sc["data"], "model": sc["model"], "workers": {"n": n, "f": f, "batch_size": sc["batch_size"]},
        "aggregator": rule, "optimizer": optimizer,
        "run": {"steps": sc["steps"], "eval_every": sc["eval_every"], "checkpoint_every": sc["eval_every"],
                "seed": seed, "device": sc["device"]},
    }
    if threat == "augmented":
        cfg["poisoning"] = {"name": "augmented"}
    else:  # the authors' random attack: a fresh torch.rand vector, U[0, 1)^d; "centred": U[-1/2, 1/2)^d
        low = -0.5 if threat == "centred" else 0.0
        cfg["attack"] = {"name": "random", "params": {"low": low, "high": low + 1.0}}
    return cfg


def jobs(scale: Union[str, Mapping[str, Any]]) -> List[rp.Job]:
    """Every run of a scale: the main grid (setting x rule x seed), the mechanism panels, the lambda sweep."""
    sc = _scale(scale)
    settings = [("random", f, sc["rules"]) for f in sc["f_values"]]
    settings += [("augmented", 3, sc["rules"])] if sc["augmented"] else []
    settings += [("random", 3, sc["remedies"])] if sc["remedies"] else []
    settings += [("centred", 3, sc["centred"])] if sc["centred"] else []
    out = []
    for seed in sc["seeds"]:
        for threat, f, rules in settings:
            for rule in rules:
                key = f"{threat}-f{f}-{rule.replace('>', '+').replace(' ', '').replace('=', '')}-s{seed}"
                out.append({"key": key, "setting": f"{threat} f={f}", "rule": rule, "f": f, "seed": seed, "lam": None,
                            "config": _config(sc, n=sc["n"], f=f, rule=_rule(rule, f, sc), seed=seed, threat=threat)})
        for lam in sc["lams"]:
            out.append({"key": f"lam{lam:g}-s{seed}", "setting": "lambda sweep", "rule": "flag", "f": 1,
                        "seed": seed, "lam": lam,
                        "config": _config(dict(sc, m=sc["lam_m"]), n=sc["lam_n"], f=1, rule=_rule("flag", 1, dict(
                            sc, m=sc["lam_m"]), lam), seed=seed, threat="random")})
    return out


def summarise(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Mean (over seeds) final and best accuracy per (setting, rule) and per lambda."""
    cells: Dict[tuple, List[Dict[str, Any]]] = {}
    for rec in records:
        meta = rec["meta"]
        key = (meta["setting"], meta["rule"] if meta["lam"] is None else f"lam={meta['lam']:g}")
        cells.setdefault(key, []).append(rec)
    table = {}
    for key, recs in cells.items():
        fin = rp.mean_std([rp.final(r) for r in recs])
        top = rp.mean_std([rp.best(r) for r in recs])
        table[key] = {"final": fin[0], "final_std": fin[1], "best": top[0], "best_std": top[1], "seeds": len(recs)}
    return table


def verdict(table: Dict[tuple, Dict[str, Any]], settings: List[str], rules: List[str]) -> Dict[str, Any]:
    """FA's rank per setting (by final accuracy), whether trimmed mean collapses at f = 1, and the
    mechanism panels (FA under zero-mean noise, the remedies) where they were run."""
    ranks, gaps = {}, {}
    for s in settings:
        scores = {r: table[(s, r)]["final"] for r in rules if (s, r) in table}
        order = sorted((r for r in scores if r != "flag-raw"), key=lambda r: -scores[r])
        ranks[s] = order.index("flag") + 1 if "flag" in scores else None
        others = [v for r, v in scores.items() if not r.startswith("flag")]
        gaps[s] = scores.get("flag", math.nan) - max(others) if others else math.nan
    most_accurate = all(r == 1 for r in ranks.values() if r is not None)
    collapse = {}
    for s in settings:
        if ("flag" in rules and "trimmed-mean" in rules and (s, "trimmed-mean") in table and (s, "flag") in table):
            collapse[s] = table[(s, "flag")]["final"] - table[(s, "trimmed-mean")]["final"] >= COLLAPSE
    f1 = next((s for s in settings if s == "random f=1"), None)
    lines = [f"FA is the most accurate rule in every setting: **{'yes' if most_accurate else 'no'}** (rank by final "
             "accuracy: " + ", ".join(f"{s}: {ranks[s]} of {len([r for r in rules if (s, r) in table])} "
                                      f"({100 * gaps[s]:+.1f} pts vs the best other rule)" for s in settings) + ")."]
    if "flag-raw" in rules:
        raw_gaps = {s: table[(s, "flag-raw")]["final"] - table[(s, "flag")]["final"]
                    for s in settings if (s, "flag-raw") in table and (s, "flag") in table}
        lines.append("FA with the raw-gradient output instead of the reference code's: "
                     + ", ".join(f"{s}: {100 * g:+.1f} pts" for s, g in raw_gaps.items()) + ".")
    if f1 is not None and f1 in collapse:
        lines.append(f"Trimmed mean collapses at f = 1 (>= {100 * COLLAPSE:.0f} pts below FA): "
                     f"**{'yes' if collapse[f1] else 'no'}** (trimmed mean "
                     f"{rp.pct(table[(f1, 'trimmed-mean')]['final'])}% vs FA {rp.pct(table[(f1, 'flag')]['final'])}%).")
    mechanism = {}
    base = table.get(("random f=3", "flag"))
    if base is not None:
        mechanism = {k[1] if k[0] == "random f=3" else "flag, zero-mean noise": c["final"] - base["final"]
                     for k, c in table.items() if k[1] != "flag" or k[0] == "centred f=3"
                     if (k[0] == "centred f=3" and k[1] == "flag") or (k[0] == "random f=3" and k[1] in REMEDIES)}
        if mechanism:
            lines.append("Against FA under U[0,1) at f = 3: " + ", ".join(
                f"{k} {100 * v:+.1f} pts" for k, v in mechanism.items()) + ".")
    return {"holds": bool(most_accurate and collapse.get(f1, True)), "most_accurate": most_accurate, "ranks": ranks,
            "gaps": gaps, "trimmed_collapses": collapse, "mechanism": mechanism, "line": " ".join(lines)}


def _setup_rows(sc: Dict[str, Any]) -> List[tuple]:
    """The setup side by side: the authors' scripts, and this scale."""
    model = sc["model"]
    params = ", ".join(f"{k} {v}" for k, v in model.get("params", {}).items())
    opt = f"SGD lr {sc['lr']:g}, momentum {sc['momentum']:g}, weight decay {sc['weight_decay']:g}"
    if sc["decay"] != 1.0:
        opt += f", lr x{sc['decay']:g} every {max(1, round(sc['steps'] * sc['decay_fraction']))} steps"
    fa = f"m = {sc['m']}, {sc['iters']} IRLS iteration(s), unit-normalised inputs, output Y Y^T sum u_i / m"
    return [
        ("script", "`run_exp.sh` (random), `scripts_for_experiments/run_exp_augmented.sh`", "`experiments/flag.py`"
         f" scale `{sc['name']}`" + ("" if sc["paper"] else " (**not a paper setting**)")),
        ("data", "CIFAR-10 (50,000 / 10,000), random crop + flip", f"`{sc['data']['name']}`"),
        ("model", "torchvision ResNet-18 / ResNet-50 (BatchNorm)", f"`{model['name']}` ({params})"),
        ("workers", "p = 15, f in {1, 2, 3}", f"p = {sc['n']}, f in {sc['f_values']}; every rule declares the true f"),
        ("batch", "128 per worker", f"{sc['batch_size']} per worker"),
        ("optimiser", "server SGD lr 0.2, momentum 0.9, weight decay 5e-4, lr x0.2 every 260 iterations", opt),
        ("iterations", "1,050 (random), 800 (augmented)", f"{sc['steps']}"),
        ("FA", "m = 8, 1 IRLS iteration (`n_its = 1`), unit-normalised inputs, output Y Y^T sum u_i / m", fa),
        ("faults", "each Byzantine worker sends `torch.rand`, U[0, 1)^d; 3 workers on noisy augmented images",
         "`random` attack U[0, 1)^d" + ("; 3 `augmented` workers (gamma, elastic warp, noise)" if sc["augmented"]
                                        else "")),
        ("rules", "flag, bulyan, krum (n - f - 2 selected), median, meamed, phocas, trmean",
         ", ".join(sc["rules"]) + ("; multi-krum selects n - f - 2" if sc["krum_m"] == "n-f-2" else "")),
        ("seeds", "2021, 2022, 2023", ", ".join(str(x) for x in sc["seeds"])),
    ]


def format_markdown(sc: Dict[str, Any], table: Dict[tuple, Dict[str, Any]], settings: List[str],
                    v: Dict[str, Any], core_s: float) -> str:
    out = [f"# Flag Aggregator reproduction ({sc['name']} scale)", "",
           rp.markdown_table(["", "authors' scripts", "ours"], _setup_rows(sc), "lll"), "",
           "Final test accuracy (%) after the last step, mean ± std over the seeds (mean best accuracy over "
           "the run in parentheses); the best of the paper's rules per setting in bold. Rows below the paper's "
           "rules are the mechanism panels (f = 3 only).", ""]
    panels = settings + [s for s in dict.fromkeys(k[0] for k in table) if s not in settings and s != "lambda sweep"]
    rules = [r for r in sc["rules"] + sc["remedies"] if any((s, r) in table for s in panels)]
    body = []
    for r in rules:
        cells = []
        for s in panels:
            c = table.get((s, r))
            if c is None:
                cells.append("-")
                continue
            top = max((table[(s, q)]["final"] for q in sc["rules"] if (s, q) in table), default=math.nan)
            text = f"{rp.pct(c['final'], c['final_std'] if c['seeds'] > 1 else None)} ({rp.pct(c['best'])})"
            cells.append(f"**{text}**" if c["final"] == top and r in sc["rules"] else text)
        body.append([r] + cells)
    out += [rp.markdown_table(["rule"] + panels, body), ""]
    lam_cells = sorted(((float(k[1].split("=")[1]), c) for k, c in table.items() if k[0] == "lambda sweep"),
                       key=lambda item: item[0])
    lam_rows = [(f"{lam:g}", rp.pct(c["final"], c["final_std"] if c["seeds"] > 1 else None), rp.pct(c["best"]))
                for lam, c in lam_cells]
    if lam_rows:
        out += [f"Lambda sweep (FA, p = {sc['lam_n']}, f = 1 random worker, m = {sc['lam_m']}):", "",
                rp.markdown_table(["lambda", "final accuracy (%)", "best accuracy (%)"], lam_rows), ""]
    out += ["Paper's claims: FA is the most accurate rule; trimmed mean collapses already at f = 1.", "",
            f"Verdict: {v['line']}", "", f"Compute: {core_s / 60:.1f} core-minutes of training.", ""]
    return "\n".join(out)


def write_plot(path: Path, records: List[Dict[str, Any]], settings: List[str], rules: List[str]) -> None:
    """Test accuracy against the step, averaged over the seeds: one panel per setting (+ lambda)."""
    panels = settings + list(dict.fromkeys(r["meta"]["setting"] for r in records if r["meta"]["setting"] not in settings))
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = rp.new_figure(rows, cols, (4.4 * cols, 3.3 * rows))
    for i, panel in enumerate(panels):
        ax = axes[i // cols][i % cols]
        curves: Dict[str, List[Dict[str, Any]]] = {}
        for rec in records:
            if rec["meta"]["setting"] == panel:
                label = rec["meta"]["rule"] if panel != "lambda sweep" else f"lambda = {rec['meta']['lam']:g}"
                curves.setdefault(label, []).append(rec)
        for j, (label, recs) in enumerate(curves.items()):
            steps = rp.column(recs[0], "step")
            acc = [rp.mean_std([rp.column(r, "accuracy")[k] for r in recs if k < len(r["history"])])[0]
                   for k in range(len(steps))]
            lam = panel == "lambda sweep"
            ax.plot(steps, acc, "-" if lam or "flag" in label else "--", label=label,
                    color=f"C{(j if lam else rules.index(label)) % 10}", linewidth=2 if label == "flag" else 1.2)
        ax.set_title(panel, fontsize=9)
        ax.set_ylim(0, 1)
        ax.set_xlabel("step")
        ax.set_ylabel("test accuracy (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right", ncol=2)
    for k in range(len(panels), rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    fig.tight_layout()
    rp.save_figure(fig, path)


def run(scale: Union[str, Mapping[str, Any]] = "full", out: Any = None, processes: Optional[int] = None,
        fresh: bool = False, progress: bool = True) -> Dict[str, Any]:
    """Train (or resume) every run of ``scale``, write the outputs into ``out`` and return the results."""
    sc = _scale(scale)
    out = Path(out) if out is not None else rp.default_out("flag", sc["name"])
    start = time.perf_counter()
    grid = jobs(sc)
    if sc["device"] != "cpu" and processes is None:
        processes = 1  # one GPU: runs one after the other in this process
    records = rp.run_grid(grid, out, processes=processes, fresh=fresh, progress=progress)
    settings = list(dict.fromkeys(j["setting"] for j in grid if j["setting"].split()[0] in ("random", "augmented")))
    table = summarise(records)
    v = verdict(table, settings, sc["rules"])
    text = format_markdown(sc, table, settings, v, rp.elapsed(records))
    rp.atomic_write_text(out / "table.md", text)
    rp.write_csv(out / "metrics.csv", [
        {"setting": r["meta"]["setting"], "rule": r["meta"]["rule"], "f": r["meta"]["f"],
         "lam": "" if r["meta"]["lam"] is None else r["meta"]["lam"], "seed": r["meta"]["seed"],
         "final_accuracy": rp.final(r), "best_accuracy": rp.best(r), "final_loss": rp.final(r, "loss"),
         "train_seconds": float(r["history"][-1].get("time") or math.nan)} for r in records])
    write_plot(out / "plot.png", records, settings, sc["rules"] + sc["remedies"])
    summary = {"scale": sc["name"], "verdict": v, "wall_s": time.perf_counter() - start,
               "table": {f"{k[0]} | {k[1]}": c for k, c in table.items()}}
    rp.write_json(out / "summary.json", summary)
    return {"out": str(out), "table": text, "verdict": v, "cells": table, "records": records,
            "wall_s": summary["wall_s"]}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true", help="f = 3, 4 rules, 1 seed, 30 steps (about 2 minutes)")
    which.add_argument("--scale", choices=list(SCALES), default=None, help="full (default), quick, gpu, fa-cnn")
    ap.add_argument("--out", default=None, help="output folder (default results/flag or results/flag-<scale>)")
    ap.add_argument("--processes", type=int, default=None, help="parallel runs (default: one per core; 1 on a GPU)")
    ap.add_argument("--fresh", action="store_true", help="discard earlier runs in the output folder")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    res = run("quick" if args.quick else (args.scale or "full"), args.out, args.processes, args.fresh,
              not args.no_progress)
    print(res["table"])
    print(f"wrote {res['out']}/table.md, metrics.csv, plot.png, summary.json in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
