"""One rank of the multi-process collective tests, and :func:`launch`, which starts them.

``python tests/collective_worker.py OUT_DIR PHASES`` with RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT set; saves what each phase returned to ``OUT_DIR/rank<r>.pt``. The inputs come
from :func:`inputs`, which the tests call too to build the single-process reference.
"""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

import robustagg as ra
from robustagg.collective import CollectiveError, RobustHookState, robust_all_reduce, robust_hook, robust_step


def _reference(d: int) -> torch.Tensor:
    """FLTrust's server gradient in the cases: a fixed direction of ``d`` entries."""
    return torch.linspace(-1.0, 2.0, d)


# name -> (list of (registry name, params) stages, rows per rank, d, rows made NaN/Inf)
CASES = {
    "mean": ([("mean", {"f": 1})], "uneven", 10, ()),
    "median": ([("median", {"f": 1})], "uneven", 10, ()),
    "trimmed-mean": ([("trimmed-mean", {"f": 1})], "uneven", 10, ()),
    "meamed": ([("meamed", {"f": 1})], "uneven", 10, ()),
    "krum": ([("krum", {"f": 1})], "uneven", 10, ()),
    "multi-krum": ([("multi-krum", {"f": 1})], "uneven", 10, ()),
    "bulyan": ([("bulyan", {"f": 1})], "uneven", 10, ()),
    "geometric-median": ([("geometric-median", {"f": 1})], "uneven", 10, ()),
    "centered-clipping": ([("centered-clipping", {"f": 1, "tau": 0.5, "iters": 3})], "uneven", 10, ()),
    "flag": ([("flag", {"f": 1})], "uneven", 10, ()),
    # shards past the first block of the random init: round 2 starts from the kept generator states
    "flag-long": ([("flag", {"f": 1})], "uneven", 3 * 32768 + 5, ()),
    "flag-data-lam": ([("flag", {"f": 1, "init": "data", "lam": 0.5})], "uneven", 10, ()),
    "nnm": ([("nnm", {"f": 1})], "uneven", 10, ()),
    "bucketing": ([("bucketing", {"f": 1, "s": 2, "seed": 4})], "uneven", 10, ()),
    "clipping": ([("clipping", {"f": 1, "c": 1.0})], "uneven", 10, ()),
    "arc": ([("arc", {"f": 1})], "uneven", 10, ()),
    "nnm>krum": ([("nnm", {"f": 1}), ("krum", {"f": 1})], "uneven", 10, ()),
    "bucketing>geomed": ([("bucketing", {"f": 1, "s": 2}), ("geometric-median", {"f": 1})], "uneven", 10, ()),
    "clip>nnm>cc": ([("clipping", {"f": 1, "c": 2.0}), ("nnm", {"f": 1}),
                     ("centered-clipping", {"f": 1, "tau": 0.5})], "uneven", 10, ()),
    "arc>trimmed-mean": ([("arc", {"f": 1}), ("trimmed-mean", {"f": 1})], "uneven", 10, ()),
    # fewer coordinates than ranks: some shards are empty
    "krum-d2": ([("krum", {"f": 1})], "uneven", 2, ()),
    "median-d2": ([("median", {"f": 1})], "uneven", 2, ()),
    "krum-zero-rows": ([("krum", {"f": 1})], "zero", 10, ()),
    # one update per rank, as in data-parallel training
    "geomed-k1": ([("geometric-median", {"f": 0})], "one", 7, ()),
    "phocas": ([("phocas", {"f": 1})], "uneven", 10, ()),
    "cge": ([("cge", {"f": 1})], "uneven", 10, ()),
    "mda": ([("mda", {"f": 1})], "uneven", 10, ()),
    "smea": ([("smea", {"f": 1})], "uneven", 10, ()),
    "caf": ([("caf", {"f": 1})], "uneven", 10, ()),
    "clipped-clustering": ([("clipped-clustering", {"f": 1})], "uneven", 10, ()),
    "monna": ([("monna", {"f": 1})], "uneven", 10, ()),
    # the server's reference (every rank passes the whole of it), and the median fallback
    "fltrust": ([("fltrust", {"f": 1, "reference": _reference(10)})], "uneven", 10, ()),
    "fltrust-median": ([("fltrust", {"f": 1})], "uneven", 10, ()),
    "fltrust-d2": ([("fltrust", {"f": 1, "reference": _reference(2)})], "uneven", 2, ()),
    "nnm>fltrust": ([("nnm", {"f": 1}), ("fltrust", {"f": 1, "reference": _reference(10)})], "uneven", 10, ()),
    # a subsample of 6 of the 10 coordinates: the drawn ones fall unevenly on the shards
    "dnc": ([("dnc", {"f": 1, "sub_dim": 6, "niters": 3, "seed": 2})], "uneven", 10, ()),
    "dnc-all": ([("dnc", {"f": 1})], "uneven", 10, ()),
    "dnc-d2": ([("dnc", {"f": 1, "sub_dim": 1})], "uneven", 2, ()),
}
# non-finite rows (a NaN row, an Inf row, a row of 1e20 whose squared norm overflows in float32)
for _name in ("mean", "median", "trimmed-mean", "meamed", "krum", "multi-krum", "bulyan", "geometric-median",
              "centered-clipping", "flag", "nnm", "bucketing", "clipping", "arc"):
    CASES[f"nan:{_name}"] = ([(_name, {**CASES[_name][0][0][1], "f": 3})], "nan", 9, (1, 5, 9))
CASES["nan:fltrust"] = ([("fltrust", {"f": 3, "reference": _reference(9)})], "nan", 9, (1, 5, 9))
CASES["nan:dnc"] = ([("dnc", {"f": 3, "sub_dim": 5, "niters": 2})], "nan", 9, (1, 5, 9))
CASES["nan:nnm>krum"] = ([("nnm", {"f": 3}), ("krum", {"f": 3})], "nan", 9, (1, 5, 9))
ROUNDS = 2


def counts(kind: str, world: int):
    if kind == "one":
        return [1] * world
    if kind == "nan":  # 15 rows for Bulyan with f = 3
        return [15 // world + (1 if r < 15 % world else 0) for r in range(world)]
    if kind == "zero":  # rank 0 hosts no worker
        return [0] + [7 // (world - 1) + (1 if r < 7 % (world - 1) else 0) for r in range(world - 1)]
    return [r % 3 + 1 + (r == 0) for r in range(world)]  # uneven: 2, 2, 3, 2, ...


def inputs(case: str, world: int, round_: int):
    """Every rank's ``(k, d)`` float32 updates for one round of ``case`` (seeded)."""
    _, kind, d, bad = CASES[case]
    ks = counts(kind, world)
    gen = torch.Generator().manual_seed(sum(map(ord, case)) * 97 + world * 13 + round_)
    X = torch.randn(sum(ks), d, generator=gen, dtype=torch.float64).to(torch.float32)
    X[-1] += 5.0  # an outlier
    for r, value in zip(bad, (float("nan"), float("inf"))):
        X[r, r % d] = value
    if len(bad) > 2:
        X[bad[2]] = 1e20
    return list(torch.split(X, ks))


def build(case: str):
    stages = [ra.get(name, **params) for name, params in CASES[case][0]]
    return stages[0] if len(stages) == 1 else ra.pipeline(*stages)


#: the cases the larger world size runs (the tests' time budget)
SOME = ("krum", "median", "flag", "clip>nnm>cc", "krum-d2", "nan:bulyan", "nan:centered-clipping", "fltrust", "dnc",
        "nan:dnc")


def run_cases(rank: int, world: int, names=tuple(CASES)):
    results = {}
    for case in names:
        rule = build(case)
        rounds = []
        for t in range(ROUNDS):
            mine = inputs(case, world, t)[rank]
            try:
                out = robust_all_reduce(mine, rule)
                rounds.append({"out": out, "last": rule.last, "kept": rule.kept, "dropped": rule.dropped,
                               "state": rule.state_dict()})
            except ValueError as exc:
                rounds.append({"error": str(exc)})
        results[case] = rounds
    return results


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(5, 4)
        self.b = torch.nn.Linear(4, 3)
        self.c = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def flip(g):
    return -10.0 * g


def local_grad(model, rank, step):
    gen = torch.Generator().manual_seed(100 * step + rank)
    x, y = torch.randn(8, 5, generator=gen), torch.randn(8, 2, generator=gen)
    model.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    return x, y


def run_hooks(rank: int, world: int):
    """Two DDP steps (several buckets) and two robust_step calls; the last rank is Byzantine."""
    out = {"ddp": [], "step": []}
    bad = rank == world - 1
    plain, ddp_model = Net(), Net()
    ddp = torch.nn.parallel.DistributedDataParallel(ddp_model, bucket_cap_mb=1e-4)
    ddp.register_comm_hook(RobustHookState(ra.get("geometric-median", f=1), transform=flip if bad else None), robust_hook)
    for step in range(2):
        x, y = local_grad(plain, rank, step)
        row = torch.cat([p.grad.reshape(-1) for p in plain.parameters()])
        ddp.zero_grad()
        torch.nn.functional.mse_loss(ddp(x), y).backward()
        got = torch.cat([p.grad.reshape(-1) for p in ddp_model.parameters()])
        out["ddp"].append({"row": flip(row) if bad else row, "got": got})
    model = Net()
    rule = ra.get("trimmed-mean", f=1)
    for step in range(2):
        local_grad(model, rank, step)
        row = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        flat = robust_step(model, rule, transform=flip if bad else None)
        got = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        out["step"].append({"row": flip(row) if bad else row, "got": got, "flat": flat})
    return out


def run_nan_rank(rank: int, world: int):
    """The last rank sends NaN: the mean (f=1) of the others, on every rank."""
    row = torch.full((5,), float(rank + 1))
    rule = ra.get("mean", f=1)
    sent = torch.full((5,), float("nan")) if rank == world - 1 else row
    out = robust_all_reduce(sent, rule)
    return {"row": row, "out": out, "dropped": rule.dropped, "kept": rule.kept}


def run_mismatch(rank: int, world: int):
    """Rank 0 passes another d, then another rule: a ValueError on every rank, and the group
    stays usable (no collective went astray)."""
    errors = []
    for tensor, rule in ((torch.ones(5 if rank == 0 else 4), ra.get("median")),
                         (torch.ones(4), ra.get("trimmed-mean", f=1 if rank == 0 else 0))):
        try:
            robust_all_reduce(tensor, rule)
            errors.append(None)
        except ValueError as exc:
            errors.append(str(exc))
    return {"errors": errors, "after": robust_all_reduce(torch.full((3,), float(rank)), ra.get("median"))}


def run_hang(rank: int, world: int):
    """The last rank stops answering; the others must get a CollectiveError within the timeout."""
    if rank == world - 1:
        time.sleep(6.0)
        return {}
    start = time.perf_counter()
    try:
        robust_all_reduce(torch.ones(4), ra.get("median"), timeout=datetime.timedelta(seconds=2))
        return {"error": None}
    except CollectiveError as exc:
        return {"error": str(exc), "seconds": time.perf_counter() - start}


def run_memory(rank: int, world: int):
    """The peak resident set during robust_all_reduce (one row of d floats per rank) minus the
    resident set before it, in units of d floats; the largest of 3 calls after a warm-up. Run
    with large blocks allocated by mmap (MALLOC_MMAP_THRESHOLD_), so that freed memory leaves
    the resident set."""
    d = 1 << 22
    x = torch.randn(d, generator=torch.Generator().manual_seed(rank))
    peaks = {}
    for name in ("mean", "median", "geometric-median", "nnm>mean"):
        rule = build_stages(name)
        robust_all_reduce(x, rule)  # warm-up
        peak = 0.0
        for _ in range(3):
            dist.barrier()
            before = _status("VmRSS")
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # resets the peak (VmHWM) to the current resident set
            y = robust_all_reduce(x, rule)
            peak = max(peak, (_status("VmHWM") - before) / (4 * d))
            del y
        peaks[name] = peak
    return peaks


def build_stages(spec: str):
    stages = [ra.get(name, f=0) for name in spec.split(">")]
    return stages[0] if len(stages) == 1 else ra.pipeline(*stages)


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(field + ":"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, phases: str, tmp: Path, timeout: float = 150, env: Optional[dict] = None):
    """Run the worker in ``world`` processes (``env``: added environment variables); return each
    rank's saved results."""
    env = dict(os.environ, **(env or {}), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(world),
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(tmp), phases],
                              env=dict(env, RANK=str(r)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(world)]
    try:
        logs = [p.communicate(timeout=timeout)[0].decode(errors="replace") for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} failed:\n{logs[r][-3000:]}"
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(world)]


def main() -> None:
    out_dir, phases = sys.argv[1], sys.argv[2].split(",")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {}
    for phase in phases:
        results[phase] = {"cases": run_cases, "some": lambda r, w: run_cases(r, w, SOME), "hooks": run_hooks,
                           "nanrank": run_nan_rank, "memory": run_memory, "mismatch": run_mismatch, "hang": run_hang}[phase](rank, world)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    if "hang" in phases:
        os._exit(0)  # the group is broken: skip the shutdown handshake
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
