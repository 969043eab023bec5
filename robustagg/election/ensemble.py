"""Train the K base models of a DPA / FA ensemble, resumably, and score the test set.

Each base model ``i`` trains from scratch on ``partition.indices(i)`` (FA: the
union of its ``d`` buckets) with its own seed, then scores the test set. As a
model finishes, its state dict and its ``(N, C)`` test scores are written to
``out_dir`` atomically (a temporary file, then ``os.replace``), scores last, so
a killed run resumes from the files it finds and loses at most the models that
were in flight.

Files in ``out_dir``: ``manifest.json`` (everything that determines a base
model: training settings, the partition, a fingerprint of the data, the
model's architecture and the caller's ``settings``; a resume with a different
one is refused), ``model_00017.pt``, ``scores_00017.npy``, at the end
``scores.npy`` with the stacked ``(K, N, C)`` array, and ``SHA256SUMS``, the
digest of every file written (:mod:`robustagg.election._store`): a score file
whose bytes changed is refused with an error naming it.

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
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np
import torch

from robustagg._io import atomic_write
from robustagg._validation import check_float, check_int
from robustagg.election._progress import ModelProgress
from robustagg.election._store import (
    compact_digests, load_npy, read_digests, read_verified, record_digests, write_hashed,
)
from robustagg.election.partitions import Partition

__all__ = ["load_scores", "read_manifest", "train_ensemble"]

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


def _name(i: int) -> str:
    return f"scores_{i:05d}.npy"


def _save(out_dir: Path, i: int, state: dict, scores: np.ndarray) -> Dict[str, str]:
    """Write model ``i``'s state dict, then its scores; their digests (recorded by the caller)."""
    model = f"model_{i:05d}.pt"
    return {model: write_hashed(out_dir / model, lambda fh: torch.save(state, fh)),
            _name(i): write_hashed(out_dir / _name(i), lambda fh: np.save(fh, scores))}


def _worker_init(test_X: torch.Tensor, threads: int) -> None:
    global _TEST_X
    _TEST_X = test_X
    torch.set_num_threads(threads)


def _worker(i, X, y, model_fn, cfg, out_dir):
    state, scores = _train_one(i, X, y, _TEST_X, model_fn, cfg)
    return i, scores, _save(Path(out_dir), i, state, scores)


def _pool_context():
    """Fork server where available (workers fork from a process that only imported torch, which
    is both safe and fast), else spawn. Never plain fork: this process may hold torch threads."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", __name__])
        return ctx
    return multiprocessing.get_context("spawn")


def _fingerprint(partition: Partition, train_X: torch.Tensor, train_y: torch.Tensor, test_X: torch.Tensor) -> str:
    """SHA-256 of the partition and of the training and test data (shapes, dtypes and values)."""
    h = hashlib.sha256(np.ascontiguousarray(partition.buckets, np.int64).tobytes())
    h.update(repr((partition.k, partition.d, partition.shifts)).encode())
    for t in (train_X, train_y, test_X):
        h.update(repr((tuple(t.shape), str(t.dtype))).encode())
        h.update(np.ascontiguousarray(t.numpy()).tobytes())
    return h.hexdigest()


def _architecture(model_fn: Callable[[], torch.nn.Module]) -> str:
    """``repr`` of a freshly built model (layers and their sizes); the caller's RNG is untouched."""
    with torch.random.fork_rng(devices=[]):
        return repr(model_fn())


def _differences(old: Any, new: Any, prefix: str = "") -> List[str]:
    """Dotted keys where two JSON documents differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


def read_manifest(out_dir: Any) -> Dict[str, Any]:
    """``out_dir/manifest.json`` as a dict (``FileNotFoundError`` if missing, ``ValueError`` naming it if broken)."""
    path = Path(out_dir) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: not an ensemble directory of train_ensemble")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("num_models"), int):
        raise ValueError(f"{path} does not describe an ensemble (no integer 'num_models')")
    return manifest


def _load_verified(out_dir: Path, i: int, digests: Mapping[str, str]) -> np.ndarray:
    path = out_dir / _name(i)
    scores = load_npy(path, read_verified(path, digests))
    if scores.ndim != 2:
        raise ValueError(f"{path} holds an array of shape {scores.shape}, not (test points, classes)")
    return scores


def load_scores(out_dir: Any, num_models: Optional[int] = None) -> np.ndarray:
    """Stack the per-model score files of ``out_dir`` into ``(K, N, C)``, each checked against its digest.

    Raises
    ------
    FileNotFoundError
        A base model has no score file yet.
    ValueError
        A score file has no recorded digest or its bytes changed since it was
        written (the message names the file).
    """
    out_dir = Path(out_dir)
    if num_models is None:
        num_models = read_manifest(out_dir)["num_models"]
    missing = [i for i in range(num_models) if not (out_dir / _name(i)).exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} base models have no scores yet (first: {missing[0]})")
    digests = read_digests(out_dir)
    return _stack(out_dir, [_load_verified(out_dir, i, digests) for i in range(num_models)])


def _stack(out_dir: Path, scores: List[np.ndarray]) -> np.ndarray:
    shapes = sorted({s.shape for s in scores})
    if len(shapes) > 1:
        raise ValueError(f"the score files in {out_dir} have different shapes {shapes}")
    return np.stack(scores)


def train_ensemble(train_X: Any, train_y: Any, test_X: Any, partition: Partition,
                   model_fn: Callable[[], torch.nn.Module], *, epochs: int, lr: float, batch_size: int, jobs: int = 1, seed: int, out_dir: Any,
                   momentum: float = 0.9, weight_decay: float = 0.0,
                   callback: Optional[Callable[[int, np.ndarray], None]] = None,
                   settings: Optional[Mapping[str, Any]] = None, progress: bool = True,
                   desc: str = "base models") -> np.ndarray:
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
        ``1`` trains in this process, on one torch thread (restored after);
        ``> 1`` uses a pool of that many worker processes (fork server, else
        spawn; one torch thread each). Base models are small: parallelism
        comes from ``jobs``, not from torch threads. As with any
        such pool, a script that calls this must guard its entry point with
        ``if __name__ == "__main__":``.
    out_dir : path
        Where models and scores are stored; an existing run there resumes if
        everything that determines a base model is the same (the training
        settings, the partition, the data, the architecture ``repr(model_fn())``
        and ``settings``), and is refused with a ``ValueError`` naming what
        differs otherwise. Stored score files are checked against their
        recorded SHA-256: one whose bytes changed is an error naming it.
    callback : callable (i, scores_i), optional
        Called in this process after model ``i`` is stored; an exception it
        raises stops the run (the models in flight still finish and are stored).
    settings : mapping, optional
        Anything else that determines the base models (JSON values: e.g. the
        model's and the data set's names and parameters), recorded in the
        manifest and compared on resume.
    progress : bool
        Show progress on stderr: a bar on a terminal, otherwise a line at every
        tenth of the models (:class:`~robustagg.election._progress.ModelProgress`).
    desc : str
        The progress label.

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
    try:
        extra = json.loads(json.dumps(dict(settings or {})))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"settings must hold JSON values only ({exc})") from None
    manifest = dict(cfg, num_models=K, k=partition.k, d=partition.d, shifts=list(partition.shifts),
                    fingerprint=_fingerprint(partition, X, y, T), architecture=_architecture(model_fn),
                    settings=extra)
    mpath = out_dir / "manifest.json"
    if mpath.exists():
        old = read_manifest(out_dir)
        if old != manifest:
            raise ValueError(f"{out_dir} holds the base models of a different ensemble (differs in "
                             f"{_differences(old, manifest)}); use another output directory")
    else:
        atomic_write(mpath, lambda fh: fh.write(json.dumps(manifest, indent=1).encode()))

    digests = read_digests(out_dir)
    have: Dict[int, np.ndarray] = {}
    for i in range(K):  # a file without a recorded digest was cut off by a kill: train it again
        if (out_dir / _name(i)).exists() and _name(i) in digests:
            have[i] = _load_verified(out_dir, i, digests)
    pending = [i for i in range(K) if i not in have]
    bar = ModelProgress(K, K - len(pending), desc, enabled=progress)

    def stored(i: int, scores: np.ndarray, written: Dict[str, str]) -> None:
        record_digests(out_dir, written)
        have[i] = scores
        bar.update()
        if callback is not None:
            callback(i, scores)

    try:
        _train_pending(pending, partition, X, y, T, model_fn, cfg, jobs, out_dir, stored)
    finally:
        bar.close()
    scores = _stack(out_dir, [have[i] for i in range(K)])
    record_digests(out_dir, {"scores.npy": write_hashed(out_dir / "scores.npy", lambda fh: np.save(fh, scores))})
    compact_digests(out_dir)
    return scores


def _train_pending(pending: List[int], partition: Partition, X: torch.Tensor, y: torch.Tensor, T: torch.Tensor,
                   model_fn: Callable, cfg: Dict[str, Any], jobs: int, out_dir: Path,
                   stored: Callable[[int, np.ndarray, Dict[str, str]], None]) -> None:
    """Train the ``pending`` models, in this process or a pool; ``stored(i, scores, digests)`` after each."""
    if jobs == 1 or len(pending) <= 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as a pool worker: small models lose much more to busy cores than they gain
        try:
            for i in pending:
                idx = torch.as_tensor(partition.indices(i))
                state, scores = _train_one(i, X[idx], y[idx], T, model_fn, cfg)
                stored(i, scores, _save(out_dir, i, state, scores))
        finally:
            torch.set_num_threads(threads)
    elif pending:
        ctx = _pool_context()
        with ProcessPoolExecutor(max_workers=min(jobs, len(pending)), mp_context=ctx,
                                 initializer=_worker_init, initargs=(T, 1)) as pool:
            todo = iter(pending)
            running: set = set()
            done: set = set()
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
                    while done:
                        stored(*done.pop().result())
            except BaseException:
                # models that finish anyway (done, or in flight) are stored: record their digests
                for fut in running | done:
                    if not fut.cancel():
                        try:
                            record_digests(out_dir, fut.result()[2])
                        except Exception:  # noqa: BLE001 - a failed model is simply trained again
                            pass
                raise
