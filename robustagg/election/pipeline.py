"""One election run end to end: dataset -> partition -> base models -> certificates.

:func:`run_election` takes a configuration checked by
:func:`~robustagg.election.config.load_config` and resumes whatever an earlier
run in the same output directory left: the base models (per-model files of
:func:`~robustagg.election.train_ensemble`) and the certificates
(``certs.npz``, reused when the scores, labels and FA layout they were computed
from are unchanged).

Files in the output directory, besides the ensemble's: ``config.json`` (the
checked configuration, with the output directory actually used as ``out``;
written only once all the base models it describes are there), ``labels.npy``
(test labels), ``certs.npz`` (one int64 array per method and a
``fingerprint``; a cache: recomputed when it does not match or cannot be read),
``certified_accuracy.csv``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from robustagg._validation import check_int
from robustagg.election.certificates import certified_accuracy, certify
from robustagg.election.config import load_config
from robustagg._io import atomic_write
from robustagg.election.ensemble import train_ensemble
from robustagg.election.partitions import Partition, dpa_partition, fa_partition, pixel_sum_hash, sha256_hash

__all__ = ["ElectionResult", "load_split", "make_partition", "run_election"]

HASHES = {"pixel-sum": pixel_sum_hash, "sha256": sha256_hash}


@dataclass
class ElectionResult:
    """What :func:`run_election` returns.

    Attributes
    ----------
    config : dict
        The checked configuration, ``out`` being the directory actually used.
    partition : Partition
    scores : numpy.ndarray, shape (K, N, C)
    labels : numpy.ndarray, shape (N,)
    certs : dict of str -> numpy.ndarray
        Certificates per method (``-1`` for wrong predictions).
    radii : list of int
    accuracy : dict of str -> numpy.ndarray
        Certified accuracy per method at each radius.
    trained : int
        Base models trained by this call (the others were found on disk).
    train_seconds, certify_seconds : float
        Wall-clock time of this call's training and certification.
    """

    config: Dict[str, Any]
    partition: Partition
    scores: np.ndarray
    labels: np.ndarray
    certs: Dict[str, np.ndarray]
    radii: List[int]
    accuracy: Dict[str, np.ndarray] = field(default_factory=dict)
    trained: int = 0
    train_seconds: float = 0.0
    certify_seconds: float = 0.0


def load_split(data_cfg: Mapping[str, Any]) -> Tuple[Any, Any, Any, np.ndarray, Any]:
    """Load ``data_cfg["dataset"]`` and keep the first ``test_points`` test points.

    Returns
    -------
    tuple
        ``(X_train, y_train, X_test, y_test, dataset)``; ``y_test`` as numpy int64.
    """
    from robustagg import data

    ds = data.load(data_cfg["dataset"], **data_cfg.get("params", {}))
    if ds.task != "classification":
        raise ValueError(f"dataset {ds.name!r} is a {ds.task} task; certificates need classification")
    n = ds.X_test.shape[0] if data_cfg.get("test_points") is None else data_cfg["test_points"]
    if n > ds.X_test.shape[0]:
        raise ValueError(f"data.test_points = {n} but {ds.name!r} has {ds.X_test.shape[0]} test points")
    return ds.X_train, ds.y_train, ds.X_test[:n], ds.y_test[:n].numpy().astype(np.int64), ds


def make_partition(train_X: Any, part_cfg: Mapping[str, Any]) -> Partition:
    """The DPA or FA partition of ``train_X`` that ``part_cfg`` describes (``hash``, ``k``, ``d``, ``seed``)."""
    keys = HASHES[part_cfg["hash"]](train_X)
    if part_cfg["method"] == "dpa":
        return dpa_partition(keys, part_cfg["k"])
    return fa_partition(keys, part_cfg["k"], part_cfg["d"], part_cfg.get("seed"))


def _fingerprint(scores: np.ndarray, labels: np.ndarray, partition: Partition) -> str:
    h = hashlib.sha256(np.ascontiguousarray(scores).tobytes())
    h.update(np.ascontiguousarray(labels, np.int64).tobytes())
    h.update(repr((scores.shape, partition.k, partition.d, tuple(partition.shifts))).encode())
    return h.hexdigest()


def _certify_cached(path: Path, scores: np.ndarray, labels: np.ndarray, partition: Partition,
                    methods: List[str]) -> Dict[str, np.ndarray]:
    fp = _fingerprint(scores, labels, partition)
    cached: Dict[str, np.ndarray] = {}
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as f:
                if "fingerprint" in f.files and str(f["fingerprint"]) == fp:
                    cached = {m: f[m] for m in f.files if m != "fingerprint"}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
            cached = {}  # a damaged cache is computed again
    todo = [m for m in methods if m not in cached]
    for m in todo:
        fa = m.startswith("fa")
        cached[m] = certify(scores, labels, m, k=partition.k if fa else None, d=partition.d if fa else None,
                            shifts=partition.shifts if fa else None)
    if todo:
        atomic_write(path, lambda fh: np.savez(fh, fingerprint=np.array(fp), **cached))
    return {m: cached[m] for m in methods}


def write_accuracy_csv(path: Path, radii: List[int], accuracy: Mapping[str, np.ndarray]) -> None:
    """``radius,<method>,...`` rows of certified accuracy, written atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["radius", *accuracy])
    for i, r in enumerate(radii):
        w.writerow([r, *(f"{acc[i]:.4f}" for acc in accuracy.values())])
    atomic_write(path, lambda fh: fh.write(buf.getvalue().encode()))


def run_election(config: Any, *, out_dir: Any = None, jobs: Optional[int] = None,
                 progress: bool = False, callback: Optional[Callable[[int, np.ndarray], None]] = None
                 ) -> ElectionResult:
    """Train (or resume) the ensemble a configuration describes and certify its test points.

    Parameters
    ----------
    config : path or mapping
        A TOML file or a dict, checked by :func:`~robustagg.election.config.load_config`.
    out_dir : path, optional
        Overrides ``config["out"]``.
    jobs : int, optional
        Overrides ``config["train"]["jobs"]`` (worker processes; see
        :func:`~robustagg.election.train_ensemble`).
    progress : bool
        Show progress over the base models on stderr: a ``tqdm`` bar on a
        terminal, else a line at every tenth of the models.
    callback : callable (i, scores_i), optional
        Called after each newly trained base model.

    Returns
    -------
    ElectionResult
    """
    from robustagg import models

    cfg = load_config(config)
    out = Path(cfg["out"] if out_dir is None else out_dir)
    cfg["out"] = str(out)  # config.json records where the run actually is
    tr = cfg["train"]
    jobs = tr["jobs"] if jobs is None else check_int(jobs, "jobs", minimum=1)
    X, y, T, labels, ds = load_split(cfg["data"])
    partition = make_partition(X, cfg["partition"])
    make_model = models.model_fn(cfg["model"]["name"], input_shape=ds.input_shape,
                                 num_classes=ds.num_classes, **cfg["model"]["params"])
    trained = []

    def step(i: int, s: np.ndarray) -> None:
        trained.append(i)
        if callback is not None:
            callback(i, s)

    t0 = time.perf_counter()
    # every setting that changes a base model is in the ensemble's manifest: a different one is refused
    settings = {key: cfg[key] for key in ("data", "partition", "model")}
    scores = train_ensemble(X, y, T, partition, make_model, epochs=tr["epochs"], lr=tr["lr"],
                            batch_size=tr["batch_size"], jobs=jobs, seed=tr["seed"], out_dir=out,
                            momentum=tr["momentum"], weight_decay=tr["weight_decay"], callback=step,
                            settings=settings, progress=progress, desc=f"{cfg['partition']['method']} base models")
    t1 = time.perf_counter()
    atomic_write(out / "config.json", lambda fh: fh.write(json.dumps(cfg, indent=1).encode()))
    atomic_write(out / "labels.npy", lambda fh: np.save(fh, labels))
    certs = _certify_cached(out / "certs.npz", scores, labels, partition, cfg["certify"]["methods"])
    radii = list(cfg["certify"]["radii"])
    accuracy = {m: certified_accuracy(c, radii) for m, c in certs.items()}
    write_accuracy_csv(out / "certified_accuracy.csv", radii, accuracy)
    return ElectionResult(cfg, partition, scores, labels, certs, radii, accuracy, trained=len(trained),
                          train_seconds=t1 - t0, certify_seconds=time.perf_counter() - t1)
