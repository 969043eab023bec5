"""The non-robust baseline."""

from __future__ import annotations

from robustagg.aggregators.base import Aggregator
from robustagg.aggregators.registry import register


@register("mean", "average")
class Mean(Aggregator):
    r"""Arithmetic mean (the FedAvg / D-SGD baseline; not robust).

    .. math:: \mathrm{Mean}(x_1, \dots, x_n) = \frac{1}{n} \sum_{i=1}^{n} x_i

    One Byzantine input moves it arbitrarily far. ``f`` only sets how many
    non-finite rows may be dropped.

    References
    ----------
    McMahan et al., "Communication-Efficient Learning of Deep Networks from
    Decentralized Data", AISTATS 2017.
    """

    #: one line for the rule table of docs/index.md
    summary = '(1/n) Σ x_i (not robust)'

    bound = "n > f"
    decomposition = "coordinate-wise"
    nonfinite_shows_in_output = True  # NaN/Inf in any row makes that coordinate's mean NaN/Inf

    def _aggregate(self, X, f, G):
        return X.mean(dim=0)
