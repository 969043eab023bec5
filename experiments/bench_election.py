"""Benchmark: certify 10,000 test points with K = 1,200 base models and C = 10 classes.

Target (issue 6): each method <= 5 s on CPU. The scores are synthetic but shaped
like a trained ensemble's: every test point has a difficulty, every base model
sees the true class's logit raised by it (and a confusing class's logit raised
by a random amount) plus Gaussian noise, so base models agree on easy points
and split on hard ones (base accuracy is printed). FA uses
k = 75, d = 16 (k * d = 1,200 models, as the paper's d = 16).

    python experiments/bench_election.py [--points 10000] [--models 1200] [--classes 10]
                                         [--d 16] [--repeat 1] [--random]

``--random`` draws structureless scores (every vote uniformly random) and
labels every point with the method's own prediction, so that every point gets
a certificate: the worst case for the FA pruning, printed for information.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robustagg.election import METHODS, available_methods, certified_accuracy, certify, dp_table  # noqa: E402
from robustagg.election import plurality, run_off  # noqa: E402
from robustagg.election.certificates import FA  # noqa: E402


def make_scores(K: int, N: int, C: int, seed: int = 0, structureless: bool = False):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (N,), generator=gen)
    scores = torch.randn(K, N, C, generator=gen)
    if not structureless:  # easy and hard test points; a confusing class on some of them
        pts = torch.arange(N)
        confuser = (labels + torch.randint(1, C, (N,), generator=gen)) % C
        scores[:, pts, labels] += 1.0 + 4.0 * torch.rand(N, generator=gen)
        scores[:, pts, confuser] += 4.0 * torch.rand(N, generator=gen) ** 2
    return scores.numpy(), labels.numpy()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=10_000)
    ap.add_argument("--models", type=int, default=1_200)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--d", type=int, default=16, help="FA: models per bucket (k = models / d)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per method; the best is printed")
    ap.add_argument("--random", action="store_true", help="structureless scores (worst case)")
    ap.add_argument("--target", type=float, default=5.0)
    args = ap.parse_args(argv)
    K, N, C, d = args.models, args.points, args.classes, args.d
    if K % d:
        raise SystemExit(f"--models ({K}) must be a multiple of --d ({d})")
    t0 = time.perf_counter()
    scores, labels = make_scores(K, N, C, structureless=args.random)
    print(f"scores ({K}, {N}, {C}) float32 made in {time.perf_counter() - t0:.1f} s; "
          f"torch threads {torch.get_num_threads()}")
    base_acc = (scores.argmax(2) == labels[None]).mean()
    print(f"base-model accuracy {base_acc:.3f}, plurality accuracy {(plurality(scores) == labels).mean():.3f}")
    t0 = time.perf_counter()
    dp_table(K + 2)  # built once per process (DPA+ROE)
    print(f"DP table ({K + 2} x {K + 2}) built in {time.perf_counter() - t0:.2f} s (once per process)")
    print(f"{'method':<8} {'seconds':>8}  certified accuracy   (target <= {args.target} s)")
    worst = 0.0
    fa = {"k": K // d, "d": d}
    for method in available_methods():  # every registered method
        cls = METHODS.resolve(method)
        kw = fa if issubclass(cls, FA) else {}
        unit = K // d if kw else K  # FA certificates count buckets of d models
        radii = [0, unit // 12, unit // 6, unit // 3]
        if args.random:  # certify every point (wrong predictions would be skipped)
            labels = run_off(scores) if cls.run_off else plurality(scores)
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            certs = certify(scores, labels, method, **kw)
            best = min(best, time.perf_counter() - t0)
        worst = max(worst, best)
        acc = certified_accuracy(certs, radii)
        flag = "" if best <= args.target else "  (over target)"
        print(f"{method:<8} {best:8.2f}  " + "  ".join(f"r={r}: {a:.3f}" for r, a in zip(radii, acc)) + flag)
    print(f"slowest method {worst:.2f} s")


if __name__ == "__main__":
    main()
