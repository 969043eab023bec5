"""Datasets, partitions across workers and seeded mini-batches.

>>> from robustagg import data
>>> ds = data.load("mnist-5k")                          # offline: 4,000 train / 1,000 test
>>> parts = data.dirichlet(ds.y_train, n_workers=15, alpha=0.5, seed=1)
>>> loaders = data.worker_loaders(ds, parts, batch_size=32, seed=1)
>>> xb, yb = loaders[0].next()

Offline datasets: ``digits``, ``mnist-5k``, ``mnist1d``, ``synthetic``. Real datasets
(``mnist``, ``fashion-mnist``, ``cifar10``) are read from a cache directory and downloaded
only with ``download=True``; see ``docs/data.md``.
"""

from robustagg.data.base import DATASETS, Dataset, available, default_root, load, stratified_split
from robustagg.data import offline as _offline  # noqa: F401  (registers the offline datasets)
from robustagg.data.offline import MNIST1D_CONFIG
from robustagg.data.real import (
    MIRRORS,
    OFFICIAL,
    ChecksumError,
    DownloadError,
    fetch,
    read_cifar10_archive,
    read_cifar_batch,
    read_idx,
    sha256sum,
    verify_file,
)
from robustagg.data.partition import (
    PARTITIONS,
    available_partitions,
    dirichlet,
    iid,
    label_distribution,
    partition,
    shards,
)
from robustagg.data.batching import WorkerLoader, worker_loaders, worker_seed

__all__ = [
    "DATASETS", "Dataset", "available", "default_root", "load", "stratified_split", "MNIST1D_CONFIG",
    "MIRRORS", "OFFICIAL", "ChecksumError", "DownloadError", "fetch", "read_cifar10_archive",
    "read_cifar_batch", "read_idx", "sha256sum", "verify_file", "PARTITIONS", "available_partitions",
    "dirichlet", "iid", "label_distribution", "partition", "shards", "WorkerLoader", "worker_loaders",
    "worker_seed",
]
