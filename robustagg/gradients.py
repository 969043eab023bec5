"""A robust rule in a plain PyTorch training loop: workers' gradients in, ``p.grad`` out.

>>> import torch, robustagg as ra
>>> model = torch.nn.Linear(3, 2)
>>> grads = [{name: torch.ones_like(p) for name, p in model.named_parameters()} for _ in range(5)]
>>> ra.aggregate_gradients(model, grads, ra.get("median", f=1)).shape
torch.Size([8])
>>> model.weight.grad
tensor([[1., 1., 1.],
        [1., 1., 1.]])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Callable, List, Sequence, Tuple

import torch

Named = List[Tuple[str, torch.Tensor]]


def _parameters(model: Any) -> Named:
    """The trainable parameters of ``model`` as ``[(name, parameter)]``, in their order."""
    if isinstance(model, torch.nn.Module):
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    elif isinstance(model, Iterable) and not isinstance(model, (str, bytes, torch.Tensor, Mapping)):
        items = list(model)
        if items and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in items):
            named = items
        else:
            named = [(str(i), p) for i, p in enumerate(items)]
        for name, p in named:
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"model: parameter {name!r} is a {type(p).__name__}, not a torch.Tensor")
        named = [(name, p) for name, p in named if p.requires_grad]
    else:
        raise TypeError(f"model must be a torch.nn.Module or an iterable of parameters, got {type(model).__name__}")
    if not named:
        raise ValueError("model has no trainable parameters (none with requires_grad=True)")
    return named


def _entries(grads: Any, i: int, names: Sequence[str], frozen: set) -> Any:
    """Worker ``i``'s gradients as one tensor per trainable parameter, in the model's order,
    or as one flat tensor when the worker sent one."""
    where = f"worker_grads[{i}]"
    if isinstance(grads, torch.nn.Module):
        named = {}
        for name, p in grads.named_parameters():
            if name in frozen or not p.requires_grad:
                continue
            if p.grad is None:
                raise ValueError(f"{where}: parameter {name!r} has no .grad (call backward() on that worker first)")
            named[name] = p.grad
        grads = named
    elif isinstance(grads, torch.Tensor):
        if grads.dim() != 1:
            raise ValueError(f"{where} is a tensor of shape {tuple(grads.shape)}; a worker's gradient as one "
                             "tensor must be flat (d,); pass a dict or a list of tensors otherwise")
        return grads
    elif not isinstance(grads, Mapping):
        if not isinstance(grads, Iterable) or isinstance(grads, (str, bytes)):
            raise TypeError(f"{where} is a {type(grads).__name__}; expected a dict {{name: gradient}}, a list of "
                            "tensors in the order of model.parameters(), named_parameters() pairs, a flat tensor "
                            "or a worker model")
        items = list(grads)
        if items and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in items):
            grads = dict(items)  # e.g. named_parameters() of a worker's model
        else:
            if len(items) != len(names):
                raise ValueError(f"{where} has {len(items)} tensors; the model has {len(names)} trainable parameters")
            for name, g in zip(names, items):
                if not isinstance(g, torch.Tensor):
                    raise TypeError(f"{where}: the entry for {name!r} is a {type(g).__name__}, not a torch.Tensor")
            return items
    known = set(names)
    unknown = [k for k in grads if k not in known and k not in frozen]
    if unknown:
        raise ValueError(f"{where} has key {unknown[0]!r}, which is no parameter of the model")
    missing = [name for name in names if name not in grads]
    if missing:
        raise ValueError(f"{where} lacks the gradient of parameter {missing[0]!r}")
    out = [grads[name] for name in names]
    for name, g in zip(names, out):
        if not isinstance(g, torch.Tensor):
            raise TypeError(f"{where}[{name!r}] is a {type(g).__name__}, not a torch.Tensor")
    return out


def stack_gradients(model: Any, worker_grads: Any) -> torch.Tensor:
    """Stack the workers' gradients into one detached ``(n, d)`` tensor in the model's layout.

    Row ``i`` is worker ``i``'s gradient flattened in the order of the model's trainable
    parameters, in the parameters' (promoted) float dtype, on the first parameter's device.
    The formats are those of :func:`aggregate_gradients`.
    """
    return _stack(model, _parameters(model), worker_grads)


def _stack(model: Any, named: Named, worker_grads: Any) -> torch.Tensor:
    names = [name for name, _ in named]
    frozen = set()
    if isinstance(model, torch.nn.Module):
        frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    if isinstance(worker_grads, (torch.Tensor, Mapping, torch.nn.Module)) or not isinstance(worker_grads, Iterable):
        raise TypeError(f"worker_grads must be a list with one entry per worker, got a {type(worker_grads).__name__}")
    workers = list(worker_grads)
    if not workers:
        raise ValueError("worker_grads is empty: got no workers")
    sizes = [p.numel() for _, p in named]
    d = sum(sizes)
    floats = [p.dtype for _, p in named if p.dtype.is_floating_point]
    dtype = floats[0] if floats else torch.get_default_dtype()
    for other in floats[1:]:
        dtype = torch.promote_types(dtype, other)
    X = torch.empty((len(workers), d), dtype=dtype, device=named[0][1].device)
    with torch.no_grad():  # copying detaches: the stack never carries an autograd graph
        for i, grads in enumerate(workers):
            entries = _entries(grads, i, names, frozen)
            if isinstance(entries, torch.Tensor):  # one flat (d,) tensor
                if entries.numel() != d:
                    raise ValueError(f"worker_grads[{i}] is a flat tensor of {entries.numel()} entries; the model "
                                     f"has {d} trainable entries")
                X[i].copy_(entries)
                continue
            offset = 0
            for (name, p), g, size in zip(named, entries, sizes):
                if g.shape != p.shape:
                    raise ValueError(f"worker_grads[{i}]: the gradient of {name!r} has shape {tuple(g.shape)}, "
                                     f"the parameter has {tuple(p.shape)}")
                if g.dtype.is_complex:
                    raise TypeError(f"worker_grads[{i}]: the gradient of {name!r} is complex")
                X[i, offset:offset + size].copy_(g.reshape(-1))
                offset += size
    return X


def aggregate_gradients(model: Any, worker_grads: Any, rule: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Combine the workers' gradients with a robust rule and write the result into ``p.grad``.

    The single-process way to use a rule in a plain PyTorch loop that simulates workers:
    after it, ``optimizer.step()`` applies the robust aggregate as if it were the gradient.

    Parameters
    ----------
    model : torch.nn.Module or iterable of parameters
        The model whose parameters receive ``.grad``. Only parameters with
        ``requires_grad=True`` take part, in the order of ``model.named_parameters()``.
    worker_grads : sequence
        One entry per worker (honest or not), each one of:

        * a dict ``{name: gradient}`` with the model's parameter names (keys of frozen
          parameters are ignored);
        * a list of tensors in the order of the model's trainable parameters;
        * ``(name, tensor)`` pairs, e.g. ``worker_model.named_parameters()``: the tensors
          are used as given (detached);
        * a worker's ``torch.nn.Module`` after ``backward()``: its parameters' ``.grad``;
        * a flat tensor of the model's ``d`` trainable entries.

        Tensors may require grad: they are copied, detached, into one ``(n, d)`` stack.
    rule : callable
        A rule from :func:`robustagg.get` or :func:`robustagg.pipeline` (anything that maps an
        ``(n, d)`` tensor to a ``(d,)`` tensor).

    Returns
    -------
    torch.Tensor
        The aggregate, a detached ``(d,)`` tensor; each ``p.grad`` is a view of its slice (cast
        to ``p``'s dtype and device when they differ).

    Raises
    ------
    ValueError
        A worker's names, number of tensors or shapes do not match the model; no workers;
        a worker model without ``.grad``; the rule's own errors (e.g. its bound on ``f``).
    TypeError
        An entry of an unsupported type, or a ``rule`` that is not callable.
    """
    if not callable(rule):
        hint = f" (use robustagg.get({rule!r}, f=...))" if isinstance(rule, str) else ""
        raise TypeError(f"rule must be a callable rule such as robustagg.get('median', f=1), "
                        f"got {type(rule).__name__}{hint}")
    named = _parameters(model)  # once: model may be a generator such as model.parameters()
    X = _stack(model, named, worker_grads)
    with torch.no_grad():
        out = rule(X)
    if not isinstance(out, torch.Tensor) or out.shape != (X.shape[1],):
        shape = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
        raise ValueError(f"rule returned {shape}, expected a tensor of shape ({X.shape[1]},)")
    out = out.detach()
    offset = 0
    for _, p in named:
        size = p.numel()
        p.grad = out[offset:offset + size].view(p.shape).to(dtype=p.dtype, device=p.device)
        offset += size
    return out
