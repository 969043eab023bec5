"""Checkpoints that load with ``torch.load(weights_only=True)``, written atomically with a digest.

:func:`save` writes ``checkpoint.pt`` and its SHA-256 (``checkpoint.pt.sha256``) and keeps the
checkpoint it replaces as ``checkpoint.previous.pt`` (with its digest); :func:`load` reads a
file only when it matches its digest, and :func:`load_latest` falls back to the previous
checkpoint when the latest is missing, truncated or altered. Every step of the rotation
leaves at least one checkpoint that verifies, so a crash during or after a write loses at
most one checkpoint interval. A corrupted file raises :class:`CorruptFileError` (a
``ValueError``) with a one-line message naming it.

A checkpoint holds only tensors and primitive containers (dicts, lists, tuples, numbers,
strings). The state of stateful rules and faults (centered clipping's centre, bucketing's
generator, a straggler's in-flight updates) is captured generically by :func:`capture`:
every attribute holding a tensor, a ``torch.Generator``, a dict of tensors or ``None`` is saved.
"""

from __future__ import annotations

import io
import os
import random
import warnings
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import numpy as np
import torch

from robustagg._io import (  # noqa: F401  (atomic_write* re-exported)
    CorruptFileError, atomic_write, atomic_write_bytes, atomic_write_text, digest_path, read_verified,
    write_with_digest,
)

PathLike = Union[str, os.PathLike]
FORMAT = 1


def previous_path(path: PathLike) -> Path:
    """Where :func:`save` keeps the checkpoint it replaces: ``checkpoint.pt`` -> ``checkpoint.previous.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.previous{path.suffix}")


def save(state: Dict[str, Any], path: PathLike) -> None:
    """Write ``state`` to ``path`` with its digest, keeping the replaced checkpoint as the previous one.

    Order (each step atomic): the previous digest takes the latest's digest, the latest file
    becomes the previous one, the new file is written, then its digest. After a crash at any
    point, the latest or the previous checkpoint still verifies.
    """
    path = Path(path)
    if path.exists():
        prev = previous_path(path)
        digest = digest_path(path)
        if digest.exists():
            atomic_write_bytes(digest_path(prev), digest.read_bytes())
        os.replace(path, prev)
    write_with_digest(path, lambda fh: torch.save({"format": FORMAT, **state}, fh))


def load(path: PathLike) -> Dict[str, Any]:
    """Read a checkpoint that matches its digest, with ``weights_only=True`` (no arbitrary code
    runs), on the CPU; a corrupted or foreign file raises :class:`CorruptFileError`."""
    data = read_verified(path)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (a verified file that torch cannot read: one line)
        raise CorruptFileError(f"{path} is not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CorruptFileError(f"{path} is not a robustagg checkpoint (format {FORMAT})")
    return state


def load_latest(path: PathLike) -> Tuple[Dict[str, Any], Path]:
    """The newest checkpoint that verifies: ``path``, else :func:`previous_path` (with a warning).

    Raises :class:`FileNotFoundError` when neither exists and :class:`CorruptFileError` (one
    line naming both files) when none verifies.
    """
    path = Path(path)
    errors = []
    for candidate in (path, previous_path(path)):
        if not candidate.exists():
            continue
        try:
            state = load(candidate)
        except CorruptFileError as exc:
            errors.append(str(exc))
            continue
        if errors:
            warnings.warn(f"{errors[0]}; resuming from the previous checkpoint {candidate}", RuntimeWarning,
                          stacklevel=2)
        return state, candidate
    if not errors:
        raise FileNotFoundError(f"no checkpoint at {path}")
    raise CorruptFileError("no usable checkpoint: " + "; ".join(errors))


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


def _has_state_dict(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


def capture(obj: Any) -> Any:
    """The checkpointable state of a rule, pipeline, fault or ``faults.Compose``: its
    ``state_dict()`` when it has ``state_dict``/``load_state_dict``, otherwise the tensors,
    generators and ``None`` values among its attributes."""
    if obj is None:
        return None
    if _has_state_dict(obj):
        return {"__state_dict__": obj.state_dict()}
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
    if "__state_dict__" in state and _has_state_dict(obj):
        obj.load_state_dict(state["__state_dict__"])
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
