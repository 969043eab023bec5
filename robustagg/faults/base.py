"""The fault contract: ``fault(t, worker, update) -> update' or None``.

A fault transforms what one worker sends in one round. ``None`` is the *missing* update:
nothing reached the server from that worker in that round (crashed, dropped, or still in
flight). Every fault passes ``None`` through (except a straggler, which may deliver an
older update in a round where nothing new was sent), never modifies ``update`` in place,
and returns the same type (torch tensor on the same device and dtype, or numpy array).
"""

from __future__ import annotations

import zlib
from typing import Any, Callable, Iterable, Optional, Tuple

import numpy as np
import torch

from robustagg._registry import ParamsRepr, Registry
from robustagg._validation import check_int

REGISTRY = Registry("fault")
register = REGISTRY.register

#: The value of a missing update (what a fault returns when nothing arrives).
MISSING = None


def is_missing(update: Any) -> bool:
    """Whether ``update`` is the missing value ``None``."""
    return update is None


def as_tensor(update: Any) -> Tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """``update`` as a tensor (numpy arrays share memory) and a function restoring its type."""
    if isinstance(update, torch.Tensor):
        return update, lambda out: out
    if isinstance(update, np.ndarray):
        return torch.from_numpy(update), lambda out: out.numpy()
    raise TypeError(f"an update must be a torch.Tensor, a numpy array or None, got {type(update).__name__}")


class Fault(ParamsRepr):
    """Base class of every fault.

    Parameters
    ----------
    workers : iterable of int, optional
        The worker ids the fault applies to; others pass unchanged. ``None``: every worker.
    seed : int
        Randomness for round ``t`` and worker ``w`` comes from
        ``numpy.random.default_rng([seed, salt, t, w])`` (``salt`` fixed per fault type), so
        the result depends only on ``(seed, t, w, update)``, not on the order of the calls.
        Give composed faults of the same type different seeds.
    """

    name: str = ""

    def __init__(self, workers: Optional[Iterable[int]] = None, seed: int = 0) -> None:
        if workers is None:
            self.workers = None
        else:
            if isinstance(workers, (str, bytes)) or not isinstance(workers, Iterable):
                raise TypeError(f"workers must be an iterable of worker ids or None, got {workers!r}")
            self.workers = frozenset(check_int(w, "worker id", minimum=0) for w in workers)
        self.seed = check_int(seed, "seed", minimum=0)

    def check_workers(self, n: int) -> None:
        """Raise ``ValueError`` when ``workers`` names an id outside ``0..n-1`` (a run of ``n`` workers)."""
        outside = sorted(w for w in (self.workers or ()) if w >= n)
        if outside:
            raise ValueError(f"{self.name or type(self).__name__}: workers {outside} out of range "
                             f"(the run has n={n} workers, ids 0..{n - 1})")

    def applies(self, worker: int) -> bool:
        """Whether this fault affects ``worker``."""
        return self.workers is None or worker in self.workers

    def __call__(self, t: int, worker: int, update: Any) -> Any:
        t = check_int(t, "round t", minimum=0)
        worker = check_int(worker, "worker", minimum=0)
        if update is None or not self.applies(worker):
            return update
        X, restore = as_tensor(update)
        out = self._apply(t, worker, X)
        return None if out is None else restore(out)

    def reset(self) -> None:
        """Forget any state kept between rounds (no-op for stateless faults)."""

    def rng(self, t: int, worker: int) -> np.random.Generator:
        """The numpy generator of round ``t`` and ``worker``."""
        salt = zlib.crc32((self.name or type(self).__name__).encode())
        return np.random.default_rng([self.seed, salt, t, worker])

    def torch_generator(self, t: int, worker: int, device: torch.device) -> torch.Generator:
        """A torch generator on ``device`` seeded from :meth:`rng` (bulk draws stay on the device;
        CPU and GPU therefore draw different, but each reproducible, masks)."""
        seed = int(self.rng(t, worker).integers(0, 2 ** 62))
        return torch.Generator(device=device).manual_seed(seed)

    def _params(self) -> dict:
        params = super()._params()
        if params.get("workers") is not None:
            params["workers"] = sorted(params["workers"])
        return params

    def _apply(self, t: int, worker: int, X: torch.Tensor) -> Optional[torch.Tensor]:
        raise NotImplementedError


class Compose:
    """Apply faults in order: ``Compose(a, b)(t, w, u) = b(t, w, a(t, w, u))``.

    A missing update (``None``) from one stage is passed on to the next (a straggler
    downstream may still deliver an older update).

    >>> from robustagg import faults
    >>> chain = faults.Compose(faults.get("drop", q=0.1, seed=1), faults.get("bit-flip", count=2, seed=2))
    """

    def __init__(self, *faults: Any) -> None:
        for i, fault in enumerate(faults):
            if not callable(fault):
                raise TypeError(f"stage {i} of Compose is a {type(fault).__name__}, not a fault")
        self.faults = tuple(faults)

    def __call__(self, t: int, worker: int, update: Any) -> Any:
        for fault in self.faults:
            update = fault(t, worker, update)
        return update

    def check_workers(self, n: int) -> None:
        """:meth:`Fault.check_workers` of every stage that has it; the message names the stage."""
        for i, fault in enumerate(self.faults):
            if hasattr(fault, "check_workers"):
                try:
                    fault.check_workers(n)
                except ValueError as exc:
                    raise ValueError(f"stage {i}: {exc}") from None

    def reset(self) -> None:
        for fault in self.faults:
            if hasattr(fault, "reset"):
                fault.reset()

    def __repr__(self) -> str:
        return f"Compose({', '.join(map(repr, self.faults))})"
