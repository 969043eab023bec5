r"""System faults on what a worker sends: crash, drop, straggler, packet loss, bit flips, NaN/Inf.

Notation: ``t`` the round, ``w`` the worker, :math:`u_{t,w}` its update, :math:`\bot` the
missing update (``None``).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, Optional, Sequence

import numpy as np
import torch

from robustagg._validation import check_choice, check_float, check_int
from robustagg.faults.base import Fault, as_tensor, register

_INT_VIEW = {torch.float64: torch.int64, torch.float32: torch.int32,
             torch.float16: torch.int16, torch.bfloat16: torch.int16}
_NP_INT = {torch.int64: np.int64, torch.int32: np.int32, torch.int16: np.int16}
_NP_UINT = {torch.int64: np.uint64, torch.int32: np.uint32, torch.int16: np.uint16}


@register("crash")
class Crash(Fault):
    r"""Crash-stop: the worker is silent from round ``start`` on.

    .. math:: u'_{t,w} = \bot \ \text{ if } t \ge \mathrm{start}, \quad u_{t,w} \text{ otherwise}
    """

    def __init__(self, start: int = 0, workers: Optional[Iterable[int]] = None) -> None:
        super().__init__(workers)
        self.start = check_int(start, "start", minimum=0)

    def _apply(self, t, worker, X):
        return None if t >= self.start else X


@register("drop", "omission")
class Drop(Fault):
    r"""Omission: the update goes missing with probability ``q``, independently per round and worker.

    .. math:: u'_{t,w} = \bot \text{ with probability } q, \quad u_{t,w} \text{ otherwise}
    """

    def __init__(self, q: float = 0.1, workers: Optional[Iterable[int]] = None, seed: int = 0) -> None:
        super().__init__(workers, seed)
        self.q = check_float(q, "q", minimum=0.0, maximum=1.0)

    def _apply(self, t, worker, X):
        return None if self.rng(t, worker).random() < self.q else X


@register("straggler", "stale")
class Straggler(Fault):
    r"""Straggler: every update arrives ``delay`` rounds late, i.e. is stale by ``delay`` rounds.

    .. math:: u'_{t,w} = u_{t-k,w} \ \text{ if } u_{t-k,w} \text{ was sent}, \quad \bot \text{ otherwise}
              \qquad (k = \mathrm{delay})

    The fault keeps a per-worker buffer of the last ``delay`` updates (a copy of each, so
    ``delay`` extra vectors per straggling worker). In a round where nothing new is sent
    (``update=None``, e.g. dropped upstream) the update from round ``t - delay`` is still
    delivered. Rounds of a worker must be presented in increasing order; :meth:`reset`
    empties the buffers. ``delay = 0`` passes updates through.
    """

    def __init__(self, delay: int = 1, workers: Optional[Iterable[int]] = None) -> None:
        super().__init__(workers)
        self.delay = check_int(delay, "delay", minimum=0)
        self._buffer: Dict[int, Dict[int, Any]] = {}

    def reset(self) -> None:
        self._buffer = {}

    def __call__(self, t: int, worker: int, update: Any) -> Any:
        t = check_int(t, "round t", minimum=0)
        worker = check_int(worker, "worker", minimum=0)
        if not self.applies(worker) or self.delay == 0:
            return update
        buffer = self._buffer.setdefault(worker, {})
        if update is not None:
            as_tensor(update)  # type check
            buffer[t] = update.clone() if isinstance(update, torch.Tensor) else update.copy()
        out = buffer.pop(t - self.delay, None)
        for old in [r for r in buffer if r <= t - self.delay]:
            del buffer[old]
        return out


@register("packet-loss")
class PacketLoss(Fault):
    r"""Packet loss: coordinates travel in packets of ``packet_size``; each packet is lost
    (its coordinates zeroed) independently with probability ``fraction``.

    .. math:: u'_{t,w}[j] = m_{\lceil j / s \rceil}\, u_{t,w}[j], \qquad
              m_p \sim \mathrm{Bernoulli}(1 - \mathrm{fraction})

    so an expected ``fraction`` of the coordinates is zeroed (the Flag Aggregator paper's
    "dropped coordinates" fault with ``packet_size=1``). The update is flattened in row-major
    order; its shape is kept.
    """

    def __init__(self, fraction: float = 0.1, packet_size: int = 1, workers: Optional[Iterable[int]] = None,
                 seed: int = 0) -> None:
        super().__init__(workers, seed)
        self.fraction = check_float(fraction, "fraction", minimum=0.0, maximum=1.0)
        self.packet_size = check_int(packet_size, "packet_size", minimum=1)

    def _apply(self, t, worker, X):
        flat = X.reshape(-1)
        packets = math.ceil(flat.numel() / self.packet_size)
        g = self.torch_generator(t, worker, X.device)
        lost = torch.rand(packets, generator=g, device=X.device) < self.fraction
        if self.packet_size > 1:
            lost = lost.repeat_interleave(self.packet_size)[: flat.numel()]
        return flat.masked_fill(lost, 0).view_as(X)


@register("bit-flip", "bitflip")
class BitFlip(Fault):
    r"""Bit flips: flip random bits in the binary representation of the update's values.

    Give either ``count`` (exactly that many distinct bits flipped per update) or ``rate``
    (each bit flipped independently with that probability: the number of flips is
    :math:`K \sim \mathrm{Binomial}(d \cdot |B|, \mathrm{rate})`, then ``K`` distinct bits).
    Bits are drawn uniformly among the coordinates and the bit positions ``bits`` (default:
    all of the float format, e.g. 0..31 for float32, where 0 is the lowest mantissa bit,
    23..30 the exponent and 31 the sign; float64 uses 64 bits, float16/bfloat16 16 bits).
    A flipped exponent bit can turn a value into Inf/NaN or a huge number, as in real
    memory or transmission errors.

    .. math:: u'_{t,w}[j] = \mathrm{bits}^{-1}\big(\mathrm{bits}(u_{t,w}[j]) \oplus M_j\big)
    """

    def __init__(self, count: Optional[int] = None, rate: Optional[float] = None,
                 bits: Optional[Sequence[int]] = None, workers: Optional[Iterable[int]] = None,
                 seed: int = 0) -> None:
        super().__init__(workers, seed)
        if (count is None) == (rate is None):
            raise ValueError("bit-flip needs exactly one of count (flips per update) or rate (per bit)")
        self.count = None if count is None else check_int(count, "count", minimum=0)
        self.rate = None if rate is None else check_float(rate, "rate", minimum=0.0, maximum=1.0)
        self.bits = None if bits is None else tuple(sorted({check_int(b, "bit", minimum=0, maximum=63)
                                                            for b in bits}))
        if self.bits is not None and not self.bits:
            raise ValueError("bits must list at least one bit position")

    def _apply(self, t, worker, X):
        if X.dtype not in _INT_VIEW:
            raise TypeError(f"bit-flip needs a float16/bfloat16/float32/float64 update, got {X.dtype}")
        int_dtype = _INT_VIEW[X.dtype]
        width = torch.iinfo(int_dtype).bits
        bits = np.arange(width) if self.bits is None else np.asarray(self.bits)
        if bits.max() >= width:
            raise ValueError(f"bit position {bits.max()} does not exist in {X.dtype} ({width} bits)")
        out = X.contiguous().clone()
        flat = out.view(-1).view(int_dtype)
        total = flat.numel() * bits.size
        rng = self.rng(t, worker)
        k = self.count if self.count is not None else int(rng.binomial(total, self.rate))
        if k > total:
            raise ValueError(f"count={k} exceeds the {total} flippable bits of this update")
        if k == 0:
            return out
        picks = rng.choice(total, size=k, replace=False)
        coords, which = np.divmod(picks, bits.size)
        masks = np.left_shift(np.uint64(1), bits[which].astype(np.uint64))
        order = np.argsort(coords, kind="stable")
        coords, masks = coords[order], masks[order]
        starts = np.flatnonzero(np.r_[True, coords[1:] != coords[:-1]])
        combined = np.bitwise_or.reduceat(masks, starts)  # several bits of one value flip together
        signed = combined.astype(_NP_UINT[int_dtype]).view(_NP_INT[int_dtype])
        index = torch.from_numpy(coords[starts].astype(np.int64)).to(X.device)
        flat[index] ^= torch.from_numpy(signed).to(X.device)
        return out


@register("nonfinite", "nan-inf", "corrupt")
class NonFinite(Fault):
    r"""NaN/Inf corruption: with probability ``prob`` per round and worker, a share of the
    coordinates becomes non-finite.

    .. math:: u'_{t,w}[j] = v \ \text{ if } c_j = 1, \qquad c_j \sim \mathrm{Bernoulli}(\mathrm{fraction})

    with ``value`` :math:`v \in \{\mathrm{NaN}, +\infty, -\infty\}` or ``"mixed"`` (each
    corrupted coordinate picks one of the three uniformly). ``fraction = 1`` corrupts every
    coordinate. Robust rules drop such rows and count them against ``f``.
    """

    VALUES = ("nan", "inf", "-inf", "mixed")

    def __init__(self, value: str = "nan", prob: float = 1.0, fraction: float = 1.0,
                 workers: Optional[Iterable[int]] = None, seed: int = 0) -> None:
        super().__init__(workers, seed)
        self.value = check_choice(value, "value", self.VALUES)
        self.prob = check_float(prob, "prob", minimum=0.0, maximum=1.0)
        self.fraction = check_float(fraction, "fraction", minimum=0.0, maximum=1.0)

    def _apply(self, t, worker, X):
        if not X.is_floating_point():
            raise TypeError(f"nonfinite corruption needs a floating update, got {X.dtype}")
        if self.rng(t, worker).random() >= self.prob:
            return X
        g = self.torch_generator(t, worker, X.device)
        if self.fraction >= 1.0:
            mask = torch.ones(X.shape, dtype=torch.bool, device=X.device)
        else:
            mask = torch.rand(X.shape, generator=g, device=X.device) < self.fraction
        if self.value == "mixed":
            choice = torch.randint(0, 3, X.shape, generator=g, device=X.device)
            values = torch.tensor([math.nan, math.inf, -math.inf], dtype=X.dtype, device=X.device)[choice]
            return torch.where(mask, values, X)
        v = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[self.value]
        return X.masked_fill(mask, v)
