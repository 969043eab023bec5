"""Checkpoints that load with ``torch.load(weights_only=True)``, written atomically.

A checkpoint holds only tensors and primitive containers (dicts, lists, tuples, numbers,
strings). The state of stateful rules and faults (centered clipping's centre, bucketing's
generator, a straggler's in-flight updates) is captured generically by :func:`capture`:
every attribute holding a tensor, a ``torch.Generator``, a dict of tensors or ``None`` is saved.
"""

from __future__ import annotations

import os
import random
from typing import Any, Dict, Union

import numpy as np
import torch

from robustagg._io import atomic_write, atomic_write_bytes, atomic_write_text  # noqa: F401  (re-exported)

PathLike = Union[str, os.PathLike]
FORMAT = 1


def save(state: Dict[str, Any], path: PathLike) -> None:
    """``torch.save`` streamed into a temporary file, then ``os.replace`` onto ``path``."""
    atomic_write(path, lambda fh: torch.save({"format": FORMAT, **state}, fh))


def load(path: PathLike) -> Dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no arbitrary code runs), on the CPU."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a robustagg checkpoint (format {FORMAT})")
    return state


# ---------------------------------------------------------------------- global generators


def rng_state() -> Dict[str, Any]:
    """The global generators' states (torch CPU and CUDA, Python ``random``, NumPy legacy) as
    tensors and primitives. The trainers draw nothing from them (their randomness is derived
    from ``(seed, step)``), but user code running in callbacks may."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------- object state

_SKIP = object()


def _encode(value: Any) -> Any:
    if value is None:  # e.g. a centre not set yet: restoring must clear a later one
        return {"__none__": 1}
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, torch.Generator):
        return {"__generator__": value.get_state()}
    if isinstance(value, dict) and all(isinstance(k, (int, str)) for k in value):
        items = {k: _encode(v) for k, v in value.items()}
        if all(v is not _SKIP for v in items.values()):
            return {"__dict__": items}
    return _SKIP


def _decode(value: Any, current: Any) -> Any:
    if isinstance(value, torch.Tensor):
        target = current.device if isinstance(current, torch.Tensor) else None
        return value.to(target) if target is not None else value
    if "__none__" in value:
        return None
    if "__generator__" in value:
        current.set_state(value["__generator__"])
        return current
    return {k: _decode(v, None) for k, v in value["__dict__"].items()}


def capture(obj: Any) -> Any:
    """The checkpointable state of a rule, pipeline, fault or ``faults.Compose``."""
    if obj is None:
        return None
    stages = getattr(obj, "stages", None)
    if isinstance(stages, tuple):
        return {"stages": [capture(s) for s in stages]}
    chain = getattr(obj, "faults", None)
    if isinstance(chain, tuple):
        return {"faults": [capture(s) for s in chain]}
    out = {}
    for key, value in vars(obj).items():
        enc = _encode(value)
        if enc is not _SKIP:
            out[key] = enc
    return out


def restore(obj: Any, state: Any) -> None:
    """Inverse of :func:`capture` on an object built from the same configuration."""
    if obj is None or state is None:
        return
    if "stages" in state and isinstance(getattr(obj, "stages", None), tuple):
        for stage, sub in zip(obj.stages, state["stages"]):
            restore(stage, sub)
        return
    if "faults" in state and isinstance(getattr(obj, "faults", None), tuple):
        for fault, sub in zip(obj.faults, state["faults"]):
            restore(fault, sub)
        return
    for key, value in state.items():
        setattr(obj, key, _decode(value, getattr(obj, key, None)))
