"""Centered clipping: a stateful rule that clips around its previous output."""

from __future__ import annotations

from typing import Optional

import torch

from robustagg._validation import Integer, Real
from robustagg.aggregators import ops
from robustagg.aggregators.base import Aggregator, _check_keys
from robustagg.aggregators.registry import register


@register("centered-clipping", "cc", "centred-clipping")
class CenteredClipping(Aggregator):
    r"""Centered clipping (CC).

    .. math:: v \leftarrow v + \frac{1}{n} \sum_{i=1}^n \mathrm{clip}_\tau(x_i - v),
              \qquad \mathrm{clip}_\tau(z) = z \cdot \min\left(1, \frac{\tau}{\|z\|}\right)

    applied ``iters`` times, starting from the previous call's output (zero on the first
    call). The centre is kept on the object as ``center``; :meth:`reset` forgets it.
    Distances to the centre are computed from explicit differences (column chunks), so
    they stay accurate for vectors of large norm.

    References
    ----------
    Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust Optimization",
    ICML 2021.
    """

    #: one line for the rule table of docs/index.md
    summary = 'v ← v + (1/n) Σ clip(x_i − v, τ), from the previous output'

    bound = "n > 2f"
    decomposition = "iterative"  # per iteration: distances to the centre -> scales -> scaled rows
    _parameter_constraints = {**Aggregator._parameter_constraints, "tau": Real(minimum=0.0, strict_min=True),
                              "iters": Integer(minimum=1)}

    def __init__(self, f: int = 0, tau: float = 10.0, iters: int = 1) -> None:
        super().__init__(f)
        self.tau = self._check("tau", tau)
        self.iters = self._check("iters", iters)
        self.center: Optional[torch.Tensor] = None

    def reset(self) -> None:
        self.center = None

    def state_dict(self) -> dict:
        """``{"center": the previous output (None before the first call)}``."""
        return {"center": None if self.center is None else self.center.clone()}

    def load_state_dict(self, state: dict) -> None:
        _check_keys(self, state, ("center",))
        center = state["center"]
        if center is not None and not isinstance(center, torch.Tensor):
            raise TypeError(
                f"centered-clipping: the state's center must be a tensor or None, got {type(center).__name__}"
            )
        self.center = None if center is None else center.detach().clone()

    def _aggregate(self, X, f, G):
        n, d = X.shape
        if self.center is None:
            v = torch.zeros(d, dtype=X.dtype, device=X.device)
        else:
            if self.center.numel() != d:
                raise ValueError(
                    f"centered-clipping keeps a centre of size {self.center.numel()} from its last call, "
                    f"got updates of size {d}; call reset() to start over"
                )
            v = self.center.to(dtype=X.dtype, device=X.device)
        for _ in range(self.iters):
            dist = ops.distances_to(X, v)
            scale = torch.clamp(self.tau / dist.clamp_min(torch.finfo(X.dtype).tiny), max=1.0)
            # sum, then divide: with no row clipped this is exactly the mean
            v = v * (1 - scale.sum() / n) + ops.combine_rows(scale, X) / n
        self.center = v.detach().clone()
        return v
