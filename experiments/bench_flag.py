"""Flag Aggregator timings (the Gram-space solver against the SVD path and one Gram matrix) and
its failure mechanism (what the subspace keeps of the random attack; ``--mechanism``).

``flag_benchmark_rows()`` is called by the benchmark suite (``make bench``); run this file
alone for a table (``--quick`` for small sizes that take seconds)::

    python experiments/bench_flag.py --quick
    python experiments/bench_flag.py               # (15, 1.1e7) and (60, 1e6): minutes, GBs
    python experiments/bench_flag.py --mechanism   # real gradients + 3 Byzantine rows: seconds

Every time is the median over ``repeats`` calls after one warm-up call, in the same run as
the floor it is divided by: ``ops.gram(X)`` (what the rule itself computes first) and the
plain ``X @ X.T``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from robustagg.aggregators import FlagAggregator, ops

FULL_SIZES: Tuple[Tuple[int, int], ...] = ((15, 11_000_000), (60, 1_000_000))
QUICK_SIZES: Tuple[Tuple[int, int], ...] = ((15, 200_000), (60, 20_000))


def _median_seconds(fn: Callable[[], object], repeats: int, device: torch.device, warmup: bool = True) -> float:
    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    if warmup:
        once()  # allocations, lazy init
    return statistics.median(once() for _ in range(max(1, repeats)))


def _updates(n: int, d: int, dtype: torch.dtype, device: torch.device, seed: int) -> torch.Tensor:
    """Gradient-like inputs: a shared direction, a few common factors and noise."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=dtype)
    X.add_(torch.randn(d, generator=g, dtype=dtype))
    return X.to(device)


def flag_benchmark_rows(
    sizes: Sequence[Tuple[int, int]] = FULL_SIZES,
    repeats: int = 5,
    svd_repeats: int = 1,
    lams: Sequence[float] = (0.0, 1.0),
    inits: Sequence[str] = ("random", "data"),
    iters: int = 5,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    svd: bool = True,
    svd_max_gib: float = 4.0,
    svd_max_tflop: float = 1.0,
    seed: int = 0,
) -> List[Dict[str, object]]:
    """Time FA (``iters`` iterations, each ``lam`` and ``init``) on ``(n, d)`` inputs.

    Returns one dict per measurement with keys ``case`` (``"gram"``, ``"x@x.T"``,
    ``"flag"`` or ``"flag-svd"``), ``n``, ``d``, ``dtype``, ``device``, ``lam``, ``init``,
    ``iters``, ``seconds``, ``repeats``, ``ratio_to_gram`` (seconds / ``ops.gram`` seconds),
    ``speedup_vs_svd`` (SVD-path seconds / these seconds, for the same ``lam`` and ``init``;
    ``None`` when not measured) and ``note``. The SVD path (one timed call, no warm-up) is
    skipped, with the reason in ``note``, when its ``d x p`` or ``d x p^2`` column stack would
    exceed ``svd_max_gib`` or its SVDs (about ``4 d q^2`` flops each for ``q`` columns) would
    exceed ``svd_max_tflop`` in all.
    """
    dev = torch.device(device)
    rows: List[Dict[str, object]] = []
    for n, d in sizes:
        X = _updates(n, d, dtype, dev, seed)
        base = {"n": n, "d": d, "dtype": str(dtype).replace("torch.", ""), "device": str(dev)}
        t_gram = _median_seconds(lambda: ops.gram(X), repeats, dev)
        t_mm = _median_seconds(lambda: X @ X.T, repeats, dev)
        for case, t in (("gram", t_gram), ("x@x.T", t_mm)):
            rows.append({**base, "case": case, "lam": None, "init": None, "iters": None, "seconds": t,
                         "repeats": repeats, "ratio_to_gram": t / t_gram, "speedup_vs_svd": None, "note": ""})
        for lam in lams:
            for init in inits:
                fast = FlagAggregator(lam=lam, init=init, iters=iters)
                out = {}
                t_fast = _median_seconds(lambda: out.__setitem__("fast", fast.aggregate(X)), repeats, dev)
                row = {**base, "case": "flag", "lam": lam, "init": init, "iters": iters, "seconds": t_fast,
                       "repeats": repeats, "ratio_to_gram": t_fast / t_gram, "speedup_vs_svd": None,
                       "note": f"{fast.last['iterations']} iterations"}
                rows.append(row)
                if not svd or init != "random":
                    continue
                columns = n if lam == 0 else n * n
                gib = 3 * d * columns * X.element_size() / 2**30  # stack, its SVD factor, workspace
                tflop = 4 * d * columns**2 * iters / 1e12
                svd_row = {**base, "case": "flag-svd", "lam": lam, "init": init, "iters": iters,
                           "repeats": svd_repeats, "speedup_vs_svd": None}
                if gib > svd_max_gib or tflop > svd_max_tflop:
                    rows.append({**svd_row, "seconds": None, "ratio_to_gram": None,
                                 "note": f"skipped: d x {columns} stack, ~{gib:.1f} GiB, ~{tflop:.2g} Tflop "
                                         f"(limits {svd_max_gib} GiB, {svd_max_tflop} Tflop)"})
                    continue
                slow = FlagAggregator(lam=lam, init=init, iters=iters, solver="svd")
                t_svd = _median_seconds(lambda: out.__setitem__("svd", slow.aggregate(X)), svd_repeats, dev,
                                        warmup=False)
                rel = float((out["svd"] - out["fast"]).double().norm() / out["svd"].double().norm())
                row["speedup_vs_svd"] = t_svd / t_fast
                rows.append({**svd_row, "seconds": t_svd, "ratio_to_gram": t_svd / t_gram,
                             "note": f"relative difference to solver='gram': {rel:.1e}"})
        del X
    return rows


def format_table(rows: List[Dict[str, object]]) -> str:
    def fmt(v, spec):
        return "" if v is None else format(v, spec)

    lines = ["| case | n | d | lam | init | seconds | x gram | speedup vs svd | note |",
             "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['n']} | {r['d']:.3g} | {fmt(r['lam'], 'g')} | {r['init'] or ''} | "
                     f"{fmt(r['seconds'], '.4f')} | {fmt(r['ratio_to_gram'], '.2f')} | "
                     f"{fmt(r['speedup_vs_svd'], '.1f')} | {r['note']} |")
    return "\n".join(lines)


# ------------------------------------------------------------------ failure mechanism

#: the Byzantine rows measured: the authors' random attack, zero-mean noise, and a cluster of
#: f rows sharing one zero-mean Gaussian direction (coherent, like U[0, 1), but not all-positive)
ATTACKS = ("U[0,1)", "U[-1/2,1/2)", "cluster")
MECHANISM_RULES = ("flag", "flag m=2", "nnm>flag", "bucketing>flag", "multi-krum")


def honest_gradients(n: int = 12, batch: int = 128, seed: int = 0, width: int = 8) -> torch.Tensor:
    """``(n, d)`` flat gradients of the recipe's model (ResNet-18, torchvision stem, BatchNorm, at its
    seeded initialisation) on ``n`` disjoint mnist-5k batches of ``batch`` images."""
    from robustagg import data, models

    ds = data.load("mnist-5k")
    net = models.build("resnet18", seed=seed, input_shape=ds.input_shape, num_classes=10, width=width,
                       stem="imagenet")
    order = torch.randperm(ds.X_train.shape[0], generator=torch.Generator().manual_seed(seed))
    rows = []
    for i in range(n):
        idx = order[i * batch : (i + 1) * batch]
        net.zero_grad()
        torch.nn.functional.cross_entropy(net(ds.X_train[idx]), ds.y_train[idx]).backward()
        rows.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    return torch.stack(rows)


def byzantine_rows(attack: str, f: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if attack == "U[0,1)":
        return torch.rand(f, d, generator=g)
    if attack == "U[-1/2,1/2)":
        return torch.rand(f, d, generator=g) - 0.5
    if attack == "cluster":
        z = torch.randn(d, generator=g)
        return z + 0.3 * torch.randn(f, d, generator=g)
    raise ValueError(f"attack must be one of {ATTACKS}, got {attack!r}")


def _mechanism_rule(name: str, f: int):
    import robustagg as ra

    if name == "flag m=2":
        return ra.get("flag", f=f, m=2, iters=1)
    if name == "nnm>flag":
        return ra.pipeline(ra.get("nnm", f=f), ra.get("flag", f=f, m=8, iters=1))
    if name == "bucketing>flag":
        return ra.pipeline(ra.get("bucketing", f=f, s=2, seed=0), ra.get("flag", f=f, m=4, iters=1))
    if name == "multi-krum":
        return ra.get("multi-krum", f=f, m=15 - f - 2)
    return ra.get("flag", f=f, m=8, iters=1)


def flag_mechanism_rows(f: int = 3, seeds: Sequence[int] = (0, 1, 2), H: torch.Tensor = None,
                        attacks: Sequence[str] = ATTACKS, rules: Sequence[str] = MECHANISM_RULES
                        ) -> List[Dict[str, object]]:
    """What each rule keeps of ``f`` Byzantine rows added to ``n = 15 - f`` honest gradients.

    Per (attack, rule), means over ``seeds`` (Byzantine draws) of: ``v_byz`` / ``v_honest`` (FA's
    reconstruction ratios, plain FA only), ``cos_honest`` (cosine of the output with the honest
    mean), ``byz_share`` (the output's component along the Byzantine rows' mean unit direction,
    over the output's norm), ``byz_part`` (``|out - out(honest rows only)| / |out(honest rows
    only)|``, what the Byzantine rows changed) and ``step_coherence`` (cosine between those changes
    for two different draws: near 1 when every step is pushed the same way, as by U[0, 1) whose
    mean direction is always the all-ones vector; near 0 for fresh zero-mean noise or a cluster
    whose direction is redrawn; only meaningful where ``byz_part`` is not small).
    """
    H = honest_gradients(15 - f) if H is None else H
    hbar = H.mean(dim=0)
    rows = []
    for attack in attacks:
        for name in rules:
            acc: Dict[str, List[float]] = {}
            parts = []
            for seed in seeds:
                B = byzantine_rows(attack, f, H.shape[1], seed)
                rule = _mechanism_rule(name, f)
                out = rule(torch.cat([B, H]))
                U = B / B.norm(dim=1, keepdim=True)
                bdir = U.mean(dim=0) / U.mean(dim=0).norm()
                clean = _mechanism_rule(name, f)(H)
                parts.append(out - clean)
                vals = {"cos_honest": float(torch.nn.functional.cosine_similarity(out, hbar, dim=0)),
                        "byz_part": float((out - clean).norm() / clean.norm()),
                        "byz_share": float((out @ bdir).abs() / out.norm())}
                if name == "flag":
                    v = rule.last["v"]
                    vals.update(v_byz=float(v[:f].mean()), v_honest=float(v[f:].mean()))
                for k, x in vals.items():
                    acc.setdefault(k, []).append(x)
            coh = [float(torch.nn.functional.cosine_similarity(parts[i], parts[i + 1], dim=0))
                   for i in range(len(parts) - 1)]
            rows.append({"attack": attack, "rule": name, "step_coherence": statistics.fmean(coh) if coh else None,
                         **{k: statistics.fmean(x) for k, x in acc.items()}})
    return rows


def format_mechanism(rows: List[Dict[str, object]]) -> str:
    def fmt(v):
        return "" if v is None else f"{v:.3f}"

    lines = ["| attack | rule | v Byzantine | v honest | cos(output, honest mean) | Byzantine share | "
             "Byzantine change | step coherence |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['attack']} | {r['rule']} | {fmt(r.get('v_byz'))} | {fmt(r.get('v_honest'))} | "
                     f"{fmt(r['cos_honest'])} | {fmt(r['byz_share'])} | {fmt(r['byz_part'])} | "
                     f"{fmt(r['step_coherence']) if r['byz_part'] >= 0.01 else ''} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds on a laptop)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per case (median)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-svd", action="store_true", help="skip the reference SVD path")
    parser.add_argument("--svd-max-gib", type=float, default=4.0)
    parser.add_argument("--svd-max-tflop", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--mechanism", action="store_true", help="what FA and its remedies keep of 3 Byzantine rows")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mechanism:
        print("ResNet-18 (width 8, torchvision stem) gradients on 12 mnist-5k batches of 128 + 3 Byzantine rows; "
              "means over 3 draws")
        print(format_mechanism(flag_mechanism_rows()))
        return
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    repeats = args.repeats or (3 if args.quick else 5)
    rows = flag_benchmark_rows(sizes=sizes, repeats=repeats, device=args.device, svd=not args.no_svd,
                               svd_max_gib=args.svd_max_gib, svd_max_tflop=args.svd_max_tflop)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, iters=5, median of {repeats}")
    print(format_table(rows))


if __name__ == "__main__":
    main()
