r"""Aggregator-aware attacks: ALIE, FOE and IPM with their factor chosen by a line search.

Each attack is a one-parameter family :math:`b(\lambda)` of Byzantine vectors. Against a given
rule ``A`` it picks the factor that maximises the harm

.. math:: D(\lambda) = \big\| A\big(x_1, \dots, x_h, \underbrace{b(\lambda), \dots, b(\lambda)}_{f}\big)
          - \bar x \big\|_2

(honest rows first, then the ``f`` identical Byzantine rows). The search, with its defaults
(18 evaluations of ``A``):

1. evaluate :math:`D` at the fixed-factor attack's default (ALIE's formula ``z``, FOE's
   ``z = 1.1``, IPM's ``eps = 0.1``) and on a uniform grid of ``grid = 9`` factors spanning
   ``bounds``;
2. bracket the best factor found by its evaluated neighbours (or a bound) and refine inside
   the bracket by golden-section search for ``refine = 8`` more evaluations;
3. return the Byzantine rows for the best factor over *all* evaluations, so the result is
   never less harmful than the fixed-factor attack or any grid point.

The MoNNA reference code instead explores from 0 with a step that grows while the harm
increases and then shrinks geometrically (16 evaluations); the grid makes this search less
dependent on the starting point when the harm is not unimodal (e.g. Krum's selection jumps).

Every evaluation runs on a deep copy of the rule, so stateful rules (centered clipping's
centre, bucketing's random generator) are evaluated in the state the real call will see and
are left untouched. ``last`` holds ``factor``, ``damage``, ``evaluations`` and the ``trace``
of (factor, damage) pairs.

References
----------
Farhadkhani, Guerraoui, Gupta, Hoang, Pinot, Stephan, "Robust Collaborative Learning with
Linear Gradient Overhead", ICML 2023 (line-searched ALIE and FOE).
Baruch, Baruch, Goldberg, "A Little Is Enough", NeurIPS 2019.
Xie, Koyejo, Gupta, "Fall of Empires", UAI 2019.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

from robustagg._validation import check_float, check_int
from robustagg.attacks.base import Attack, honest_std, register, repeat_rows
from robustagg.attacks.classic import alie_z

_INVPHI = (math.sqrt(5.0) - 1.0) / 2.0


def evaluate_rule(aggregator: Any, X: torch.Tensor, shards: Any = None) -> torch.Tensor:
    """Run ``aggregator`` on ``X`` without changing its state (it runs on a deep copy).

    ``shards``: when ``X`` holds one shard of the coordinates, the
    :class:`~robustagg.collective.ShardComm` that completes the copy's statistics over every
    shard (as inside :func:`~robustagg.collective.robust_all_reduce`); the output is that shard's.
    """
    rule = copy.deepcopy(aggregator)
    if shards is None:
        out = rule.aggregate(X) if hasattr(rule, "aggregate") else rule(X)
    else:
        from robustagg.collective.allreduce import on_shards

        with on_shards(rule, shards):
            out = rule.aggregate(X)
    if not isinstance(out, torch.Tensor):
        out = torch.as_tensor(out)
    if out.dim() != 1:
        raise TypeError(
            f"the aggregator returned shape {tuple(out.shape)}; an attack needs a rule that returns one "
            "vector (a pre-aggregator must be composed with a rule: robustagg.pipeline(...))"
        )
    return out


def line_search(damage: Callable[[float], float], bounds: Tuple[float, float], grid: int, refine: int,
                initial: Optional[float] = None) -> Tuple[float, float, List[Tuple[float, float]]]:
    """Maximise ``damage`` over a factor: ``initial`` + uniform grid + golden-section refinement.

    Returns ``(best factor, best damage, trace)``; ``trace`` lists every (factor, damage)
    evaluated, in order (``grid + refine + (initial is not None)`` evaluations).
    """
    lo, hi = bounds
    trace: List[Tuple[float, float]] = []

    def run(z: float) -> float:
        value = damage(z)
        trace.append((z, value))
        return value

    if initial is not None:
        run(float(initial))
    for k in range(grid):
        run(lo + (hi - lo) * k / (grid - 1))
    best_z, _ = max(trace, key=lambda p: p[1])
    points = sorted({z for z, _ in trace})
    a = max([z for z in points if z < best_z], default=best_z)
    b = min([z for z in points if z > best_z], default=best_z)
    if refine >= 2 and b > a:
        c, d = b - _INVPHI * (b - a), a + _INVPHI * (b - a)
        fc, fd = run(c), run(d)
        for _ in range(refine - 2):
            if fc >= fd:
                b, d, fd = d, c, fc
                c = b - _INVPHI * (b - a)
                fc = run(c)
            else:
                a, c, fc = c, d, fd
                d = a + _INVPHI * (b - a)
                fd = run(d)
    elif refine >= 1 and b > a:
        run((a + b) / 2)
    best_z, best = max(trace, key=lambda p: p[1])  # first maximum: earlier evaluations win ties
    return best_z, best, trace


class LineSearchAttack(Attack):
    """Base of the ``*-opt`` attacks: a factor family ``_vector(H, f, factor)`` searched by :func:`line_search`."""

    needs_aggregator = True
    default_bounds: Tuple[float, float] = (0.0, 10.0)

    def __init__(self, bounds: Optional[Sequence[float]] = None, grid: int = 9, refine: int = 8) -> None:
        super().__init__()
        bounds = self.default_bounds if bounds is None else bounds
        if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
            raise TypeError(f"bounds must be a (low, high) pair, got {bounds!r}")
        lo, hi = check_float(bounds[0], "bounds[0]"), check_float(bounds[1], "bounds[1]")
        if not hi > lo:
            raise ValueError(f"bounds must satisfy low < high, got {tuple(bounds)}")
        self.bounds = (lo, hi)
        self.grid = check_int(grid, "grid", minimum=2)
        self.refine = check_int(refine, "refine", minimum=0)

    def _default(self, H: torch.Tensor, f: int) -> Optional[float]:
        raise NotImplementedError

    def _vector(self, H: torch.Tensor, mean: torch.Tensor, factor: float) -> torch.Tensor:
        raise NotImplementedError

    def _attack(self, H, f, aggregator, generator):
        return self.search(H, f, lambda X: evaluate_rule(aggregator, X))

    def search(self, H: torch.Tensor, f: int, evaluate: Callable[[torch.Tensor], torch.Tensor],
               total: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
        """The ``(f, d)`` rows of the best factor, with ``evaluate(X)`` the rule's output on ``X``;
        sets ``last``.

        When ``H`` holds one shard of the coordinates (the ``allreduce`` topology of the trainer,
        :mod:`robustagg.train.allreduce`), ``evaluate`` runs the rule on that shard and ``total``
        sums a float64 tensor over every shard: the damage is then the norm over all
        coordinates, and every shard picks the same factor (every family here is coordinate-wise).
        """
        mean = H.mean(dim=0)
        self._stats = {}

        def damage(factor: float) -> float:
            X = torch.cat([H, repeat_rows(self._vector(H, mean, factor), f)])
            norm = torch.linalg.vector_norm((evaluate(X) - mean).to(torch.float64))
            value = float(norm) if total is None else math.sqrt(float(total(norm.reshape(1) ** 2)[0]))
            return value if math.isfinite(value) else math.inf

        z, best, trace = line_search(damage, self.bounds, self.grid, self.refine, self._default(H, f))
        self.last = {"factor": z, "damage": best, "evaluations": len(trace), "trace": trace}
        return repeat_rows(self._vector(H, mean, z), f)


@register("alie-opt")
class ALIEOpt(LineSearchAttack):
    r"""ALIE with a line-searched factor: :math:`b(z) = \bar x + z\,\sigma`, ``z`` in ``bounds = (0, 10)``.

    The first candidate is ALIE's formula :math:`z_{\max}` (:func:`~robustagg.attacks.classic.alie_z`,
    ``n = h + f``), so ``alie-opt`` is never less harmful than ``alie``. See the module
    docstring for the search.

    References
    ----------
    Baruch, Baruch, Goldberg, NeurIPS 2019; Farhadkhani et al., ICML 2023 (line search).
    """

    default_bounds = (0.0, 10.0)

    def _default(self, H, f):
        try:
            return alie_z(H.shape[0] + f, f)
        except ValueError:
            return None

    def _vector(self, H, mean, factor):
        if "std" not in self._stats:
            self._stats["std"] = honest_std(H)
        return mean + factor * self._stats["std"]


@register("foe-opt")
class FOEOpt(LineSearchAttack):
    r"""FOE with a line-searched factor: :math:`b(z) = (1 - z)\,\bar x`, ``z`` in ``bounds = (0, 20)``.

    The first candidate is ``foe``'s default ``z = 1.1``. See the module docstring.

    References
    ----------
    Xie, Koyejo, Gupta, UAI 2019; Farhadkhani et al., ICML 2023 (line search).
    """

    default_bounds = (0.0, 20.0)

    def _default(self, H, f):
        return 1.1

    def _vector(self, H, mean, factor):
        return (1.0 - factor) * mean


@register("ipm-opt")
class IPMOpt(LineSearchAttack):
    r"""IPM with a line-searched factor: :math:`b(\varepsilon) = -\varepsilon\,\bar x`, in ``bounds = (0, 20)``.

    The first candidate is ``ipm``'s default :math:`\varepsilon = 0.1`. See the module docstring.

    References
    ----------
    Xie, Koyejo, Gupta, UAI 2019.
    """

    default_bounds = (0.0, 20.0)

    def _default(self, H, f):
        return 0.1

    def _vector(self, H, mean, factor):
        return -factor * mean
