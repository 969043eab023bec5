"""Reproduce MoNNA's MNIST experiment (Farhadkhani et al., ICML 2023) at laptop scale.

    python experiments/monna.py [--quick] [--out DIR] [--processes N] [--fresh] [--no-progress]

The paper: n = 26 nodes of which f = 5 Byzantine, batch 25, 600 steps,
gamma_t = 0.75 / (1 + t/50), l2 = 1e-4, beta in {0, 0.99}, Dirichlet alpha in {1, 5}, attacks
ALIE, FOE (line-searched), SF (sign flip) and LF (label flipping); MoNNA against D-SGD,
trimmed mean (TM), geometric median (GM) and self-centred clipping (CC); the metric is the
maximum test accuracy of honest node 0, mean +- std over 3 seeds. Claim checked: MoNNA
(beta = 0.99) matches or beats every baseline under every attack.

What is kept (``full`` scale): n = 26, f = 5, batch 25, the gamma schedule (gamma_0 = 0.75,
decay 50), l2 = 1e-4, all 4 attacks, all 5 methods, beta = 0.99, alpha in {1, 5} and 3 seeds.
What is reduced, so that the grid (144 runs) fits in <= 18 minutes on 2 CPU cores. Measured
with one single-threaded process: the paper's CNN takes 0.35 s/step under ALIE and 1.2-1.3
s/step under FOE (whose line search evaluates node 0's mixing 18 times a step), i.e. 240
runs of 600 steps would take about a day of one core; the MLP below takes 0.02-0.04 s/step,
0.08-0.09 s/step under FOE with 10 evaluations (D-SGD diverges under FOE within 50 steps).
The whole grid is about 1,750 core-seconds: about 15 minutes with 2 processes on two free
cores (more when other jobs share them).

* data: ``mnist-5k`` (4,000 training / 1,000 test MNIST images shipped offline) instead of
  MNIST's 60,000 / 10,000 (no download on the test machines);
* model: the reference code's MNIST "full" MLP (784-100-10, 79,510 parameters; ``mlp``)
  instead of its conv model (``monna-cnn``, 431,080 parameters): 6-8x cheaper per step;
* steps: 300 instead of 600 (gamma has decayed to 0.75/7 by then);
* beta = 0 is run for MoNNA and D-SGD only, at alpha = 1;
* FOE's line search: 5 grid points + 4 golden-section steps (10 evaluations of node 0's
  mixing per step) instead of robustagg's default 9 + 8 (the reference explores 16).

CC is self-centred clipping with robustagg's default radius tau = 1 (``p2p.mixing = "cc"``).

``--quick`` (<= 2 minutes; 12 runs, about 90 core-seconds): alpha = 1, beta = 0.99, all 4
attacks, MoNNA / D-SGD / TM, one seed, 150 steps; it checks what its data supports
(``QUICK_CLAIM``).

Outputs in ``--out`` (default ``results/monna``, ``results/monna-quick`` with ``--quick``),
each written atomically: ``table.md`` (setup "paper vs ours", one table per (alpha, beta),
the verdict), ``metrics.csv`` (one row per alpha, beta, attack, method, seed: max and final
accuracy), ``plot.png`` (node 0's accuracy against the step, one panel per attack, alpha = 1,
beta = 0.99, seed-averaged), ``summary.json`` and every run under ``runs/<key>/``. A killed
reproduction resumes from the runs' checkpoints; finished runs are reused (``--fresh``
starts over).
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _repro as R  # noqa: E402

#: method -> (label, [p2p] settings)
METHODS: Dict[str, tuple] = {
    "monna": ("MoNNA", {"mixing": "nna"}),
    "dsgd": ("D-SGD", {"mixing": "dsgd"}),
    "trimmed-mean": ("TM", {"mixing": "trimmed-mean"}),
    "geometric-median": ("GM", {"mixing": "geometric-median"}),
    "cc": ("CC", {"mixing": "cc"}),
}
#: attack -> label; the configuration part is built by :func:`_threat`
ATTACKS: Dict[str, str] = {"alie": "ALIE", "foe": "FOE", "sf": "SF", "lf": "LF"}
ALL_METHODS = list(METHODS)
_COMMON = {"data": "mnist-5k", "n": 26, "f": 5, "batch_size": 25, "lr": 0.75, "decay": 50, "l2": 1e-4,
           "eval_every": 10, "checkpoint_every": 50, "foe": {"grid": 5, "refine": 4}}
#: a scale: the common keys above plus model, steps, seeds, attacks and settings
#: (a list of [alpha, beta, methods]); dict scales may leave out any key of ``full``
SCALES: Dict[str, Dict[str, Any]] = {
    "full": dict(_COMMON, model="mlp", steps=300, seeds=[0, 1, 2], attacks=list(ATTACKS),
                 settings=[[1.0, 0.99, ALL_METHODS], [5.0, 0.99, ALL_METHODS], [1.0, 0.0, ["monna", "dsgd"]]]),
    "quick": dict(_COMMON, model="mlp", steps=150, seeds=[0], attacks=list(ATTACKS),
                  settings=[[1.0, 0.99, ["monna", "dsgd", "trimmed-mean"]]]),
}
PAPER = {"data": "MNIST (60,000 / 10,000)", "model": "CNN (conv20-conv50-fc500, 431k parameters)",
         "n": 26, "f": 5, "batch_size": 25, "steps": 600, "lr": "0.75 / (1 + t/50)", "l2": "0.0001",
         "seeds": 3, "alphas": "1, 5", "betas": "0, 0.99 (all methods)", "attacks": "ALIE, FOE, SF, LF",
         "methods": "MoNNA, D-SGD, TM, GM, CC", "foe": "line search"}
#: match tolerance (accuracy, 0-1): a baseline is matched when it is ahead by at most
#: max(1 point, the larger of the two seed standard deviations)
TOL_POINTS = 0.01
#: what the quick scale checks (tests/test_monna_reproduction.py)
QUICK_CLAIM = ("alpha = 1, beta = 0.99, 150 steps: MoNNA matches or beats D-SGD and TM under every attack, "
               "beats TM under FOE, SF and LF, and beats D-SGD by more than 10 points under FOE and SF")


def _scale(scale: Union[str, Mapping[str, Any]]) -> Dict[str, Any]:
    if isinstance(scale, str):
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {list(SCALES)} or a dict, got {scale!r}")
        return dict(SCALES[scale], name=scale)
    unknown = set(scale) - set(SCALES["full"])
    if unknown:
        raise ValueError(f"unknown scale keys {sorted(unknown)}; valid: {sorted(SCALES['full'])}")
    return dict(SCALES["full"], **scale, name="custom")


def _threat(attack: str, sc: Mapping[str, Any]) -> Dict[str, Any]:
    if attack == "lf":  # data poisoning: the Byzantine nodes run the protocol on flipped labels
        return {"poisoning": {"name": "label-flip"}}
    name = {"alie": "alie", "foe": "foe-opt", "sf": "sign-flip"}[attack]
    return {"attack": {"name": name, "params": dict(sc["foe"]) if attack == "foe" else {}}}


def jobs(scale: Union[str, Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Every run of a scale: ``{"key", "config", "alpha", "beta", "attack", "method", "seed"}``."""
    sc = scale if isinstance(scale, dict) and "name" in scale else _scale(scale)  # resolved or not
    out = []
    for alpha, beta, methods in sc["settings"]:
        for attack in sc["attacks"]:
            for method in methods:
                for seed in sc["seeds"]:
                    config = {
                        "trainer": "peer-to-peer",
                        "data": {"name": sc["data"], "partition": "dirichlet", "alpha": float(alpha)},
                        "model": {"name": sc["model"]},
                        "workers": {"n": sc["n"], "f": sc["f"], "batch_size": sc["batch_size"]},
                        **_threat(attack, sc),
                        "optimizer": {"lr": sc["lr"], "momentum": float(beta), "schedule": "inverse",
                                      "schedule_params": {"decay": sc["decay"]}},
                        "p2p": dict(METHODS[method][1], l2=sc["l2"]),
                        "run": {"steps": sc["steps"], "seed": seed, "eval_every": sc["eval_every"],
                                "checkpoint_every": sc["checkpoint_every"]},
                    }
                    key = f"a{alpha:g}-b{beta:g}-{attack}-{method}-s{seed}"
                    out.append({"key": key, "config": config, "alpha": float(alpha), "beta": float(beta),
                                "attack": attack, "method": method, "seed": seed})
    return out


def _cells(grid: Sequence[Dict[str, Any]], records: Sequence[Dict[str, Any]]) -> Dict[tuple, Dict[str, Any]]:
    """(alpha, beta, attack, method) -> mean, std of the best accuracy over seeds, and the runs."""
    by: Dict[tuple, List[float]] = {}
    for job, rec in zip(grid, records):
        by.setdefault((job["alpha"], job["beta"], job["attack"], job["method"]), []).append(R.best(rec))
    return {k: dict(zip(("mean", "std"), R.mean_std(v)), seeds=len(v)) for k, v in by.items()}


def verdict(sc: Mapping[str, Any], cells: Mapping[tuple, Mapping[str, Any]]) -> Dict[str, Any]:
    """For every (alpha, beta = 0.99) and attack: MoNNA against its best baseline.

    ``margin`` is MoNNA's mean minus the best baseline's (accuracy, 0-1); a setting holds when
    ``margin >= -tol`` with ``tol = max(1 point, larger std of the two)``.
    """
    checks = []
    for alpha, beta, methods in sc["settings"]:
        if beta != 0.99 or "monna" not in methods or len(methods) < 2:
            continue
        for attack in sc["attacks"]:
            mon = cells[(alpha, beta, attack, "monna")]
            rivals = [(m, cells[(alpha, beta, attack, m)]) for m in methods if m != "monna"]
            best_m, best = max(rivals, key=lambda p: p[1]["mean"] if math.isfinite(p[1]["mean"]) else -1.0)
            tol = max(TOL_POINTS, mon["std"], best["std"])
            margin = mon["mean"] - best["mean"]
            checks.append({"alpha": alpha, "beta": beta, "attack": attack, "monna": mon["mean"],
                           "best_baseline": best_m, "baseline": best["mean"], "margin": margin, "tol": tol,
                           "holds": bool(margin >= -tol)})
    held = sum(c["holds"] for c in checks)
    many = len({c["alpha"] for c in checks}) > 1
    parts = [f"{ATTACKS[c['attack']]}" + (f" (α = {c['alpha']:g})" if many else "")
             + f": {R.pct(c['monna'])} vs {METHODS[c['best_baseline']][0]} {R.pct(c['baseline'])} "
             f"({100 * c['margin']:+.1f}, {'✓' if c['holds'] else '✗'})" for c in checks]
    line = (f"MoNNA (β = 0.99) matches or beats every baseline in {held} of {len(checks)} attack settings "
            f"(match: at most max(1 point, 1 std) behind): " + "; ".join(parts) + ".")
    return {"holds": bool(checks) and held == len(checks), "line": line, "checks": checks}


def _setup_table(sc: Mapping[str, Any]) -> str:
    betas = "; ".join(f"{b:g} ({', '.join(METHODS[m][0] for m in ms)}, α = {a:g})" for a, b, ms in sc["settings"])
    foe = sc["foe"]
    ours = {"data": f"{sc['data']}" + (" (4,000 / 1,000)" if sc["data"] == "mnist-5k" else ""),
            "model": sc["model"] + (" (784-100-10 MLP, 79.5k parameters)" if sc["model"] == "mlp" else ""),
            "n": sc["n"], "f": sc["f"], "batch_size": sc["batch_size"], "steps": sc["steps"],
            "lr": f"{sc['lr']:g} / (1 + t/{sc['decay']:g})", "l2": f"{sc['l2']:g}", "seeds": len(sc["seeds"]),
            "alphas": ", ".join(sorted({f"{a:g}" for a, _, _ in sc["settings"]})), "betas": betas,
            "attacks": ", ".join(ATTACKS[a] for a in sc["attacks"]),
            "methods": ", ".join(METHODS[m][0] for m in dict.fromkeys(m for _, _, ms in sc["settings"] for m in ms)),
            "foe": f"line search, {foe.get('grid', 9)} grid points + {foe.get('refine', 8)} refinements"}
    names = {"data": "data (train / test)", "model": "model", "n": "nodes n", "f": "Byzantine f",
             "batch_size": "batch", "steps": "steps", "lr": "γ_t", "l2": "l2", "seeds": "seeds",
             "alphas": "Dirichlet α", "betas": "momentum β", "attacks": "attacks", "methods": "methods",
             "foe": "FOE factor"}
    rows = [(names[k], PAPER[k], ours[k], "" if str(PAPER[k]) == str(ours[k]) else "reduced") for k in names]
    rows.append(("metric", "max test accuracy of honest node 0", f"same, evaluated every {sc['eval_every']} steps", ""))
    return R.markdown_table(["", "paper", "ours", ""], rows, align="llll")


def format_markdown(sc: Mapping[str, Any], cells: Mapping[tuple, Mapping[str, Any]], v: Mapping[str, Any],
                    timing: Mapping[str, Any]) -> str:
    """``table.md``: the setup, one accuracy table per (alpha, beta), the verdict."""
    lines = [f"# MoNNA reproduction ({sc['name']} scale)", "",
             "Farhadkhani et al., ICML 2023, MNIST experiment. Setup, paper vs ours:", "", _setup_table(sc), "",
             f"TM and GM mix with f = {sc['f']} (the declared f); CC is self-centred clipping with robustagg's default "
             "radius τ = 1; the attacks act on the half-step models.", "",
             "Cells: maximum test accuracy (%) of honest node 0, mean ± std over "
             f"{len(sc['seeds'])} seed(s); best per row in bold.", ""]
    for alpha, beta, methods in sc["settings"]:
        lines += [f"## α = {alpha:g}, β = {beta:g}", ""]
        rows = []
        for attack in sc["attacks"]:
            cs = [cells[(alpha, beta, attack, m)] for m in methods]
            top = max((c["mean"] for c in cs if math.isfinite(c["mean"])), default=math.nan)
            row = [ATTACKS[attack]]
            for c in cs:
                text = R.pct(c["mean"], c["std"] if c["seeds"] > 1 else None)
                row.append(f"**{text}**" if c["mean"] == top else text)
            rows.append(row)
        lines += [R.markdown_table(["attack"] + [METHODS[m][0] for m in methods], rows), ""]
    lines += ["## Verdict", "",
              "Claim: MoNNA (β = 0.99) matches or beats every baseline under every attack. A baseline is "
              f"matched when MoNNA is behind it by at most max({100 * TOL_POINTS:g} point, the larger of the two "
              "seed standard deviations).", "", f"**{'Holds' if v['holds'] else 'Does not hold'}.** {v['line']}", "",
              f"Time: {timing['trained']} of {timing['runs']} runs trained by the last invocation in "
              f"{timing['wall_s']:.0f} s wall with {timing['processes']} processes; all runs together "
              f"{timing['core_s']:.0f} core-seconds.", ""]
    return "\n".join(lines)


def _csv_rows(grid: Sequence[Dict[str, Any]], records: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [{"alpha": j["alpha"], "beta": j["beta"], "attack": j["attack"], "method": j["method"], "seed": j["seed"],
             "max_accuracy": R.best(r), "final_accuracy": R.final(r), "steps": int(R.column(r, "step")[-1]),
             "wall_s": float(r.get("wall", math.nan))} for j, r in zip(grid, records)]


def write_plot(path: Path, sc: Mapping[str, Any], grid: Sequence[Dict[str, Any]], records: Sequence[Dict[str, Any]]) -> None:
    """Node 0's accuracy against the step, one panel per attack (alpha = 1, beta = 0.99 if run)."""
    setting = next((s for s in sc["settings"] if s[0] == 1.0 and s[1] == 0.99), sc["settings"][0])
    alpha, beta, methods = setting
    attacks = sc["attacks"]
    fig, axes = R.new_figure(1, len(attacks), (3.6 * len(attacks), 3.3))
    for ax, attack in zip(axes[0], attacks):
        for i, m in enumerate(methods):
            runs = [r for j, r in zip(grid, records)
                    if (j["alpha"], j["beta"], j["attack"], j["method"]) == (alpha, beta, attack, m)]
            steps = R.column(runs[0], "step")
            accs = [R.column(r, "accuracy") for r in runs]
            k = min(len(a) for a in accs)
            mean = [100 * sum(a[t] for a in accs) / len(accs) for t in range(k)]
            ax.plot(steps[:k], mean, label=METHODS[m][0], color=f"C{i}", lw=2.0 if m == "monna" else 1.2)
        ax.set_title(f"{ATTACKS[attack]} (α = {alpha:g}, β = {beta:g})")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy of node 0 (%)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    R.save_figure(fig, path)


def run(scale: Union[str, Mapping[str, Any]] = "full", out: Any = None, processes: Optional[int] = None,
        fresh: bool = False, progress: bool = True) -> Dict[str, Any]:
    """Train (or reuse) every run of the scale, write the outputs into ``out`` and return the results.

    Parameters
    ----------
    scale : {"full", "quick"} or dict
        A name of :data:`SCALES`, or a dict of (some of) its keys; the others come from ``full``.
    out : path, optional
        Default ``results/monna`` (``results/monna-quick`` for "quick").
    processes : int, optional
        Parallel single-threaded runs (default ``min(2, cores)``).
    fresh : bool
        Delete the finished runs and checkpoints first.

    Returns
    -------
    dict
        ``out``, ``table`` (table.md's text), ``verdict`` (``holds``, ``line``, ``checks``), ``cells``
        (one dict per alpha, beta, attack, method), ``timing`` (``trained``: runs trained by this call).
    """
    sc = _scale(scale)
    out = Path(out) if out is not None else R.default_out("monna", sc["name"])
    grid = jobs(sc)
    processes = processes or min(2, os.cpu_count() or 1)
    t0 = time.perf_counter()
    # the line-searched FOE runs are the longest: start them first so the pool ends evenly
    first = sorted(grid, key=lambda j: j["attack"] != "foe")
    by_key = {r["key"]: r for r in R.run_grid(first, out, processes=processes, fresh=fresh, progress=progress)}
    wall = time.perf_counter() - t0
    records = [by_key[j["key"]] for j in grid]
    trained = sum(r["trained"] for r in records)
    timing = {"runs": len(grid), "trained": trained, "wall_s": wall, "processes": processes,
              "core_s": R.elapsed(records)}
    cells = _cells(grid, records)
    v = verdict(sc, cells)
    table = format_markdown(sc, cells, v, timing)
    R.write_csv(out / "metrics.csv", _csv_rows(grid, records))
    write_plot(out / "plot.png", sc, grid, records)
    cell_list = [{"alpha": a, "beta": b, "attack": at, "method": m, **c} for (a, b, at, m), c in cells.items()]
    R.write_json(out / "summary.json", {"scale": sc, "cells": cell_list, "verdict": v, "timing": timing})
    R.atomic_write_text(out / "table.md", table)
    return {"out": str(out), "table": table, "verdict": v, "cells": cell_list, "timing": timing, "scale": sc}


def main(argv: Optional[List[str]] = None) -> int:
    return R.script_main(argv, run, "monna", __doc__, "the <= 2-minute variant (results/monna-quick)")


if __name__ == "__main__":
    sys.exit(main())
