r"""Fixed-formula Byzantine attacks on update vectors.

Notation: :math:`x_1, \dots, x_h` are the honest updates, :math:`\bar x` their mean,
:math:`\sigma` their per-coordinate standard deviation (Bessel-corrected), ``f`` the number of
Byzantine workers and :math:`n = h + f`. Unless stated otherwise all ``f`` Byzantine workers
send the same vector.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Callable, Optional, Union

import torch

from robustagg._validation import check_choice, check_float, check_int
from robustagg.attacks.base import Attack, RandomAttack, honest_std, register, repeat_rows


@register("sign-flip", "signflip", "sf")
class SignFlip(Attack):
    r"""Sign flip: send the negated honest mean.

    .. math:: b = -\bar x

    References
    ----------
    Allen-Zhu, Ebrahimian, Li, Alistarh, "Byzantine-Resilient Non-Convex Stochastic Gradient
    Descent", ICLR 2021 (arXiv:2012.14368, 2020); the "SF" attack of Farhadkhani et al.,
    ICML 2023 (MoNNA).
    """

    def _attack(self, H, f, aggregator, generator):
        return repeat_rows(-H.mean(dim=0), f)


@register("reverse")
class Reverse(Attack):
    r"""Reversed, amplified gradient.

    .. math:: b = -s \, \bar x \quad (s = 10)

    With ``per_worker=True`` Byzantine row ``j`` is :math:`-s \, x_{(j \bmod h) + 1}` instead: pass
    the Byzantine workers' own honestly computed gradients as ``honest`` to get the Flag
    Aggregator paper's setting, where each faulty worker sends :math:`-10 g_i` of its own
    gradient :math:`g_i`.

    References
    ----------
    Almasi, Mishra, Vamanan, Ravi, "Flag Aggregator: Scalable Distributed Training under
    Failures and Augmented Losses using Convex Optimization", ICLR 2024.
    """

    def __init__(self, s: float = 10.0, per_worker: bool = False) -> None:
        super().__init__()
        self.s = check_float(s, "s", minimum=0.0, strict_min=True)
        if not isinstance(per_worker, bool):
            raise TypeError(f"per_worker must be a bool, got {per_worker!r}")
        self.per_worker = per_worker

    def _attack(self, H, f, aggregator, generator):
        if self.per_worker:
            rows = torch.arange(f, device=H.device) % H.shape[0]
            return -self.s * H.index_select(0, rows)
        return repeat_rows(-self.s * H.mean(dim=0), f)


@register("ipm", "inner-product-manipulation")
class IPM(Attack):
    r"""Inner-product manipulation: a small negative multiple of the honest mean.

    .. math:: b = -\varepsilon \, \bar x \quad (\varepsilon = 0.1)

    For small :math:`\varepsilon` the aggregate keeps a norm similar to the mean's but its inner
    product with the true gradient turns negative. Xie et al. use :math:`\varepsilon = 0.1`
    (and a large :math:`\varepsilon`, e.g. 100, against the mean).

    References
    ----------
    Xie, Koyejo, Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner Product
    Manipulation", UAI 2019.
    """

    def __init__(self, eps: float = 0.1) -> None:
        super().__init__()
        self.eps = check_float(eps, "eps")

    def _attack(self, H, f, aggregator, generator):
        return repeat_rows(-self.eps * H.mean(dim=0), f)


@register("foe", "fall-of-empires")
class FOE(Attack):
    r"""Fall of Empires, in MoNNA's parametrisation.

    .. math:: b = (1 - z) \, \bar x \quad (z = 1.1)

    The same family as :class:`IPM` (``foe(z) = ipm(eps = z - 1)``); the default ``z = 1.1``
    is IPM's :math:`\varepsilon = 0.1`. ``foe-opt`` searches ``z``.

    References
    ----------
    Xie, Koyejo, Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner Product
    Manipulation", UAI 2019. Farhadkhani, Guerraoui, Gupta, Hoang, Pinot, Stephan, "Robust
    Collaborative Learning with Linear Gradient Overhead", ICML 2023.
    """

    def __init__(self, z: float = 1.1) -> None:
        super().__init__()
        self.z = check_float(z, "z")

    def _attack(self, H, f, aggregator, generator):
        return repeat_rows((1.0 - self.z) * H.mean(dim=0), f)


def alie_z(n: int, f: int) -> float:
    r"""ALIE's default factor :math:`z_{\max}` (Baruch et al. 2019, Algorithm 3).

    .. math:: s = \left\lfloor \frac{n}{2} + 1 \right\rfloor - f, \qquad
              z_{\max} = \Phi^{-1}\!\left(\frac{n - s}{n}\right)

    with :math:`n = h + f` the total number of workers (honest plus Byzantine) and
    :math:`\Phi` the standard normal CDF. ``s`` is how many honest workers the attacker
    must "win over" to reach a majority. Needs ``1 <= s``, i.e. ``f <= floor(n/2)``.

    >>> round(alie_z(15, 3), 4)
    0.4307
    """
    n = check_int(n, "n", minimum=1)
    f = check_int(f, "f", minimum=0, maximum=n)
    s = math.floor(n / 2 + 1) - f
    if s < 1:
        raise ValueError(
            f"ALIE's formula needs s = floor(n/2 + 1) - f >= 1 (got n={n}, f={f}, s={s}); pass z explicitly"
        )
    return NormalDist().inv_cdf((n - s) / n)


@register("alie", "a-little-is-enough")
class ALIE(Attack):
    r"""A Little Is Enough: shift every coordinate by ``z`` honest standard deviations.

    .. math:: b = \bar x + z \, \sigma, \qquad
              z = \Phi^{-1}\!\left(\frac{n - s}{n}\right), \quad
              s = \left\lfloor \frac{n}{2} + 1 \right\rfloor - f

    where :math:`n = h + f` counts honest and Byzantine workers and ``z`` follows the formula
    (:func:`alie_z`) unless given. :math:`\sigma` uses Bessel's correction (torch's default,
    as the MoNNA code). ``last["z"]`` holds the factor used.

    References
    ----------
    Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing Defenses For Distributed
    Learning", NeurIPS 2019.
    """

    def __init__(self, z: Optional[float] = None) -> None:
        super().__init__()
        self.z = None if z is None else check_float(z, "z")

    def _attack(self, H, f, aggregator, generator):
        z = alie_z(H.shape[0] + f, f) if self.z is None else self.z
        self.last = {"z": z}
        return repeat_rows(H.mean(dim=0) + z * honest_std(H), f)


@register("gaussian", "noise")
class Gaussian(RandomAttack):
    r"""Gaussian noise: every Byzantine row is an independent draw

    .. math:: b_j \sim \mathcal N(\mu, \sigma^2 I_d), \qquad \mu = \bar x \text{ (``loc="mean"``) or a constant}

    The default :math:`\sigma = 200` is the Gaussian attack of Xie et al. (2018), which
    centres the noise at zero (``loc=0.0``).

    References
    ----------
    Xie, Koyejo, Gupta, "Generalized Byzantine-tolerant SGD", arXiv:1802.10116, 2018.
    """

    def __init__(self, sigma: float = 200.0, loc: Union[str, float] = "mean", seed: Optional[int] = None) -> None:
        super().__init__(seed)
        self.sigma = check_float(sigma, "sigma", minimum=0.0)
        if isinstance(loc, str):
            check_choice(loc, "loc", ("mean",))
            self.loc = loc
        else:
            self.loc = check_float(loc, "loc")

    def _attack(self, H, f, aggregator, generator):
        noise = self._draw(torch.randn, (f, H.shape[1]), H, generator)
        centre = H.mean(dim=0) if self.loc == "mean" else torch.full_like(H[0], self.loc)
        return centre + self.sigma * noise


@register("random", "uniform")
class Random(RandomAttack):
    r"""Uniform random vectors, the Flag Aggregator paper's main fault model.

    .. math:: b_j \sim \mathcal U[\mathrm{low}, \mathrm{high}]^d \quad (\text{default } \mathcal U[0, 1]^d)

    drawn independently for every Byzantine worker (the honest updates are not used).

    References
    ----------
    Almasi, Mishra, Vamanan, Ravi, "Flag Aggregator: Scalable Distributed Training under
    Failures and Augmented Losses using Convex Optimization", ICLR 2024.
    """

    def __init__(self, low: float = 0.0, high: float = 1.0, seed: Optional[int] = None) -> None:
        super().__init__(seed)
        self.low = check_float(low, "low")
        self.high = check_float(high, "high")
        if not self.high > self.low:
            raise ValueError(f"random attack needs high > low (got low={low}, high={high})")

    def _attack(self, H, f, aggregator, generator):
        u = self._draw(torch.rand, (f, H.shape[1]), H, generator)
        return self.low + (self.high - self.low) * u


@register("mimic")
class Mimic(Attack):
    r"""Mimic: every Byzantine worker copies one honest worker's update.

    .. math:: b = x_{i^*}

    ``index`` chooses :math:`i^*` (0-based, among the honest rows). ``index="max-variance"``
    uses the heuristic of Karimireddy et al.: the honest worker that sits furthest along the
    top principal direction of the honest updates,
    :math:`i^* = \arg\max_i |\langle x_i - \bar x, v\rangle|` with ``v`` the top eigenvector of
    their covariance (computed from the ``h x h`` centred Gram matrix). Over-representing one
    worker biases heterogeneous (non-iid) training while looking perfectly honest.
    ``last["index"]`` holds :math:`i^*`.

    References
    ----------
    Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via
    Bucketing", ICLR 2022.
    """

    def __init__(self, index: Union[int, str] = 0) -> None:
        super().__init__()
        if isinstance(index, str):
            self.index = check_choice(index, "index", ("max-variance",))
        else:
            self.index = check_int(index, "index", minimum=0)

    def _attack(self, H, f, aggregator, generator):
        return repeat_rows(H[self.choose(H)], f)

    def choose(self, H: torch.Tensor, total: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> int:
        """:math:`i^*` for the honest rows ``H`` (sets ``last``). When ``H`` holds one shard of
        the coordinates (:mod:`robustagg.train.allreduce`), ``total`` sums the partial centred
        Gram matrix over every shard, so every shard chooses the same row."""
        h = H.shape[0]
        if self.index == "max-variance":
            C = H - H.mean(dim=0)
            K = (C @ C.T).to(torch.float64)
            if total is not None:
                K = total(K)
            _, vecs = torch.linalg.eigh(K)
            i = int(torch.argmax(vecs[:, -1].abs()))  # projections on the top direction are sqrt(lambda) * u
        else:
            if self.index >= h:
                raise ValueError(f"mimic index={self.index} but only h={h} honest updates were given")
            i = self.index
        self.last = {"index": i}
        return i


@register("zero")
class Zero(Attack):
    r"""Send zeros: :math:`b = 0` (a silent, crashed-but-responding worker)."""

    def _attack(self, H, f, aggregator, generator):
        return H.new_zeros((f, H.shape[1]))


@register("inf")
class Inf(Attack):
    r"""Send infinities: :math:`b = \pm\infty \cdot \mathbf 1` (``sign=+1`` or ``-1``).

    Tests the rules' handling of non-finite inputs (they drop such rows, counted against ``f``).
    """

    def __init__(self, sign: int = 1) -> None:
        super().__init__()
        if sign not in (1, -1) or isinstance(sign, bool):
            raise ValueError(f"sign must be 1 or -1, got {sign!r}")
        self.sign = sign

    def _attack(self, H, f, aggregator, generator):
        return H.new_full((f, H.shape[1]), self.sign * math.inf)


@register("nan")
class NaN(Attack):
    r"""Send NaNs: :math:`b = \mathrm{NaN} \cdot \mathbf 1` (a corrupted or diverged worker)."""

    def _attack(self, H, f, aggregator, generator):
        return H.new_full((f, H.shape[1]), math.nan)
