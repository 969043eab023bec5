"""Certified robustness of DPA, FA and their run-off elections against data poisoning.

A certificate is the largest number of poisoned training samples (insertions,
deletions or modifications) that provably cannot change an ensemble's
prediction on a test point; it is ``-1`` where the prediction is wrong. One
poisoned sample changes one partition/bucket, i.e. lets the attacker replace
the scores of one base model (DPA) or of the ``d`` models a bucket feeds (FA).

Notation (per test point): :math:`N_1[c]` round-1 votes, :math:`m_1, m_2` the
top two classes (stable ranking, ties to the smaller index), :math:`N_2(a > b)`
the number of models with :math:`s_j[a] > s_j[b]`, :math:`w` the prediction,
:math:`\\bar w` the other finalist (ROE), :math:`x^+ = \\max(x, 0)` and

.. math:: g(a, c) = N_1[a] - N_1[c] + [c > a],

the votes ``c`` must gain on ``a`` to beat it in round 1 (``c`` beats ``a`` iff
:math:`g(a, c) \\le 0`); one flipped model moves it by at most 2.

* ``"dpa"`` (plurality): :math:`\\lceil g(m_1, m_2)/2 \\rceil - 1`.
* ``"dpa+roe"``: :math:`\\min(\\mathrm{Cert}_{R1}, \\mathrm{Cert}_{R2}) - 1` with

  .. math::
      \\mathrm{Cert}_{R1} &= \\min_{\\{c_1, c_2\\} \\not\\ni w}
          \\mathrm{DP}\\big(g(w, c_1)^+, g(w, c_2)^+\\big) \\\\
      \\mathrm{Cert}_{R2} &= \\min_{c \\ne w} \\max\\Big(
          \\big\\lceil g(\\bar w, c)^+ / 2 \\big\\rceil,
          \\big\\lceil (2 N_2(w > c) - K + [c > w])^+ / 2 \\big\\rceil \\Big)

  where :math:`\\mathrm{DP}(i, j)` is the fewest flips, each lowering the two
  gaps by (2, 1) or (1, 2), that close both (:func:`dp_table`).
* ``"fa"`` / ``"fa+roe"``: the same gaps, but a bucket ``b`` closes at most
  :math:`\\sum_{j \\in b} r_j` of a gap, and the number of buckets is counted
  greedily in descending order of that reduction (``robustagg.election._finite``):
  :math:`r_j = 1 + [v_j = a] - [v_j = c]` for :math:`g(a, c)`;
  :math:`1 + 2[v_j = w] - [v_j = c_1] - [v_j = c_2]` for the pair term, whose gap
  is the unclipped :math:`g(w, c_1) + g(w, c_2)` and whose value is
  :math:`\\max(n_{c_1}, n_{c_2}, n_{\\mathrm{sum}})`;
  :math:`2 [s_j[w] > s_j[c]]` for the round-2 gap.

A correct ROE prediction always gets a certificate of at least 0. (The
round-2 term above can be 0 only with exactly tied scores when the winner was
the round-1 runner-up; zero poisons never change a prediction, so the
certificate is clamped to 0 there.)

Methods are :class:`Method` objects registered by name in :data:`METHODS`,
as rules are; :func:`certify` drives any of them the same way.

References
----------
Rezaei, Banihashem, Chegini, Feizi, "Run-Off Election: Improved Provable
Defense against Data Poisoning Attacks", ICML 2023.

Levine & Feizi, "Deep Partition Aggregation: Provable Defenses against General
Poisoning Attacks", ICLR 2021.

Wang, Levine & Feizi, "Improved Certified Defenses against Data Poisoning with
(Deterministic) Finite Aggregation", ICML 2022.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, List, Optional, Sequence, Union

import numpy as np

from robustagg._registry import ParamsRepr, Registry
from robustagg._validation import check_int
from robustagg.election import _finite
from robustagg.election.partitions import fa_shifts
from robustagg.election.votes import Round, as_scores, chunk_size, election

__all__ = ["DPA", "FA", "METHODS", "DPARunOff", "FARunOff", "Method", "available_methods", "certified_accuracy",
           "certify", "check_labels", "dp_table"]

#: Certification methods by name (:class:`Method` subclasses): ``METHODS.get("fa", k=80, d=16)``.
METHODS = Registry("certification method")
INF = _finite.INF


@lru_cache(maxsize=4)
def _dp_table(size: int) -> np.ndarray:
    dp = np.zeros((size, size), np.int32)
    j = np.arange(size)
    for i in range(size):
        row = np.empty(size, np.int64)
        if i >= 2:
            rec = np.full(size, size, np.int64)  # placeholder, overwritten below for j < 2
            rec[2:] = 1 + np.minimum(dp[i - 2, 1:-1], dp[i - 1, :-2])
            row[:] = rec
        row = np.where(i <= 1, (j + 1) // 2, row)           # i <= 1: ceil(j / 2)
        row = np.where(j <= 1, (i + 1) // 2, row)           # j <= 1: ceil(i / 2)
        row = np.where(((i <= 1) & (j <= 2)) | ((i <= 2) & (j <= 1)), 1, row)
        row[0] = row[0] if i else 0                         # DP(0, 0) = 0
        dp[i] = row
    dp.setflags(write=False)
    return dp


def dp_table(size: int) -> np.ndarray:
    """The two-gap table of DPA+ROE, ``DP[i, j]`` for ``0 <= i, j < size``.

    .. math::
        \\mathrm{DP}(0,0) = 0;\\ \\mathrm{DP}(i,j) = 1 \\text{ if } (i \\le 1, j \\le 2)
        \\text{ or } (i \\le 2, j \\le 1);\\ \\lceil i/2 \\rceil \\text{ if } j \\le 1;\\
        \\lceil j/2 \\rceil \\text{ if } i \\le 1;\\
        1 + \\min(\\mathrm{DP}(i-2, j-1), \\mathrm{DP}(i-1, j-2)) \\text{ otherwise.}

    It is the fewest poisoned models that make two classes both overtake the
    winner when each flip lowers the two gaps by at most (2, 1) or (1, 2). Built
    once per size (row by row, vectorised) and cached; read-only.

    References
    ----------
    Rezaei et al., "Run-Off Election", ICML 2023 (reference ``dp_calc.py``).
    """
    size = check_int(size, "size", minimum=1)
    return _dp_table(-(-size // 256) * 256)[:size, :size]


def _ceil_half(x: np.ndarray) -> np.ndarray:
    return (np.maximum(x, 0) + 1) // 2


class Method(ParamsRepr):
    """A certification method: certificates from one chunk's election.

    A method is registered in :data:`METHODS` under its name and built with its
    parameters (``METHODS.get("fa+roe", k=80, d=16)``); :func:`certify` runs the
    election on chunks of test points and hands each chunk's correctly predicted
    points to :meth:`chunk`. To add a method, subclass this (or a method below)
    and register it: nothing else changes.

    Attributes
    ----------
    run_off : bool
        Predict with the run-off election (else plurality).
    needs_bits : bool
        :meth:`chunk` reads the per-model round-2 indicators (``Round.not_beaten``).
    chunk_elements : int
        Scores entries per chunk (memory: a few times one chunk).
    """

    name = ""
    run_off = False
    needs_bits = False
    chunk_elements = 1 << 22

    def check_models(self, K: int) -> None:
        """Raise ``ValueError`` when scores of ``K`` base models do not fit the parameters."""

    def chunk(self, r: Round) -> np.ndarray:  # pragma: no cover - abstract
        """Certificates (before the wrong-prediction mask) of the points of ``r``, shape ``(n,)``."""
        raise NotImplementedError


@METHODS.register("dpa")
class DPA(Method):
    """Plurality vote (Levine & Feizi, ICLR 2021): :math:`\\lceil g(m_1, m_2)/2 \\rceil - 1`.

    Parameters
    ----------
    k : int, optional
        Number of partitions; checked against the scores' model count.
    """

    def __init__(self, k: Optional[int] = None) -> None:
        self.k = None if k is None else check_int(k, "k", minimum=1)

    def check_models(self, K: int) -> None:
        if self.k is not None and self.k != K:
            raise ValueError(f"DPA with k={self.k} needs {self.k} base models, scores hold {K}")

    def chunk(self, r: Round) -> np.ndarray:
        n = r.first.size
        g = _finite.gaps(r.counts, r.first)[np.arange(n), r.second]
        return _ceil_half(g) - 1


@METHODS.register("dpa+roe", "dpa-roe", "roe")
class DPARunOff(DPA):
    """Run-off election on a DPA ensemble (Rezaei et al., ICML 2023): ``min(CertR1, CertR2) - 1``."""

    run_off = True

    def chunk(self, r: Round) -> np.ndarray:
        n, C = r.counts.shape
        K = r.votes.shape[0]
        rows = np.arange(n)
        w = r.winner
        sec = r.first + r.second - w
        above = np.arange(C)[None, :] > w[:, None]
        r2 = np.maximum(_ceil_half(_finite.gaps(r.counts, sec)), _ceil_half(2 * r.beats - K + above))
        r2[rows, w] = INF
        g = np.maximum(_finite.gaps(r.counts, w), 0)
        a, b = _finite.pair_index(C)
        pair = dp_table(K + 2)[g[:, a], g[:, b]].astype(np.int64)
        pair[(a[None, :] == w[:, None]) | (b[None, :] == w[:, None])] = INF
        r1 = pair.min(axis=1) if pair.shape[1] else np.full(n, INF)
        return np.minimum(r1, r2.min(axis=1)) - 1


@METHODS.register("fa")
class FA(Method):
    """Finite Aggregation's plurality (Wang, Levine & Feizi, ICML 2022).

    Parameters
    ----------
    k, d : int
        ``k * d`` base models; bucket ``b`` feeds models ``(b + s) % (k * d)``.
    shifts : sequence of int, optional
        The ``d`` distinct shifts; default :func:`~robustagg.election.fa_shifts` ``(k, d)``.
    """

    chunk_elements = 1 << 21

    def __init__(self, k: Optional[int] = None, d: Optional[int] = None,
                 shifts: Optional[Sequence[int]] = None) -> None:
        if k is None or d is None:
            raise ValueError("FA certificates need k and d (scores must hold k * d models)")
        self.k = check_int(k, "k", minimum=1)
        self.d = check_int(d, "d", minimum=1)
        kd = self.k * self.d
        shifts = fa_shifts(self.k, self.d) if shifts is None else tuple(int(s) for s in shifts)
        if len(shifts) != self.d or len(set(s % kd for s in shifts)) != self.d:
            raise ValueError(f"shifts must be {self.d} distinct integers mod {kd}, got {list(shifts)}")
        self.shifts = tuple(s % kd for s in shifts)

    def check_models(self, K: int) -> None:
        if self.k * self.d != K:
            raise ValueError(f"FA with k={self.k}, d={self.d} has {self.k * self.d} base models, scores hold {K}")

    def chunk(self, r: Round) -> np.ndarray:
        return _finite.fa_chunk(r, self.d, self.shifts)


@METHODS.register("fa+roe", "fa-roe")
class FARunOff(FA):
    """Run-off election on an FA ensemble (Rezaei et al., ICML 2023)."""

    run_off = True
    needs_bits = True

    def chunk(self, r: Round) -> np.ndarray:
        return _finite.fa_roe_chunk(r, self.d, self.shifts)


def available_methods() -> List[str]:
    """Names of the registered certification methods (``robustagg list`` can show them)."""
    return METHODS.available()


def _method(method: Union[str, Method], k: Any, d: Any, shifts: Any) -> Method:
    if isinstance(method, Method):
        if (k, d, shifts) != (None, None, None):
            raise ValueError("k, d and shifts are parameters of the method object; pass them when building it")
        return method
    cls = METHODS.resolve(method)
    if not issubclass(cls, FA) and ((d not in (None, 1)) or shifts is not None):
        raise ValueError("d and shifts apply to the FA methods only")
    params = {"k": k, "d": d, "shifts": shifts} if issubclass(cls, FA) else {"k": k}
    return METHODS.get(method, **{key: v for key, v in params.items() if v is not None})


def check_labels(labels: Any, N: int, C: int) -> np.ndarray:
    """``labels`` as ``N`` int64 class indices in ``[0, C)``, else a ``ValueError`` saying which."""
    y = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels)
    if y.shape != (N,) or (N and y.dtype.kind not in "iu"):
        raise ValueError(f"labels must be {N} integers, got shape {y.shape} dtype {y.dtype}")
    bad = np.flatnonzero((y < 0) | (y >= C))
    if bad.size:
        raise ValueError(f"labels must be class indices in [0, {C}), got {y[bad[0]]} at test point {bad[0]} "
                         f"({bad.size} out of range)")
    return y.astype(np.int64)


def certify(scores: Any, labels: Any, method: Union[str, Method], k: Optional[int] = None,
            d: Optional[int] = None, shifts: Optional[Sequence[int]] = None) -> np.ndarray:
    """Certificate of every test point: poisoned samples it provably withstands.

    Parameters
    ----------
    scores : array-like or torch.Tensor, shape (K, N, C)
        Test scores (logits) of the base models; for FA, model ``i`` is the one
        that :meth:`Partition.indices(i) <robustagg.election.Partition.indices>`
        trains. Tensors are moved to the CPU; the computation is numpy, in
        chunks of test points (memory stays a few times one chunk).
    labels : array-like of int, shape (N,)
        Class indices in ``[0, C)``.
    method : {"dpa", "dpa+roe", "fa", "fa+roe"} or Method
        A name of :data:`METHODS` (see :func:`available_methods` and the module
        docstring for the formulas), or a built :class:`Method`.
    k, d : int, optional
        FA only (``K = k * d``). For DPA, ``k`` may be given and must equal ``K``.
    shifts : sequence of int, optional
        FA shifts; default :func:`~robustagg.election.fa_shifts` ``(k, d)``.

    Returns
    -------
    numpy.ndarray of int64, shape (N,)
        ``-1`` where the prediction (plurality for ``dpa``/``fa``, run-off
        for ``+roe``) differs from the label, else a certificate ``>= 0``.

    Examples
    --------
    >>> import numpy as np
    >>> s = np.zeros((5, 1, 3)); s[:4, 0, 2] = 1     # 4 of 5 models vote class 2
    >>> certify(s, [2], "dpa").tolist()               # g = 4 - 1 + 0 -> ceil(4/2) - 1
    [1]

    References
    ----------
    Rezaei et al., ICML 2023; Levine & Feizi, ICLR 2021; Wang, Levine & Feizi,
    ICML 2022.
    """
    m = _method(method, k, d, shifts)
    t = as_scores(scores)
    K, N, C = t.shape
    y = check_labels(labels, N, C)
    m.check_models(K)
    step = chunk_size(t, m.chunk_elements)
    out = np.full(N, -1, np.int64)
    for lo in range(0, N, step):
        r = election(t[:, lo:lo + step], run_off=m.run_off, bits=m.needs_bits)
        right = np.flatnonzero(r.winner == y[lo:lo + step])  # wrong predictions keep -1
        if right.size < r.winner.size:
            r = r.subset(right)
        if right.size:
            cert = m.chunk(r)
            out[lo + right] = np.maximum(cert, 0) if m.run_off else cert
    return out


def certified_accuracy(certs: Any, radii: Any) -> np.ndarray:
    """Share of test points whose certificate is at least each radius.

    .. math:: \\mathrm{CA}(r) = \\frac1N \\#\\{i : \\mathrm{cert}_i \\ge r\\}

    ``radii`` may be a scalar (returns a float) or a sequence (returns an array).
    At radius 0 this is the clean accuracy.

    References
    ----------
    Levine & Feizi, "Deep Partition Aggregation", ICLR 2021 (certified accuracy).
    """
    c = np.asarray(certs).reshape(-1)
    r = np.asarray(radii)
    if c.size == 0:
        raise ValueError("certified_accuracy needs at least one certificate")
    if c.dtype.kind not in "iu" or (c < -1).any():
        raise ValueError(f"certs must be integers >= -1 (as certify returns them), got dtype {c.dtype}")
    integral = r.dtype.kind in "iu" or (r.dtype.kind == "f" and bool(np.all(np.mod(r, 1) == 0)))
    if r.dtype == bool or not integral:
        raise TypeError(f"radii must be non-negative integers, got {radii!r}")
    if r.size and (r < 0).any():
        raise ValueError(f"radii must be non-negative integers, got {radii!r}")
    acc = (c[None, :] >= r.reshape(-1, 1)).mean(axis=1)
    return float(acc[0]) if r.ndim == 0 else acc.reshape(r.shape)
