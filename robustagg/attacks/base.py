"""The attack contract: ``attack(honest, f, *, aggregator=None, generator=None) -> (f, d)``.

An attack sees the ``(h, d)`` updates of the honest workers (what an omniscient adversary
can observe) and returns the ``f`` rows the Byzantine workers send, in the honest rows'
dtype and on their device (numpy in, numpy out).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import numpy as np
import torch

from robustagg._registry import ParamsRepr, Registry
from robustagg._validation import check_int

REGISTRY = Registry("attack")
register = REGISTRY.register


def as_honest(honest: Any) -> Tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """Check the honest matrix and return it as a tensor plus a function restoring the input type."""
    if isinstance(honest, np.ndarray):
        tensor = torch.from_numpy(honest)

        def restore(out: torch.Tensor) -> Any:
            return out.numpy()

    elif isinstance(honest, torch.Tensor):
        tensor = honest

        def restore(out: torch.Tensor) -> Any:
            return out

    else:
        raise TypeError(
            f"honest updates must be a torch.Tensor or numpy array of shape (h, d), got {type(honest).__name__}"
        )
    if tensor.dim() != 2:
        raise ValueError(f"honest updates must be a 2-D (h, d) matrix, got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 0:
        raise ValueError("an attack needs at least one honest update (h >= 1)")
    if not tensor.is_floating_point():
        raise TypeError(f"honest updates must have a floating dtype, got {tensor.dtype}")
    return tensor, restore


def repeat_rows(vector: torch.Tensor, f: int) -> torch.Tensor:
    """``f`` copies of ``vector`` as a new ``(f, d)`` tensor (all Byzantine workers send the same)."""
    return vector.unsqueeze(0).repeat(f, 1)


def honest_std(H: torch.Tensor) -> torch.Tensor:
    """Per-coordinate standard deviation with Bessel's correction (zero when ``h = 1``)."""
    if H.shape[0] < 2:
        return torch.zeros_like(H[0])
    return torch.std(H, dim=0, correction=1)


class Attack(ParamsRepr):
    """Base class of every attack.

    Call it as ``attack(honest, f, aggregator=None, generator=None)``:

    * ``honest``: ``(h, d)`` floating tensor (or numpy array) of honest updates;
    * ``f``: how many Byzantine rows to return (``f = 0`` gives an empty ``(0, d)`` result);
    * ``aggregator``: the server's rule, needed by the aggregator-aware attacks
      (``*-opt``); a robustagg rule or any callable mapping ``(n, d)`` to ``(d,)``;
    * ``generator``: a :class:`torch.Generator` for the randomised attacks (otherwise the
      attack's own generator seeded with ``seed``, or torch's global one when ``seed=None``).

    Subclasses implement ``_attack(H, f, aggregator, generator) -> (f, d)``.
    After a call, ``last`` holds what the attack chose (e.g. ALIE's ``z``).
    """

    name: str = ""
    #: whether ``aggregator=`` is required.
    needs_aggregator: bool = False

    def __init__(self) -> None:
        self.last: dict = {}

    def __call__(self, honest: Any, f: int, *, aggregator: Any = None,
                 generator: Optional[torch.Generator] = None) -> Any:
        H, restore = as_honest(honest)
        f = check_int(f, "f", minimum=0)
        if aggregator is not None and not callable(aggregator):
            raise TypeError(f"aggregator must be a robustagg rule or a callable, got {type(aggregator).__name__}")
        if self.needs_aggregator and aggregator is None:
            raise ValueError(f"attack {self.name!r} searches against the server's rule: pass aggregator=")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if f == 0:
            return restore(H.new_empty((0, H.shape[1])))
        out = self._attack(H, f, aggregator, generator)
        return restore(out)

    def _attack(self, H: torch.Tensor, f: int, aggregator: Any,
                generator: Optional[torch.Generator]) -> torch.Tensor:
        raise NotImplementedError


class RandomAttack(Attack):
    """An attack that draws random numbers: owns a generator seeded with ``seed``."""

    def __init__(self, seed: Optional[int] = None) -> None:
        super().__init__()
        self.seed = None if seed is None else check_int(seed, "seed", minimum=0)
        self.reset()

    def reset(self) -> None:
        """Restart the attack's own random sequence."""
        self._generator = None if self.seed is None else torch.Generator().manual_seed(self.seed)

    def _draw(self, sampler: Callable[..., torch.Tensor], shape, H: torch.Tensor,
              generator: Optional[torch.Generator]) -> torch.Tensor:
        """``sampler(shape, generator=g, dtype=..., device=...)`` on the generator's device, moved to ``H``'s."""
        g = generator if generator is not None else self._generator
        device = g.device if g is not None else H.device
        dtype = H.dtype if H.dtype in (torch.float32, torch.float64) else torch.float32
        out = sampler(shape, generator=g, dtype=dtype, device=device)
        return out.to(device=H.device, dtype=H.dtype)
