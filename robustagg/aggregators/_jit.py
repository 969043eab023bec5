"""Fused CPU kernels for sorting-network plans, generated as straight-line numba code.

For each plan the generator writes one function that loads a column's ``n``
values into local variables, runs the pruned network with scalar
``min``/``max`` and writes the finished statistic: one read of the input and
one write of the output, all comparisons in registers (LLVM vectorises the
column loop). The source goes to a cache directory so numba's on-disk cache
makes the compile a one-time cost per plan and dtype. NNM's mixing kernel
(:func:`run_mix_jit`) is generated and cached the same way.

Threads: each kernel releases the GIL; columns are split over
``torch.get_num_threads()`` Python threads (no numba threading layer, so the
kernels are safe to call from several threads and after ``fork``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from robustagg.aggregators._networks import Plan

_lock = threading.Lock()
_kernels: Dict[str, Callable] = {}
_pool: Optional[ThreadPoolExecutor] = None
_available: Optional[bool] = None


def available() -> bool:
    """True when numba imports and ``ROBUSTAGG_JIT`` is not ``0``."""
    global _available
    if os.environ.get("ROBUSTAGG_JIT", "1") == "0":
        return False
    if _available is None:
        try:
            import numba  # noqa: F401

            _available = True
        except Exception:  # pragma: no cover - depends on the install
            _available = False
    return _available


def cache_dir() -> Path:
    root = os.environ.get("ROBUSTAGG_CACHE_DIR")
    if root:
        return Path(root) / "kernels"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "robustagg" / "kernels"


def _source(plan: Plan) -> str:
    n, k = plan.n, plan.param
    lines = [
        "from numba import njit",
        "",
        "",
        "@njit(nogil=True, cache=CACHE, boundscheck=False)",
        "def kernel(X, rows, out, c0, c1, half, inv):",
    ]
    lines += [f"    r{i} = rows[{i}]" for i in range(n)]
    lines.append("    for j in range(c0, c1):")
    body = [f"x{i} = X[r{i}, j]" for i in range(n)]
    for a, b, need_min, need_max in plan.program:
        if need_min and need_max:
            body.append(f"x{a}, x{b} = min(x{a}, x{b}), max(x{a}, x{b})")
        elif need_min:
            body.append(f"x{a} = min(x{a}, x{b})")
        else:
            body.append(f"x{b} = max(x{a}, x{b})")
    mid = plan.middle
    med = f"x{mid[0]}" if len(mid) == 1 else f"(x{mid[0]} + x{mid[1]}) * half"
    if plan.kind == "median":
        body.append(f"out[j] = {med}")
    elif plan.kind == "trimmed":
        body.append("out[j] = (" + " + ".join(f"x{i}" for i in plan.summed) + ") * inv")
    elif plan.summed:  # "around" with a core: window sums from prefix sums of the loose values
        # window w covers positions w .. w + k - 1: the core t .. k - 1, the left loose positions
        # i >= w (suffix sums ls_w) and the right loose positions k .. k + w - 1 (prefix sums rs_w; r_i names the rows);
        # only additions of values inside a window (a huge value outside it never enters its sum),
        # and selects instead of branches
        t = n - k
        body.append(f"med = {med}")
        body.append(f"ls{t} = x0 - x0")
        body += [f"ls{w} = ls{w + 1} + x{w}" for w in range(t - 1, -1, -1)]
        body.append("rs0 = x0 - x0")
        body += [f"rs{w} = rs{w - 1} + x{k + w - 1}" for w in range(1, t + 1)]
        body.append(f"best = max(med - x0, x{k - 1} - med)")
        body.append("extra = ls0 + rs0")
        for w in range(1, t + 1):
            body.append(f"cost = max(med - x{w}, x{w + k - 1} - med)")
            body.append(f"extra = (ls{w} + rs{w}) if cost < best else extra")
            body.append("best = cost if cost < best else best")
        body.append("total = " + " + ".join(f"x{i}" for i in plan.summed))
        body.append("out[j] = (total + extra) * inv")
    else:
        t = n - k
        body.append(f"med = {med}")
        body.append(f"best = max(med - x0, x{k - 1} - med)")
        body.append("w = 0")
        for w in range(1, t + 1):
            body.append(f"cost = max(med - x{w}, x{w + k - 1} - med)")
            body.append(f"w = {w} if cost < best else w")
            body.append("best = cost if cost < best else best")
        core = " + ".join(f"x{i}" for i in plan.summed) if plan.summed else "x0 - x0"
        body.append(f"total = {core}")
        for i in plan.loose:
            body.append(f"total += x{i} if (w <= {i} and w + {k - 1} >= {i}) else x{i} - x{i}")
        body.append("out[j] = total * inv")
    lines += ["        " + line for line in body]
    return "\n".join(lines) + "\n"


def _load(plan: Plan) -> Callable:
    return _compile(_source(plan))


def _compile(src: str) -> Callable:
    """The function ``kernel`` of the numba source ``src``, cached on disk by its digest."""
    import numba

    digest = hashlib.sha1((src + numba.__version__).encode()).hexdigest()[:16]
    if digest in _kernels:
        return _kernels[digest]
    with _lock:
        if digest in _kernels:
            return _kernels[digest]
        fn = None
        for directory in (cache_dir(), Path(tempfile.gettempdir()) / f"robustagg-kernels-{os.getuid()}"):
            try:
                directory.mkdir(parents=True, exist_ok=True)
                path = directory / f"rk_{digest}.py"
                if not path.exists():
                    tmp = path.with_suffix(f".{os.getpid()}.tmp")
                    tmp.write_text(src.replace("CACHE", "True"))
                    os.replace(tmp, path)
                name = f"robustagg_kernels_{digest}"
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)  # type: ignore[union-attr]
                sys.modules[name] = module
                fn = module.kernel
                break
            except OSError:
                continue
        if fn is None:  # no writable directory: compile without the disk cache
            namespace: dict = {}
            exec(compile(src.replace("CACHE", "False"), f"<robustagg kernel {digest}>", "exec"), namespace)
            fn = namespace["kernel"]
        _kernels[digest] = fn
        return fn


def _reset_pool() -> None:  # after fork the parent's worker threads do not exist
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pool)


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool._max_workers < workers:  # type: ignore[attr-defined]
        _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="robustagg")
    return _pool


def run_plan_jit(X: torch.Tensor, plan: Plan, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Evaluate ``plan`` with the compiled kernel (CPU, float32/float64 only)."""
    kernel = _load(plan)
    Xn = X.detach().numpy()
    d = Xn.shape[1]
    row_ids = np.arange(Xn.shape[0], dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    out = np.empty(d, dtype=Xn.dtype)
    half = Xn.dtype.type(0.5)
    inv = Xn.dtype.type(1.0 / plan.divisor)
    threads = max(1, min(torch.get_num_threads(), d // 65536))
    if threads == 1:
        kernel(Xn, row_ids, out, 0, d, half, inv)
    else:
        bounds = np.linspace(0, d, threads + 1).astype(np.int64)
        jobs: List = [
            _executor(threads).submit(kernel, Xn, row_ids, out, int(bounds[i]), int(bounds[i + 1]), half, inv)
            for i in range(threads)
        ]
        for job in jobs:
            job.result()
    return torch.from_numpy(out)


def _mix_source() -> str:
    """NNM's mixing kernel (:func:`robustagg.aggregators.ops.mix_nearest`). On each block of
    columns: ``s``, the sum of the rows ``summed``; then output row ``i`` is ``(s if base[i] else
    0)`` minus the rows ``idx[i, :minus[i]]`` plus the rows ``idx[i, minus[i]:cnt[i]]``, times
    ``inv``. The block (``n`` rows) stays in cache, so the input is read from memory once and the
    output written once. ``combine`` adds up to four rows to a partial sum in one pass, written
    out for each count, sign and final scaling, so that every loop is a plain vector loop; partial
    sums alternate between two buffers (a loop that reads and writes one buffer through two names
    would not be vectorised)."""
    lines = [
        "import numpy as np",
        "from numba import njit",
        "",
        "",
        "@njit(nogil=True, cache=CACHE, boundscheck=False)",
        "def combine(dst, src, X, rows, t, k, b0, b1, negative, scale, last):",
    ]
    for k in (4, 3, 2, 1, 0):
        lines.append("    " + ("if k == 4:" if k == 4 else f"elif k == {k}:" if k else "else:"))
        lines += [f"        x{r} = X[rows[t + {r}], b0:b1]" for r in range(k)]
        terms = {4: "((x0[j] + x1[j]) + (x2[j] + x3[j]))", 3: "((x0[j] + x1[j]) + x2[j])",
                 2: "(x0[j] + x1[j])", 1: "x0[j]"}.get(k)
        for neg in ((True, False) if k else (False,)):
            for last in (True, False):
                expr = "src[j]" if not k else f"src[j] {'-' if neg else '+'} {terms}"
                expr = f"({expr}) * scale" if last else expr
                cond = " and ".join(c for c in (("negative" if neg else "not negative") if k else "", "last" if last else "not last") if c)
                lines += [f"        if {cond}:", "            for j in range(b1 - b0):", f"                dst[j] = {expr}"]
    lines += [
        "",
        "",
        "@njit(nogil=True, cache=CACHE, boundscheck=False)",
        "def kernel(X, summed, base, idx, minus, cnt, inv, out, c0, c1, block):",
        "    buf = np.zeros((5, block), dtype=X.dtype)  # 0-1: the shared sum, 2-3: partial sums, 4: zeros",
        "    m = summed.shape[0]",
        "    for b0 in range(c0, c1, block):",
        "        b1 = min(b0 + block, c1)",
        "        w = b1 - b0",
        "        zero = buf[4, :w]",
        "        s = zero",
        "        p = 0",
        "        for t in range(0, m, 4):",
        "            dst = buf[p, :w]",
        "            combine(dst, s, X, summed, t, min(4, m - t), b0, b1, False, inv, False)",
        "            s = dst",
        "            p = 1 - p",
        "        for i in range(X.shape[0]):",
        "            o = out[i, b0:b1]",
        "            src = s if base[i] else zero",
        "            c = cnt[i]",
        "            mi = minus[i]",
        "            rows = idx[i]",
        "            if c == 0:",
        "                combine(o, src, X, rows, 0, 0, b0, b1, False, inv, True)",
        "            p = 2",
        "            t = 0",
        "            while t < c:",
        "                k = min(4, (mi if t < mi else c) - t)",
        "                if t + k >= c:",
        "                    combine(o, src, X, rows, t, k, b0, b1, t < mi, inv, True)",
        "                else:",
        "                    dst = buf[p, :w]",
        "                    combine(dst, src, X, rows, t, k, b0, b1, t < mi, inv, False)",
        "                    src = dst",
        "                    p = 5 - p",
        "                t += k",
    ]
    return "\n".join(lines) + "\n"


#: bytes of input per block of the mixing kernel (``n`` rows of a block stay in the core's L2 cache;
#: 2 MiB per core on the development machine: at n = 200, d = 1e6 a 2 MiB budget took 492 ms
#: against 660 ms with 512 KiB, median of 7 interleaved calls; equal at n = 15 and 60)
MIX_BLOCK_BYTES = 1 << 21


def run_mix_jit(X: torch.Tensor, summed: torch.Tensor, base: torch.Tensor, idx: torch.Tensor,
                minus: torch.Tensor, cnt: torch.Tensor, k: int) -> torch.Tensor:
    """Evaluate the mixing kernel (:func:`_mix_source`) on CPU, float32/float64, columns split over threads."""
    kernel = _compile(_mix_source())
    Xn = X.detach().numpy()
    n, d = Xn.shape
    out = np.empty((n, d), dtype=Xn.dtype)
    args = [np.ascontiguousarray(t.numpy().astype(np.int64)) for t in (summed, base, idx, minus, cnt)]
    args += [Xn.dtype.type(1.0 / k), out]
    block = 1 << max(8, min(12, (MIX_BLOCK_BYTES // (n * Xn.itemsize)).bit_length() - 1))  # 256 .. 4096 columns
    threads = max(1, min(torch.get_num_threads(), d // 65536))
    # four column ranges per thread, taken in turn: a thread that the OS pauses (other jobs on
    # the machine) delays the call by a quarter of its share, not by all of it
    parts = 1 if threads == 1 else 4 * threads
    bounds = (np.linspace(0, d // block, parts + 1).astype(np.int64) * block).tolist()
    bounds[-1] = d
    if parts == 1:
        kernel(Xn, *args, 0, d, block)
    else:
        jobs: List = [_executor(threads).submit(kernel, Xn, *args, bounds[i], bounds[i + 1], block)
                      for i in range(parts)]
        for job in jobs:
            job.result()
    return torch.from_numpy(out)


def warmup_failed(exc: Exception) -> None:
    warnings.warn(f"robustagg: compiled kernel unavailable ({exc}); using the torch path", RuntimeWarning)
