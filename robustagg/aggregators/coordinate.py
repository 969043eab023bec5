"""Coordinate-wise rules: median, trimmed mean, MeaMed (all on ``ops``' sorting-network kernels)."""

from __future__ import annotations

from robustagg.aggregators import ops
from robustagg.aggregators.base import Aggregator
from robustagg.aggregators.registry import register


@register("median", "coordinate-median", "comed")
class Median(Aggregator):
    r"""Coordinate-wise median.

    .. math:: [\mathrm{Median}(x_1..x_n)]_k = \mathrm{median}(x_{1,k}, \dots, x_{n,k})

    For even ``n`` the mean of the two middle values. Breakdown point 1/2.

    References
    ----------
    Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning:
    Towards Optimal Statistical Rates", ICML 2018.
    """

    #: one line for the rule table of docs/index.md
    summary = 'coordinate-wise median (mean of the middle two for even n)'

    bound = "n > 2f"
    decomposition = "coordinate-wise"

    def _aggregate(self, X, f, G):
        return ops.coordinate_median(X)


@register("trimmed-mean", "trmean", "trimmedmean")
class TrimmedMean(Aggregator):
    r"""Coordinate-wise trimmed mean: drop the ``f`` largest and ``f`` smallest values.

    .. math:: [\mathrm{TM}_f(x_1..x_n)]_k = \frac{1}{n - 2f} \sum_{j=f+1}^{n-f} x_{(j),k}

    where :math:`x_{(1),k} \le \dots \le x_{(n),k}` are the sorted values of coordinate ``k``.
    Non-finite rows dropped beforehand count as trimmed.

    References
    ----------
    Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning:
    Towards Optimal Statistical Rates", ICML 2018.
    """

    #: one line for the rule table of docs/index.md
    summary = 'per coordinate, drop f largest and f smallest, average the rest'

    bound = "n > 2f"
    decomposition = "coordinate-wise"

    def _aggregate(self, X, f, G):
        return ops.coordinate_trimmed_mean(X, f)


@register("meamed")
class MeaMed(Aggregator):
    r"""Mean around the median: per coordinate, the mean of the ``n - f`` values closest to the median.

    .. math:: [\mathrm{MeaMed}_f(x)]_k = \frac{1}{n-f} \sum_{i \in S_k} x_{i,k},
              \quad S_k = \operatorname*{arg\,min}_{|S| = n-f} \max_{i \in S} |x_{i,k} - \mathrm{med}_k|

    ``S_k`` is a window of consecutive sorted values; on ties the window of smaller values
    wins.

    References
    ----------
    Xie, Koyejo, Gupta, "Generalized Byzantine-tolerant SGD", arXiv:1802.10116, 2018.
    """

    #: one line for the rule table of docs/index.md
    summary = 'per coordinate, mean of the n − f values closest to the median'

    bound = "n > 2f"
    decomposition = "coordinate-wise"

    def _aggregate(self, X, f, G):
        return ops.coordinate_mean_around_median(X, X.shape[0] - f)
