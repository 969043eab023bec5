"""Real MNIST, Fashion-MNIST and CIFAR-10: checksummed downloads and numpy parsers (no torchvision).

Nothing is downloaded unless ``download=True``. Files live in ``root/<dataset>/`` (``root``
defaults to :func:`robustagg.data.default_root`, ``~/.cache/robustagg/data``) under their
official names, so files fetched by hand can be dropped there. Every file is checked
against its published SHA-256 before it is parsed, on each load.

Tests (and anyone with a private mirror) pass ``checksums={filename: sha256}`` to replace
the published digests, ``verify=False`` to skip the check, and ``mirrors=[base_url, ...]``
(``file://`` URLs work) to download from elsewhere.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from robustagg._validation import check_float
from robustagg.data.base import DATASETS, Dataset, default_root, from_arrays


class ChecksumError(ValueError):
    """A file's SHA-256 (or size) is not the expected one."""


class DownloadError(OSError):
    """No mirror delivered a file (offline, unreachable, or every copy failed its checksum)."""


# Published SHA-256 digests and sizes (bytes) of the official files.
# MNIST: TensorFlow Datasets, tensorflow_datasets/url_checksums/mnist.txt (the files served at
#   storage.googleapis.com/cvdf-datasets/mnist/, byte-identical to yann.lecun.com/exdb/mnist/).
# Fashion-MNIST: TensorFlow Datasets, tensorflow_datasets/url_checksums/fashion_mnist.txt.
# CIFAR-10 (python version): TensorFlow Datasets, tensorflow_datasets/url_checksums/cifar10.csv,
#   the same digest as Keras' keras/datasets/cifar10.py (file_hash of cifar-10-python.tar.gz).
OFFICIAL: Dict[str, Dict[str, Tuple[str, int]]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": ("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422),
        "train-labels-idx1-ubyte.gz": ("3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881),
        "t10k-images-idx3-ubyte.gz": ("8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877),
        "t10k-labels-idx1-ubyte.gz": ("f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": ("3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", 26421880),
        "train-labels-idx1-ubyte.gz": ("a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", 29515),
        "t10k-images-idx3-ubyte.gz": ("346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", 4422102),
        "t10k-labels-idx1-ubyte.gz": ("67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", 5148),
    },
    "cifar10": {
        "cifar-10-python.tar.gz": ("6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", 170498071),
    },
}

MIRRORS: Dict[str, Tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
}


# ---------------------------------------------------------------------------- checksums, downloads
def sha256sum(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path: Path, sha256: str, size: Optional[int] = None) -> None:
    """Raise :class:`ChecksumError` unless ``path`` has the expected size and SHA-256."""
    path = Path(path)
    if size is not None and path.stat().st_size != size:
        raise ChecksumError(
            f"{path} has {path.stat().st_size} bytes, expected {size}: the file is truncated or not the "
            f"official one. Delete it and load again with download=True."
        )
    digest = sha256sum(path)
    if digest != sha256.lower():
        raise ChecksumError(
            f"{path} has SHA-256 {digest}, expected {sha256.lower()}: the file is corrupt or not the official "
            f"one. Delete it and load again with download=True (or pass checksums=/verify=False for your own files)."
        )


def fetch(
    filename: str,
    mirrors: Sequence[str],
    directory: Path,
    sha256: Optional[str],
    size: Optional[int] = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``filename`` from the first mirror that serves it with the right checksum.

    The file is streamed into a temporary file beside its destination, hashed on the way,
    and moved into place (atomically) only when its SHA-256 matches ``sha256`` (``None``
    skips the check). Raises :class:`DownloadError` listing every mirror's failure when
    none works, e.g. when the machine is offline.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dest = directory / filename
    errors = []
    for base in mirrors:
        url = base if base.endswith(filename) else base.rstrip("/") + "/" + filename
        tmp = ""
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "robustagg"})
            fd, tmp = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=directory)
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as resp:
                for block in iter(lambda: resp.read(1 << 20), b""):
                    h.update(block)
                    out.write(block)
            got = os.path.getsize(tmp)
            if size is not None and got != size:
                errors.append(f"{url}: got {got} bytes, expected {size}")
            elif sha256 is not None and h.hexdigest() != sha256.lower():
                errors.append(f"{url}: SHA-256 {h.hexdigest()} != expected {sha256.lower()}")
            else:
                os.replace(tmp, dest)
                return dest
        except (urllib.error.URLError, OSError, ValueError) as exc:  # ValueError: malformed URL
            reason = getattr(exc, "reason", None) or exc
            errors.append(f"{url}: {type(exc).__name__}: {reason}")
        finally:
            if tmp and os.path.exists(tmp):
                os.remove(tmp)
    raise DownloadError(
        f"could not download {filename}; tried:\n  " + "\n  ".join(errors)
        + f"\nAre you offline? Check the network, or fetch the file yourself and place it at {dest}."
    )


def _ensure_files(
    name: str,
    root: Optional[os.PathLike],
    download: bool,
    checksums: Optional[Mapping[str, str]],
    verify: bool,
    mirrors: Optional[Sequence[str]],
    timeout: float,
) -> Dict[str, Path]:
    """Paths of ``name``'s files in ``root/name``, downloaded and/or verified as asked."""
    directory = Path(root).expanduser() if root is not None else default_root()
    directory = directory / name
    official = OFFICIAL[name]
    checksums = dict(checksums or {})
    unknown = set(checksums) - set(official)
    if unknown:
        raise ValueError(f"{name} has no file(s) {sorted(unknown)}; its files: {', '.join(official)}")
    mirrors = tuple(mirrors) if mirrors is not None else MIRRORS[name]
    timeout = check_float(timeout, "timeout", minimum=0.0, strict_min=True)
    paths = {}
    for filename, (digest, size) in official.items():
        if filename in checksums:  # a caller-supplied digest: the official size no longer applies
            digest, size = checksums[filename], None
        expected = (digest, size) if verify else (None, None)
        path = directory / filename
        if not path.exists():
            if not download:
                total = sum(s for _, s in official.values()) / 1e6
                raise FileNotFoundError(
                    f"{name}: {path} not found. Pass download=True to fetch the official files "
                    f"({total:.0f} MB) from {mirrors[0] if mirrors else '(no mirror)'}, or place them in {directory}."
                )
            fetch(filename, mirrors, directory, *expected, timeout=timeout)
        elif verify:
            verify_file(path, digest, size)
        paths[filename] = path
    return paths


# ---------------------------------------------------------------------------- parsers
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: os.PathLike) -> np.ndarray:
    """Parse an IDX file (gzip-compressed or not), the MNIST / Fashion-MNIST format.

    Layout: two zero bytes, a type byte (``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16,
    ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64), the number of dimensions, then each
    dimension as a big-endian uint32, then the data in C order, big-endian.
    """
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (magic bytes {raw[:4]!r})")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise ValueError(f"{path}: header says shape {shape} ({expected} bytes), file holds {len(raw) - offset}")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, lists, dicts, strings and numbers, and nothing else.

    Pickles can run arbitrary code; the CIFAR batches need only these globals.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("_codecs", "encode"): lambda: __import__("codecs").encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from a CIFAR batch")
        return self._ALLOWED[(module, name)]()


def read_cifar_batch(fh: Any) -> Tuple[np.ndarray, np.ndarray]:
    """Parse one CIFAR-10 python batch: ``(images uint8 (n, 3, 32, 32), labels int64 (n,))``.

    A batch is a pickled dict with ``data`` (``n x 3072`` uint8, rows are the red, green then
    blue 32x32 planes in row-major order) and ``labels``. Unpickling admits numpy arrays
    and plain containers only.
    """
    batch = _CifarUnpickler(fh, encoding="bytes").load()
    if not isinstance(batch, dict):
        raise ValueError(f"a CIFAR batch is a dict, got {type(batch).__name__}")
    batch = {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise ValueError(f"bad CIFAR batch: data {data.shape}, labels {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


_CIFAR_TRAIN = tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "cifar-10-batches-py/test_batch"


def read_cifar10_archive(path: os.PathLike) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(X_train, y_train, X_test, y_test)`` from ``cifar-10-python.tar.gz``, read in place."""
    batches: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:  # one sequential pass over the compressed stream
            if member.name in _CIFAR_TRAIN or member.name == _CIFAR_TEST:
                batches[member.name] = read_cifar_batch(io.BytesIO(tar.extractfile(member).read()))
    missing = [m for m in (*_CIFAR_TRAIN, _CIFAR_TEST) if m not in batches]
    if missing:
        raise ValueError(f"{path} lacks {missing}")
    Xtr = np.concatenate([batches[m][0] for m in _CIFAR_TRAIN])
    ytr = np.concatenate([batches[m][1] for m in _CIFAR_TRAIN])
    return Xtr, ytr, batches[_CIFAR_TEST][0], batches[_CIFAR_TEST][1]


# ---------------------------------------------------------------------------- loaders
def _idx_dataset(name: str, paths: Dict[str, Path]) -> Dataset:
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        X = read_idx(paths[f"{prefix}-images-idx3-ubyte.gz"])
        y = read_idx(paths[f"{prefix}-labels-idx1-ubyte.gz"])
        if X.ndim != 3 or y.ndim != 1 or len(X) != len(y):
            raise ValueError(f"{name} {split}: images {X.shape} and labels {y.shape} do not match")
        parts[split] = (X, y)
    n_train = len(parts["train"][1])
    X = np.concatenate([parts["train"][0], parts["test"][0]]).astype(np.float32)[:, None]
    X /= 255.0
    y = np.concatenate([parts["train"][1], parts["test"][1]])
    info = {"source": str(next(iter(paths.values())).parent)}
    return from_arrays(name, X, y, slice(0, n_train), slice(n_train, None), num_classes=10, info=info)


_LOADER_DOC = """

    Parameters
    ----------
    root : path, optional
        Cache directory; files live in ``root/{name}/``. Default :func:`default_root`
        (``~/.cache/robustagg/data``, or ``$ROBUSTAGG_DATA``).
    download : bool
        Fetch missing files from the official mirrors (default False: a missing file is a
        ``FileNotFoundError`` that says how to get it). Offline, raises :class:`DownloadError`.
    checksums : mapping, optional
        ``{filename: sha256}`` replacing the published digests (for private copies/tests).
    verify : bool
        Check every file's SHA-256 before parsing (default True); a mismatch raises
        :class:`ChecksumError`.
    mirrors : sequence of str, optional
        Base URLs to download from instead of the official ones (``file://`` works).
    timeout : float
        Seconds before a stalled connection is abandoned.
    """


@DATASETS.register("mnist")
def mnist(root=None, download: bool = False, checksums=None, verify: bool = True, mirrors=None, timeout: float = 60.0) -> Dataset:
    paths = _ensure_files("mnist", root, download, checksums, verify, mirrors, timeout)
    return _idx_dataset("mnist", paths)


@DATASETS.register("fashion-mnist", "fmnist")
def fashion_mnist(root=None, download: bool = False, checksums=None, verify: bool = True, mirrors=None, timeout: float = 60.0) -> Dataset:
    paths = _ensure_files("fashion-mnist", root, download, checksums, verify, mirrors, timeout)
    return _idx_dataset("fashion-mnist", paths)


@DATASETS.register("cifar10", "cifar-10")
def cifar10(root=None, download: bool = False, checksums=None, verify: bool = True, mirrors=None, timeout: float = 60.0) -> Dataset:
    paths = _ensure_files("cifar10", root, download, checksums, verify, mirrors, timeout)
    path = paths["cifar-10-python.tar.gz"]
    Xtr, ytr, Xte, yte = read_cifar10_archive(path)
    X = np.concatenate([Xtr, Xte]).astype(np.float32)
    X /= 255.0
    y = np.concatenate([ytr, yte])
    n = len(ytr)
    return from_arrays("cifar10", X, y, slice(0, n), slice(n, None), num_classes=10, info={"source": str(path)})


mnist.__doc__ = (
    """Full MNIST: 60,000 training and 10,000 test images, 28x28, scaled to [0, 1], shape (1, 28, 28).

    Parsed with numpy from the four official IDX files (``train-images-idx3-ubyte.gz``, ...).

    References
    ----------
    LeCun, Y., Bottou, L., Bengio, Y. and Haffner, P. "Gradient-based learning applied to
    document recognition", Proc. IEEE 86(11), 2278-2324, 1998."""
    + _LOADER_DOC.replace("{name}", "mnist")
)
fashion_mnist.__doc__ = (
    """Fashion-MNIST: 60,000 training and 10,000 test 28x28 images of clothing, 10 classes, in [0, 1].

    Same IDX file names and layout as MNIST; shape (1, 28, 28).

    References
    ----------
    Xiao, H., Rasul, K. and Vollgraf, R. "Fashion-MNIST: a Novel Image Dataset for Benchmarking
    Machine Learning Algorithms", arXiv:1708.07747, 2017."""
    + _LOADER_DOC.replace("{name}", "fashion-mnist")
)
cifar10.__doc__ = (
    """CIFAR-10: 50,000 training and 10,000 test 32x32 colour images, 10 classes, shape (3, 32, 32), in [0, 1].

    Read from ``cifar-10-python.tar.gz`` without extracting it (batches ``data_batch_1`` ..
    ``data_batch_5`` in order, then ``test_batch``); the pickles are loaded with an
    unpickler that admits numpy arrays and plain containers only.

    References
    ----------
    Krizhevsky, A. "Learning Multiple Layers of Features from Tiny Images", technical report,
    University of Toronto, 2009."""
    + _LOADER_DOC.replace("{name}", "cifar10")
)
