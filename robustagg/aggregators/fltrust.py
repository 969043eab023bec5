"""FLTrust: trust scores from the server's own gradient."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from robustagg._validation import Opaque
from robustagg.aggregators import ops
from robustagg.aggregators.base import Aggregator
from robustagg.aggregators.registry import register


@register("fltrust")
class FLTrust(Aggregator):
    r"""FLTrust: weight each input by its ReLU-clipped cosine with the server's reference
    gradient :math:`g_0` (computed on a small trusted root dataset) and rescale it to
    :math:`\|g_0\|`.

    .. math:: t_i = \max\big(0, \cos(x_i, g_0)\big), \quad
              \mathrm{FLTrust}(x) = \frac{1}{\sum_i t_i} \sum_i t_i \frac{\|g_0\|}{\|x_i\|} x_i

    (zero when every :math:`t_i` is zero). Only the ``n`` inner products :math:`x_i^\top g_0`
    and the norms are needed: one pass over the input for them and one ``(n,) @ (n, d)``
    product. They are sums over coordinates, so the rule splits over coordinate shards
    (:func:`robustagg.collective.robust_all_reduce`): every rank sets the same whole
    reference, uses the slice of its shard, and the ``2n + 1`` partial sums are all-reduced.

    The reference is given with ``reference=`` or, per round, with :meth:`set_reference` (a
    vector of ``d`` entries, or anything :func:`~robustagg.aggregators.convert.as_matrix`
    flattens to one row, such as a state dict). A parameter server computes it on its root
    data with the current model each round and calls ``rule.set_reference(g0)`` before
    aggregating (``aggregator.root_samples`` in :mod:`robustagg.train`); a Flower
    ``federated.RobustStrategy`` does the same with its ``reference_fn``. Without any reference the rule falls back to the coordinate-wise median of the
    inputs as the trusted direction (a stand-in: FLTrust's guarantee needs the server's
    gradient) and says so in ``last["reference"]``.

    References
    ----------
    Cao, Fang, Liu, Gong, "FLTrust: Byzantine-robust Federated Learning via Trust
    Bootstrapping", NDSS 2021.
    """

    #: one line for the rule table of docs/index.md
    summary = "Σ ReLU(cos(x_i, g_0)) ‖g_0‖/‖x_i‖ x_i / Σ ReLU(cos): g_0 the server's gradient (`set_reference`)"

    bound = "n > f"
    nonfinite_shows_in_output = True  # a NaN/Inf entry makes its trust score, so every weight, NaN
    decomposition = "gram-weights"  # statistic: x_i . g_0, |x_i|^2, |g_0|^2 (a row and the diagonal of the Gram matrix of [X; g_0])
    _parameter_constraints = {**Aggregator._parameter_constraints,
                              "reference": Opaque(invalid=["abc", [[1.0, 2.0], [3.0, 4.0]], [float("nan"), 1.0]])}

    def __init__(self, f: int = 0, reference: Optional[Any] = None) -> None:
        super().__init__(f)
        self.reference: Optional[torch.Tensor] = None
        if reference is not None:
            self.set_reference(reference)

    def set_reference(self, g: Any) -> None:
        """Use ``g`` (the server's gradient on its root data) from the next call on."""
        if isinstance(g, str):
            raise TypeError(f"reference must be a vector, got {type(g).__name__}")
        from robustagg.aggregators.convert import as_matrix

        try:
            if isinstance(g, dict):  # a state dict: flattened like the updates
                row, _ = as_matrix([g])
            else:
                row = torch.as_tensor(g).reshape(1, -1) if torch.as_tensor(g).dim() == 1 else None
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"reference must be a vector: {exc}") from None
        if row is None:
            raise ValueError(f"reference must be one vector (1-D), got shape {tuple(torch.as_tensor(g).shape)}")
        if not row.is_floating_point():
            row = row.to(torch.get_default_dtype())
        if not bool(torch.isfinite(row).all()):
            raise ValueError("reference must be finite (it holds NaN/Inf)")
        self.reference = row[0]

    def _statistic(self, X, G):
        # x_i . g_0, |x_i|^2 and |g_0|^2 are sums over coordinates: partial sums over this call's
        # columns, completed by one reduction of 2n + 1 floats in a collective (identity in one process)
        offset, total = self._columns(X.shape[1])
        if self.reference is None:
            g0, source = ops.coordinate_median(X.detach()), "median"
        else:
            if self.reference.numel() != total:
                raise ValueError(f"fltrust: reference has {self.reference.numel()} entries, updates have {total}")
            g0, source = self.reference[offset : offset + X.shape[1]].to(device=X.device), "server"
        # one matrix-vector product and one norm pass in the input's dtype (no float64 copy of X)
        Xd, acc = X.detach(), ops.accumulation_dtype(X.dtype)
        g = g0.to(Xd.dtype)
        dots = (Xd @ g).to(torch.float64) if acc == Xd.dtype else (Xd.to(acc) @ g.to(acc)).to(torch.float64)
        norms = ops.row_norms(Xd if acc == Xd.dtype else Xd.to(acc)).to(torch.float64)
        over = torch.nonzero(~(torch.isfinite(dots) & torch.isfinite(norms))).flatten()
        if over.numel():  # finite rows whose norm or inner product overflows the dtype: redo in float64
            rows = Xd.index_select(0, over).to(torch.float64)
            dots[over], norms[over] = rows @ g0.to(device=rows.device, dtype=torch.float64), ops.row_norms(rows)
        g0_sq = ops.sq_distances_to(g0[None, :], None)  # |g0|^2 in float64, chunk by chunk
        n = X.shape[0]
        sums = self._sum_over_shards(torch.cat([dots, norms**2, g0_sq]))
        return sums[:n], sums[n : 2 * n].sqrt(), float(sums[2 * n].sqrt()), source

    def _decide(self, statistic, f):
        dots, norms, g0_norm, source = statistic
        safe = norms.clamp_min(torch.finfo(torch.float64).tiny)
        trust = torch.where(norms > 0, (dots / safe / max(g0_norm, 1e-300)).clamp_min(0), torch.zeros_like(dots))
        total = float(trust.sum())
        if not math.isfinite(total):  # a non-finite row: NaN weights, so the base class cleans and redoes
            w = torch.full_like(trust, math.nan)
        else:
            w = trust * g0_norm / safe / total if total > 0 else torch.zeros_like(trust)
        self.last = {"trust": trust, "reference": source}
        return w


def fltrust_stage(rule: Any) -> Optional[FLTrust]:
    """The :class:`FLTrust` rule that ``rule`` ends with: ``rule`` itself, or a pipeline's last
    stage; ``None`` otherwise (what a trainer or a strategy hands the server's reference to)."""
    if isinstance(rule, FLTrust):
        return rule
    stages = getattr(rule, "stages", None)
    if stages and isinstance(stages[-1], FLTrust):
        return stages[-1]
    return None
