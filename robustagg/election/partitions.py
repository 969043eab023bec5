"""Deterministic partitions of a training set for DPA and Finite Aggregation.

A partition is a function of each sample's *content* (through an integer hash
``h(x)``), never of its position in the data set, so a poisoned sample lands in
exactly one bucket whatever else the attacker inserts or removes.

* **DPA** (Levine & Feizi 2021): ``k`` partitions; sample ``x`` goes to
  partition :math:`h(x) \\bmod k`; base model ``i`` trains on partition ``i``.
* **Finite Aggregation** (Wang, Levine & Feizi 2022): :math:`kd` buckets; sample
  ``x`` goes to bucket :math:`b = h(x) \\bmod kd`, and bucket ``b`` feeds the
  ``d`` base models :math:`(b + s_j) \\bmod kd`, :math:`j = 1..d`, for fixed
  distinct shifts :math:`s_1..s_d`. Model ``i`` therefore trains on the union of
  the buckets :math:`(i - s_j) \\bmod kd`.

References
----------
Levine, A., Feizi, S. "Deep Partition Aggregation: Provable Defenses against
General Poisoning Attacks." ICLR 2021.

Wang, W., Levine, A., Feizi, S. "Improved Certified Defenses against Data
Poisoning with (Deterministic) Finite Aggregation." ICML 2022.

Rezaei, K., Banihashem, K., Chegini, A., Feizi, S. "Run-Off Election: Improved
Provable Defense against Data Poisoning Attacks." ICML 2023.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterator, Optional, Sequence, Tuple

import numpy as np

from robustagg._validation import check_int

#: The reference code's seed for the FA shifts: ``random.seed(999999999 + 208)``.
REFERENCE_SHIFT_SEED = 999999999 + 208

__all__ = [
    "Partition", "REFERENCE_SHIFT_SEED", "dpa_partition", "fa_partition", "fa_shifts",
    "pixel_sum_hash", "sha256_hash",
]


def _as_numpy(samples: Any) -> np.ndarray:
    if hasattr(samples, "detach"):  # torch tensor
        samples = samples.detach().cpu().numpy()
    arr = np.asarray(samples)
    if arr.ndim < 1:
        raise ValueError("samples must have a leading sample axis")
    return arr


def pixel_sum_hash(samples: Any) -> np.ndarray:
    """The reference hash: the sum of a sample's integer pixel values.

    .. math:: h(x) = \\sum_p x_p, \\qquad x_p \\in \\{0, \\dots, 255\\}

    Parameters
    ----------
    samples : array-like, shape (n, ...)
        Integer images (e.g. ``uint8``), or float images in ``[0, 1]`` as
        ``torchvision.transforms.ToTensor`` makes them; floats are mapped back
        with the reference's ``(x * 255).int()`` in float32 (truncation, which
        recovers the original byte exactly for every ``v / 255``).

    Returns
    -------
    numpy.ndarray of int64, shape (n,)

    References
    ----------
    Levine & Feizi, "Deep Partition Aggregation", ICLR 2021 (reference code's hash).
    """
    arr = _as_numpy(samples)
    if arr.dtype.kind == "f":
        arr = (arr.astype(np.float32) * np.float32(255)).astype(np.int32)
    elif arr.dtype.kind not in "iub":
        raise TypeError(f"pixel_sum_hash needs integer or float samples, got dtype {arr.dtype}")
    return arr.reshape(arr.shape[0], -1).astype(np.int64).sum(axis=1)


def sha256_hash(samples: Any) -> np.ndarray:
    """A content hash: SHA-256 of each sample's bytes, read as a big-endian integer.

    .. math:: h(x) = \\mathrm{int}(\\mathrm{SHA256}(\\mathrm{bytes}(x)))

    Unlike :func:`pixel_sum_hash` it separates samples with the same pixel sum
    (e.g. translated digits). The bytes are those of the C-contiguous array, so
    the same content stored with the same dtype gets the same hash.

    Returns
    -------
    numpy.ndarray of object, shape (n,)
        Python integers in :math:`[0, 2^{256})`.

    References
    ----------
    FIPS 180-4, Secure Hash Standard (SHA-256).
    """
    arr = np.ascontiguousarray(_as_numpy(samples))
    out = np.empty(arr.shape[0], dtype=object)
    for i in range(arr.shape[0]):
        out[i] = int.from_bytes(hashlib.sha256(arr[i].tobytes()).digest(), "big")
    return out


def _keys_mod(keys: Any, m: int) -> np.ndarray:
    arr = _as_numpy(keys)
    if arr.ndim != 1:
        raise ValueError(f"keys must be one integer per sample (1-D), got shape {arr.shape}")
    if arr.dtype.kind in "iu":
        return np.mod(arr, m).astype(np.int64)
    if arr.dtype.kind == "O":
        return np.fromiter((int(x) % m for x in arr), dtype=np.int64, count=arr.shape[0])
    raise TypeError(f"keys must be integers, got dtype {arr.dtype}")


def fa_shifts(k: int, d: int, seed: Optional[int] = None) -> Tuple[int, ...]:
    """The ``d`` distinct Finite Aggregation shifts, as the reference draws them.

    ``random.seed(seed); random.sample(range(k * d), d)`` with
    ``seed = 999999999 + 208`` by default (done on a private ``random.Random``,
    so the global generator is untouched).

    References
    ----------
    Wang, Levine & Feizi, "(Deterministic) Finite Aggregation", ICML 2022
    (reference ``FiniteAggregation_data_norm_hash.py``).
    """
    k = check_int(k, "k", minimum=1)
    d = check_int(d, "d", minimum=1)
    seed = REFERENCE_SHIFT_SEED if seed is None else check_int(seed, "seed")
    return tuple(random.Random(seed).sample(range(k * d), d))


@dataclass(frozen=True, eq=False)
class Partition:
    """Which training samples each base model sees.

    Attributes
    ----------
    buckets : numpy.ndarray of int64, shape (n,)
        The bucket of every training sample (DPA: the partition).
    k, d : int
        ``num_buckets = num_models = k * d``; DPA has ``d = 1``.
    shifts : tuple of int
        Bucket ``b`` feeds models ``(b + s) % (k * d)`` for ``s`` in ``shifts``
        (DPA: ``(0,)``).

    Examples
    --------
    >>> p = fa_partition(np.arange(20), k=2, d=2, seed=0)
    >>> p.num_models, len(p.indices(0)) == 10
    (4, True)
    """

    buckets: np.ndarray
    k: int
    d: int
    shifts: Tuple[int, ...]

    @property
    def num_buckets(self) -> int:
        return self.k * self.d

    @property
    def num_models(self) -> int:
        return self.k * self.d

    @cached_property
    def bucket_models(self) -> np.ndarray:
        """``(k*d, d)`` array: row ``b`` lists the models that bucket ``b`` feeds."""
        kd = self.num_buckets
        return (np.arange(kd)[:, None] + np.asarray(self.shifts)[None, :]) % kd

    @cached_property
    def model_buckets(self) -> np.ndarray:
        """``(k*d, d)`` array: row ``i`` lists the buckets model ``i`` trains on."""
        kd = self.num_buckets
        return (np.arange(kd)[:, None] - np.asarray(self.shifts)[None, :]) % kd

    @cached_property
    def _sorted(self) -> Tuple[np.ndarray, np.ndarray]:
        order = np.argsort(self.buckets, kind="stable")
        starts = np.searchsorted(self.buckets[order], np.arange(self.num_buckets + 1))
        return order, starts

    def bucket_indices(self, b: int) -> np.ndarray:
        """Sample indices (ascending) in bucket ``b``."""
        order, starts = self._sorted
        return order[starts[b]:starts[b + 1]]

    def indices(self, i: int) -> np.ndarray:
        """Sample indices (ascending) that base model ``i`` trains on."""
        i = check_int(i, "model", minimum=0, maximum=self.num_models - 1)
        parts = [self.bucket_indices(int(b)) for b in self.model_buckets[i]]
        return np.sort(np.concatenate(parts)) if len(parts) > 1 else parts[0].copy()

    def sizes(self) -> np.ndarray:
        """Number of training samples of every base model, shape ``(k*d,)``."""
        per_bucket = np.bincount(self.buckets, minlength=self.num_buckets)
        return per_bucket[self.model_buckets].sum(axis=1)

    def __len__(self) -> int:
        return self.num_models

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.indices(i) for i in range(self.num_models))

    def __repr__(self) -> str:
        return (f"Partition(n={self.buckets.shape[0]}, k={self.k}, d={self.d}, "
                f"shifts={list(self.shifts)})")


def dpa_partition(keys: Sequence[int], k: int) -> Partition:
    """Deep Partition Aggregation: sample ``x`` goes to partition ``h(x) mod k``.

    Parameters
    ----------
    keys : array-like of int, shape (n,)
        Per-sample hashes (:func:`pixel_sum_hash`, :func:`sha256_hash`, ...).
    k : int
        Number of partitions = number of base models.

    Returns
    -------
    Partition
        With ``d = 1`` and ``shifts = (0,)``: model ``i`` trains on partition ``i``.

    References
    ----------
    Levine & Feizi, "Deep Partition Aggregation", ICLR 2021.
    """
    k = check_int(k, "k", minimum=1)
    return Partition(_keys_mod(keys, k), k, 1, (0,))


def fa_partition(keys: Sequence[int], k: int, d: int, seed: Optional[int] = None) -> Partition:
    """Finite Aggregation: ``k*d`` buckets, each feeding ``d`` models.

    Sample ``x`` goes to bucket :math:`b = h(x) \\bmod kd`; bucket ``b`` feeds
    models :math:`(b + s_j) \\bmod kd` with the shifts of :func:`fa_shifts`
    (``seed=None``: the reference's ``999999999 + 208``), so model ``i`` trains
    on buckets :math:`(i - s_j) \\bmod kd`. One poisoned sample touches one
    bucket, hence at most ``d`` base models.

    References
    ----------
    Wang, Levine & Feizi, "Improved Certified Defenses against Data Poisoning
    with (Deterministic) Finite Aggregation", ICML 2022.
    """
    k = check_int(k, "k", minimum=1)
    d = check_int(d, "d", minimum=1)
    return Partition(_keys_mod(keys, k * d), k, d, fa_shifts(k, d, seed))
