"""Phocas: per coordinate, the mean of the ``n - f`` values nearest to the trimmed mean."""

from __future__ import annotations

from robustagg.aggregators import ops
from robustagg.aggregators.base import Aggregator
from robustagg.aggregators.registry import register


@register("phocas")
class Phocas(Aggregator):
    r"""Phocas: per coordinate, the mean of the ``n - f`` values nearest to the ``f``-trimmed mean.

    .. math:: [\mathrm{Phocas}_f(x)]_k = \frac{1}{n-f} \sum_{i \in N_k} x_{i,k},
              \quad N_k = \operatorname*{arg\,min}_{|N| = n-f} \sum_{i \in N} |x_{i,k} - \mathrm{TM}_f(x)_k|

    where :math:`\mathrm{TM}_f` is the coordinate-wise trimmed mean (drop the ``f`` largest and
    ``f`` smallest values). It is MeaMed with the trimmed mean as the centre instead of the
    median. ``N_k`` is a window of consecutive sorted values; on equal distances the window of
    smaller values wins. Every selected value lies within the honest range
    ``[min, max]`` widened by its width on each side, however large the Byzantine values are.

    References
    ----------
    Xie, Koyejo, Gupta, "Phocas: dimensional Byzantine-resilient stochastic gradient
    descent", arXiv:1805.09682, 2018.
    """

    #: one line for the rule table of docs/index.md
    summary = "per coordinate, mean of the n − f values closest to the trimmed mean"

    bound = "n > 2f"
    decomposition = "coordinate-wise"

    def _aggregate(self, X, f, G):
        centre = ops.coordinate_trimmed_mean(X, f)
        return ops.coordinate_mean_nearest(X, centre, X.shape[0] - f)
