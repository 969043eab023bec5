"""Every rule on a toy problem with f Byzantine workers (``python experiments/demo_toy.py``;
the first `make demo`; `make demo` now trains real models: ``experiments/demo.py``).

Honest workers send the true gradient plus noise; f Byzantine workers attack.
The table shows each rule's distance to the honest workers' mean (lower is better).
"""

from __future__ import annotations

import math
import time
import warnings

import torch

import robustagg as ra

N, F, D, SEED = 15, 3, 10_000, 0


def honest_updates(generator: torch.Generator) -> torch.Tensor:
    """N honest updates; an attack replaces the last F of them."""
    true_gradient = torch.randn(D, generator=generator)
    return true_gradient + 0.5 * torch.randn(N, D, generator=generator)


def attacks(honest: torch.Tensor, generator: torch.Generator) -> dict:
    mean, std = honest.mean(0), honest.std(0)
    z = 1.0  # "a little is enough": mean + z * std per coordinate
    return {
        "none (all honest)": None,
        "sign flip (-10 x mean)": (-10 * mean).expand(F, D),
        "large noise (norm 1e4)": 1e4 * torch.randn(F, D, generator=generator) / math.sqrt(D),
        "ALIE (z = 1)": (mean + z * std).expand(F, D),
        "NaN": torch.full((F, D), float("nan")),
    }


def main() -> None:
    start = time.time()
    g = torch.Generator().manual_seed(SEED)
    everyone = honest_updates(g)
    honest = everyone[: N - F]
    rules = {
        "mean": ra.get("mean", f=F),
        "median": ra.get("median", f=F),
        "trimmed-mean": ra.get("trimmed-mean", f=F),
        "meamed": ra.get("meamed", f=F),
        "geometric-median": ra.get("geometric-median", f=F),
        "krum": ra.get("krum", f=F),
        "multi-krum": ra.get("multi-krum", f=F),
        "bulyan": ra.get("bulyan", f=F),
        "centered-clipping": ra.get("centered-clipping", f=F, tau=30.0, iters=10),
        "nnm + trimmed-mean": ra.pipeline(ra.get("nnm", f=F), ra.get("trimmed-mean", f=F)),
        "arc + median": ra.pipeline(ra.get("arc", f=F), ra.get("median", f=F)),
    }
    scenarios = attacks(honest, g)
    print(f"n = {N} workers, f = {F} Byzantine, d = {D}; entries: ||rule(updates) - honest mean||")
    print(f"(the honest mean has norm {honest.mean(0).norm():.1f}; one worker's noise has norm {0.5 * math.sqrt(D):.1f};")
    print(" centered clipping starts from zero, as on its first round)\n")
    header = f"{'rule':<22}" + "".join(f"{name:>25}" for name in scenarios)
    print(header)
    print("-" * len(header))
    for rule_name, rule in rules.items():
        cells = []
        for name, byzantine in scenarios.items():
            rule.reset()
            if byzantine is None:
                updates, target = everyone, everyone.mean(0)
            else:
                updates, target = torch.cat([honest, byzantine]), honest.mean(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ra.NonFiniteUpdateWarning)
                try:
                    out = rule(updates)
                    value = (out - target).norm().item()
                    cells.append(f"{value:25.2f}" if math.isfinite(value) else f"{'non-finite':>25}")
                except ValueError as exc:
                    cells.append(f"{'error: ' + str(exc)[:16]:>25}")
        print(f"{rule_name:<22}" + "".join(cells))
    print(f"\nfinished in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
