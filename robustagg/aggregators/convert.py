"""Turning what users pass (tensors, arrays, lists, state dicts) into one ``(n, d)`` tensor and back.

``as_matrix(updates)`` returns the stacked tensor and a ``restore`` function
that gives an output vector (``(d,)``) or matrix (``(n', d)``) the type of the
input: numpy in -> numpy out, tensors in -> tensor on the same device and
float dtype, state dicts in -> a state dict (or a list of them).

Non-float entries of state dicts (integer or bool buffers such as BatchNorm's
``num_batches_tracked``) enter the rule's input like any other coordinate, but the
output does not take them from the rule: each is the coordinate-wise median of the
inputs' values (for an even count the mean of the two middle ones, rounded half to
even), in the entry's dtype. So a
rule whose output is not on the model's scale (the Flag Aggregator's default) does not
rescale a step counter, and one Byzantine input cannot move it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable, List, Optional, Tuple

import numpy as np
import torch

Restore = Callable[[torch.Tensor], Any]


def _float_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype.is_floating_point else torch.get_default_dtype()


def _to_tensor(x: Any, where: str) -> Tuple[torch.Tensor, bool]:
    """Return ``(tensor, came_from_numpy)`` without copying when possible."""
    if isinstance(x, torch.Tensor):
        return x, False
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            raise TypeError(f"{where} is a numpy array of objects; expected numbers")
        if x.dtype.kind == "c":
            raise TypeError(f"{where} is complex; robust aggregation needs real numbers")
        if not x.flags.writeable:  # torch cannot wrap read-only memory without a warning
            x = x.copy()
        return torch.from_numpy(x), True
    if isinstance(x, (int, float, list, tuple)):
        try:
            arr = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where} is not a rectangular array of numbers: {exc}") from None
        return torch.from_numpy(arr), True
    raise TypeError(
        f"{where} has unsupported type {type(x).__name__}; expected a torch.Tensor, "
        "a numpy array, a list of numbers or a state dict"
    )


def _check_rows(rows: Sequence[torch.Tensor]) -> None:
    shape0, device0 = rows[0].shape, rows[0].device
    for i, r in enumerate(rows):
        if r.shape != shape0:
            raise ValueError(
                f"ragged updates: update {i} has shape {tuple(r.shape)}, update 0 has {tuple(shape0)}"
            )
        if r.device != device0:
            raise ValueError(f"update {i} is on {r.device}, update 0 on {device0}; move them to one device")
        if r.dtype.is_complex:
            raise TypeError(f"update {i} is complex; robust aggregation needs real numbers")


def _stack(rows: List[torch.Tensor]) -> torch.Tensor:
    dtype = _float_dtype(rows[0].dtype)
    for r in rows[1:]:
        dtype = torch.promote_types(dtype, _float_dtype(r.dtype))
    n, d = len(rows), rows[0].numel()
    out = torch.empty((n, d), dtype=dtype, device=rows[0].device)
    for i, r in enumerate(rows):
        out[i].copy_(r.reshape(-1))
    return out


def _state_dict_layout(dicts: Sequence[Mapping]) -> List[Tuple[str, Tuple[int, ...], Any]]:
    first = dicts[0]
    keys = list(first.keys())
    layout = []
    for key in keys:
        value, _ = _to_tensor(first[key], f"update 0[{key!r}]")
        layout.append((key, tuple(value.shape), first[key]))
    keyset = set(keys)
    for i, sd in enumerate(dicts[1:], start=1):
        if not isinstance(sd, Mapping):
            raise TypeError(f"update {i} is a {type(sd).__name__}, update 0 is a state dict")
        if set(sd.keys()) != keyset:
            missing = sorted(keyset - set(sd.keys()))
            extra = sorted(set(sd.keys()) - keyset)
            raise ValueError(f"update {i} has different keys than update 0 (missing: {missing}, extra: {extra})")
        for key, shape, _ in layout:
            got = tuple(np.shape(sd[key])) if not isinstance(sd[key], torch.Tensor) else tuple(sd[key].shape)
            if got != shape:
                raise ValueError(f"ragged updates: update {i}[{key!r}] has shape {got}, update 0 has {shape}")
    return layout


def _flatten_dict(sd: Mapping, layout, where: str) -> torch.Tensor:
    parts = []
    for key, _, _ in layout:
        t, _ = _to_tensor(sd[key], f"{where}[{key!r}]")
        parts.append(t.reshape(-1))
    if not parts:
        raise ValueError(f"{where} is an empty state dict")
    dtype = _float_dtype(parts[0].dtype)
    for p in parts[1:]:
        dtype = torch.promote_types(dtype, _float_dtype(p.dtype))
    return torch.cat([p.to(dtype) for p in parts])


def _is_float(template: Any) -> bool:
    if isinstance(template, torch.Tensor):
        return template.dtype.is_floating_point
    return np.asarray(template).dtype.kind == "f"


def _nonfloat_medians(dicts: Sequence[Mapping], layout) -> dict:
    """Per non-float key (integer/bool buffers such as BatchNorm's ``num_batches_tracked``), the
    coordinate-wise median of the inputs' values (for an even count the mean of the two middle
    ones, rounded half to even)."""
    out = {}
    for key, shape, template in layout:
        if _is_float(template):
            continue
        values = torch.stack([torch.as_tensor(np.asarray(sd[key]) if not isinstance(sd[key], torch.Tensor)
                                              else sd[key]).reshape(-1).to(torch.int64) for sd in dicts])
        ordered, n = values.sort(dim=0).values.to(torch.float64), values.shape[0]
        middle = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
        out[key] = torch.round(middle).to(torch.int64).reshape(shape)  # halves to even
    return out


def _unflatten_dict(vector: torch.Tensor, layout, fixed: Optional[dict] = None) -> dict:
    out, offset = {}, 0
    for key, shape, template in layout:
        size = int(np.prod(shape)) if shape else 1
        chunk = vector[offset : offset + size].reshape(shape)
        offset += size
        if fixed is not None and key in fixed:  # not the rule's: the inputs' median, in the key's type
            value = fixed[key]
            if isinstance(template, torch.Tensor):
                out[key] = value.to(device=template.device, dtype=template.dtype)
            else:
                out[key] = value.cpu().numpy().astype(np.asarray(template).dtype)
            continue
        if isinstance(template, np.ndarray) or not isinstance(template, torch.Tensor):
            arr = chunk.detach().cpu().numpy()
            tdtype = np.asarray(template).dtype
            out[key] = (np.rint(arr) if tdtype.kind in "iub" else arr).astype(tdtype)
        else:
            if template.dtype.is_floating_point:
                out[key] = chunk.to(template.dtype)
            else:
                out[key] = chunk.round().to(template.dtype)
    if offset != vector.numel():
        raise ValueError(f"vector has {vector.numel()} entries, the layout needs {offset}")
    return out


def as_matrix(updates: Any) -> Tuple[torch.Tensor, Restore]:
    """Stack ``updates`` into a float ``(n, d)`` tensor; return it and the inverse conversion."""
    if isinstance(updates, (torch.Tensor, np.ndarray)):
        X, from_numpy = _to_tensor(updates, "updates")
        if X.dim() != 2:
            raise ValueError(
                f"updates must be an (n, d) matrix or a sequence of updates; got shape {tuple(X.shape)}"
            )
        if X.shape[0] == 0:
            raise ValueError("got no updates (n = 0)")
        if X.shape[1] == 0:
            raise ValueError("updates have zero length (d = 0)")
        if X.dtype.is_complex:
            raise TypeError("updates are complex; robust aggregation needs real numbers")
        if not X.dtype.is_floating_point:
            X = X.to(torch.get_default_dtype() if not from_numpy else torch.float64)
        X = X.contiguous()
        return X, (_to_numpy if from_numpy else _identity)
    if isinstance(updates, Mapping):
        raise TypeError("got one state dict; pass a list of them (one per worker)")
    if not isinstance(updates, Sequence) or isinstance(updates, (str, bytes)):
        raise TypeError(
            f"updates has unsupported type {type(updates).__name__}; expected a tensor, an array, "
            "or a sequence of tensors, arrays or state dicts"
        )
    if len(updates) == 0:
        raise ValueError("got no updates (an empty sequence)")
    if all(isinstance(u, Mapping) for u in updates):
        layout = _state_dict_layout(updates)
        rows = [_flatten_dict(sd, layout, f"update {i}") for i, sd in enumerate(updates)]
        _check_rows(rows)
        X = _stack(rows)

        def restore_dict(out: torch.Tensor) -> Any:
            fixed = _nonfloat_medians(updates, layout)
            if out.dim() == 1:
                return _unflatten_dict(out, layout, fixed)
            return [_unflatten_dict(row, layout, fixed) for row in out]

        return X, restore_dict
    if any(isinstance(u, Mapping) for u in updates):
        raise TypeError("updates mix state dicts with other types")
    converted = [_to_tensor(u, f"update {i}") for i, u in enumerate(updates)]
    rows = [t for t, _ in converted]
    _check_rows(rows)
    if rows[0].numel() == 0:
        raise ValueError("updates have zero length (d = 0)")
    X = _stack(rows)
    shape = tuple(rows[0].shape)
    if all(np_ for _, np_ in converted):
        return X, lambda out: _to_numpy(_reshape(out, shape))
    return X, lambda out: _reshape(out, shape)


def _reshape(out: torch.Tensor, shape: Tuple[int, ...]) -> torch.Tensor:
    return out.reshape(shape) if out.dim() == 1 else out.reshape((out.shape[0],) + shape)


def _identity(out: torch.Tensor) -> torch.Tensor:
    return out


def _to_numpy(out: torch.Tensor) -> np.ndarray:
    return out.detach().cpu().numpy()


def flatten(updates: Any) -> Any:
    """Flatten one state dict into a vector, or a sequence of updates into an ``(n, d)`` tensor.

    The key order is the first state dict's; :func:`unflatten` inverts it.

    Examples
    --------
    >>> import torch, robustagg as ra
    >>> sd = {"w": torch.ones(2, 2), "b": torch.zeros(2)}
    >>> ra.flatten(sd).shape
    torch.Size([6])
    >>> ra.unflatten(ra.flatten(sd), like=sd)["w"].shape
    torch.Size([2, 2])
    """
    if isinstance(updates, Mapping):
        layout = _state_dict_layout([updates])
        return _flatten_dict(updates, layout, "state dict")
    X, _ = as_matrix(updates)
    return X


def unflatten(vector: Any, like: Any) -> Any:
    """Give ``vector`` the structure of ``like``: a state dict, a tensor/array, or a list of them."""
    vec, _ = _to_tensor(vector, "vector")
    vec = vec.reshape(-1)
    if isinstance(like, Mapping):
        return _unflatten_dict(vec, _state_dict_layout([like]))
    if isinstance(like, (torch.Tensor, np.ndarray)):
        if vec.numel() != int(np.prod(like.shape)):
            raise ValueError(f"vector has {vec.numel()} entries, like has shape {tuple(like.shape)}")
        out = vec.reshape(tuple(like.shape))
        if isinstance(like, np.ndarray):
            return out.detach().cpu().numpy().astype(like.dtype, copy=False)
        return out.to(device=like.device, dtype=like.dtype)
    if isinstance(like, Sequence):
        sizes = [int(np.prod(np.shape(t))) if not isinstance(t, torch.Tensor) else t.numel() for t in like]
        if sum(sizes) != vec.numel():
            raise ValueError(f"vector has {vec.numel()} entries, like needs {sum(sizes)}")
        parts, offset = [], 0
        for t, size in zip(like, sizes):
            parts.append(unflatten(vec[offset : offset + size], t))
            offset += size
        return parts
    raise TypeError(f"cannot unflatten into {type(like).__name__}")
