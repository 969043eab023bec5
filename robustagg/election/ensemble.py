"""Train the K base models of a DPA / FA ensemble, resumably, and score the test set.

Each base model ``i`` trains from scratch on ``partition.indices(i)`` (FA: the
union of its ``d`` buckets) with its own seed, then scores the test set. As a
model finishes, its state dict and its ``(N, C)`` test scores are written to
``out_dir`` atomically (a temporary file, then ``os.replace``), scores last, so
a killed run resumes from the files it finds and loses at most the models that
were in flight.

Files in ``out_dir``: ``manifest.json`` (the run's configuration; a resume with
a different one is refused), ``model_00017.pt``, ``scores_00017.npy``, and at the
end ``scores.npy`` with the stacked ``(K, N, C)`` array.

References
----------
Levine & Feizi, "Deep Partition Aggregation", ICLR 2021 (one model per partition).

Wang, Levine & Feizi, "(Deterministic) Finite Aggregation", ICML 2022.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch

from robustagg._io import atomic_write
from robustagg._validation import check_float, check_int
from robustagg.election.partitions import Partition

__all__ = ["load_scores", "train_ensemble"]

_TEST_X: Optional[torch.Tensor] = None  # set once per worker process


def _tensor(x: Any, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if dtype is not None:
        return t.to(dtype)
    return t if t.is_floating_point() else t.float()


def model_seed(seed: int, i: int) -> int:
    """The seed of base model ``i``: independent streams from ``(seed, i)``."""
    return int(np.random.SeedSequence([seed, i]).generate_state(1, np.uint64)[0] >> 1)


def _train_one(i: int, X: torch.Tensor, y: torch.Tensor, test_X: torch.Tensor, model_fn: Callable,
               cfg: Dict[str, Any]) -> tuple:
    s = model_seed(cfg["seed"], i)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s)
        model = model_fn()
        gen = torch.Generator().manual_seed(s)
        opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                              weight_decay=cfg["weight_decay"])
        model.train()
        n, bs = X.shape[0], cfg["batch_size"]
        for _ in range(cfg["epochs"] if n else 0):
            perm = torch.randperm(n, generator=gen)
            for lo in range(0, n, bs):
                idx = perm[lo:lo + bs]
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            out = [model(test_X[lo:lo + 1024]).float() for lo in range(0, test_X.shape[0], 1024)]
    scores = torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, scores


def _save(out_dir: Path, i: int, state: dict, scores: np.ndarray) -> None:
    atomic_write(out_dir / f"model_{i:05d}.pt", lambda fh: torch.save(state, fh))
    atomic_write(out_dir / f"scores_{i:05d}.npy", lambda fh: np.save(fh, scores))


def _worker_init(test_X: torch.Tensor, threads: int) -> None:
    global _TEST_X
    _TEST_X = test_X
    torch.set_num_threads(threads)


def _worker(i, X, y, model_fn, cfg, out_dir):
    state, scores = _train_one(i, X, y, _TEST_X, model_fn, cfg)
    _save(Path(out_dir), i, state, scores)
    return i, scores


def _pool_context():
    """Fork server where available (workers fork from a process that only imported torch, which
    is both safe and fast), else spawn. Never plain fork: this process may hold torch threads."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", __name__])
        return ctx
    return multiprocessing.get_context("spawn")


def _fingerprint(partition: Partition, train_y: torch.Tensor, test_X: torch.Tensor) -> str:
    h = hashlib.sha256(np.ascontiguousarray(partition.buckets, np.int64).tobytes())
    h.update(repr((partition.k, partition.d, partition.shifts)).encode())
    h.update(np.ascontiguousarray(train_y.numpy()).tobytes())
    h.update(repr(tuple(test_X.shape)).encode())
    return h.hexdigest()


def load_scores(out_dir: Any, num_models: Optional[int] = None) -> np.ndarray:
    """Stack the per-model score files of ``out_dir`` into ``(K, N, C)``."""
    out_dir = Path(out_dir)
    if num_models is None:
        num_models = json.loads((out_dir / "manifest.json").read_text())["num_models"]
    missing = [i for i in range(num_models) if not (out_dir / f"scores_{i:05d}.npy").exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} base models have no scores yet (first: {missing[0]})")
    return np.stack([np.load(out_dir / f"scores_{i:05d}.npy") for i in range(num_models)])


def train_ensemble(train_X: Any, train_y: Any, test_X: Any, partition: Partition,
                   model_fn: Callable[[], torch.nn.Module], *, epochs: int, lr: float, batch_size: int, jobs: int = 1, seed: int, out_dir: Any,
                   momentum: float = 0.9, weight_decay: float = 0.0,
                   callback: Optional[Callable[[int, np.ndarray], None]] = None) -> np.ndarray:
    """Train one base model per partition entry and return their test scores.

    Model ``i`` is ``model_fn()`` built under ``torch.manual_seed(s_i)`` with
    :math:`s_i` from :func:`model_seed` ``(seed, i)``, trained with SGD
    (cross-entropy, ``momentum``, ``weight_decay``) for ``epochs`` passes over
    ``partition.indices(i)`` in batches of ``batch_size`` (order drawn from
    :math:`s_i`), then evaluated on ``test_X``. The caller's torch RNG state is
    left untouched.

    Parameters
    ----------
    train_X, train_y, test_X : arrays or tensors
        Inputs as the model takes them (converted to float32 if integer);
        ``train_y`` integer labels.
    partition : Partition
        From :func:`dpa_partition` or :func:`fa_partition` over ``train_X``.
    model_fn : callable () -> torch.nn.Module
        Must be picklable (a module-level function or ``functools.partial``)
        when ``jobs > 1``.
    jobs : int
        ``1`` trains in this process; ``> 1`` uses a pool of that many worker
        processes (fork server, else spawn; one torch thread each). As with any
        such pool, a script that calls this must guard its entry point with
        ``if __name__ == "__main__":``.
    out_dir : path
        Where models and scores are stored; an existing run there resumes.
    callback : callable (i, scores_i), optional
        Called in this process after model ``i`` is stored (progress bars); an
        exception it raises stops the run (the models in flight still finish
        and are stored).

    Returns
    -------
    numpy.ndarray, shape (K, N, C)
        ``scores[i]`` are base model ``i``'s test logits, as :func:`certify` takes them.
    """
    epochs = check_int(epochs, "epochs", minimum=0)
    lr = check_float(lr, "lr", minimum=0.0)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    jobs = check_int(jobs, "jobs", minimum=1)
    seed = check_int(seed, "seed")
    if not isinstance(partition, Partition):
        raise TypeError("partition must be a Partition (dpa_partition / fa_partition)")
    X, y, T = _tensor(train_X), _tensor(train_y, torch.int64), _tensor(test_X)
    if X.shape[0] != y.shape[0] or X.shape[0] != partition.buckets.shape[0]:
        raise ValueError(f"train_X ({X.shape[0]}), train_y ({y.shape[0]}) and the partition "
                         f"({partition.buckets.shape[0]}) must have the same number of samples")
    K = partition.num_models
    cfg = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
           "momentum": float(momentum), "weight_decay": float(weight_decay)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = dict(cfg, num_models=K, k=partition.k, d=partition.d, shifts=list(partition.shifts),
                    fingerprint=_fingerprint(partition, y, T))
    mpath = out_dir / "manifest.json"
    if mpath.exists():
        old = json.loads(mpath.read_text())
        if old != manifest:
            diff = sorted(key for key in set(old) | set(manifest) if old.get(key) != manifest.get(key))
            raise ValueError(f"{out_dir} holds a different ensemble run (differs in {diff}); "
                             "use another out_dir")
    else:
        atomic_write(mpath, lambda fh: fh.write(json.dumps(manifest, indent=1).encode()))

    pending = [i for i in range(K) if not (out_dir / f"scores_{i:05d}.npy").exists()]
    if jobs == 1 or len(pending) <= 1:
        for i in pending:
            idx = torch.as_tensor(partition.indices(i))
            state, scores = _train_one(i, X[idx], y[idx], T, model_fn, cfg)
            _save(out_dir, i, state, scores)
            if callback is not None:
                callback(i, scores)
    elif pending:
        ctx = _pool_context()
        with ProcessPoolExecutor(max_workers=min(jobs, len(pending)), mp_context=ctx,
                                 initializer=_worker_init, initargs=(T, 1)) as pool:
            todo = iter(pending)
            running = set()
            try:
                while True:
                    for i in todo:  # at most `jobs` tasks submitted: a kill loses only those
                        idx = torch.as_tensor(partition.indices(i))
                        running.add(pool.submit(_worker, i, X[idx], y[idx], model_fn, cfg, str(out_dir)))
                        if len(running) >= jobs:
                            break
                    if not running:
                        break
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    for fut in done:
                        i, scores = fut.result()
                        if callback is not None:
                            callback(i, scores)
            except BaseException:
                for fut in running:
                    fut.cancel()
                raise
    scores = load_scores(out_dir, K)
    atomic_write(out_dir / "scores.npy", lambda fh: np.save(fh, scores))
    return scores
