"""Real loaders (MNIST, Fashion-MNIST, CIFAR-10) on small files generated here; never the network."""

import gzip
import hashlib
import io
import os
import pickle
import socket
import tarfile
import urllib.error

import numpy as np
import pytest
import torch

from robustagg import data
from robustagg.data import real

IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any socket connection in these tests is a bug: fail loudly instead of downloading."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def write_idx(path, array, compress=True):
    array = np.asarray(array)
    header = bytes([0, 0, IDX_CODES[array.dtype.type], array.ndim])
    header += np.asarray(array.shape, dtype=">u4").tobytes()
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    with open(path, "wb") as fh:
        fh.write(gzip.compress(raw) if compress else raw)


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def make_idx_set(directory, n_train=12, n_test=5, seed=0):
    """The four MNIST-format files with random images; returns the arrays and their checksums."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    for name, arr in arrays.items():
        write_idx(directory / name, arr)
    return arrays, {name: sha(directory / name) for name in arrays}


@pytest.mark.parametrize("dtype", list(IDX_CODES))
@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trips_every_type(tmp_path, dtype, compress):
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    write_idx(tmp_path / "a.idx", arr, compress)
    out = data.read_idx(tmp_path / "a.idx")
    assert out.dtype == np.dtype(dtype) and np.array_equal(out, arr)


def test_read_idx_rejects_corrupt_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((3, 4), np.uint8), compress=False)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match="header says"):
        data.read_idx(tmp_path / "short")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_loaders_parse_generated_files(tmp_path, name):
    arrays, sums = make_idx_set(tmp_path / name)
    ds = data.load(name, root=tmp_path, checksums=sums)
    assert (ds.train_size, ds.test_size, ds.input_shape, ds.num_classes) == (12, 5, (1, 28, 28), 10)
    assert ds.X_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte.gz"].astype(np.float32) / 255)[:, None]
    assert torch.equal(ds.X_train, expected)
    assert ds.y_test.tolist() == arrays["t10k-labels-idx1-ubyte.gz"].tolist()
    # verify=False parses without any digest
    assert data.load(name, root=tmp_path, verify=False).train_size == 12


def test_published_checksums_reject_other_files(tmp_path):
    _, sums = make_idx_set(tmp_path / "mnist")
    # default: the published digests and sizes, which generated files cannot match
    with pytest.raises(data.ChecksumError, match="expected 9912422"):
        data.load("mnist", root=tmp_path)
    wrong = dict(sums, **{"t10k-labels-idx1-ubyte.gz": "0" * 64})
    with pytest.raises(data.ChecksumError, match="SHA-256 .* expected 0000") as err:
        data.load("mnist", root=tmp_path, checksums=wrong)
    assert "t10k-labels-idx1-ubyte.gz" in str(err.value) and "download=True" in str(err.value)
    assert isinstance(err.value, ValueError)
    with pytest.raises(ValueError, match="no file"):
        data.load("mnist", root=tmp_path, checksums={"train.gz": "0" * 64})


def test_published_checksum_table_is_well_formed():
    assert set(data.OFFICIAL) == {"mnist", "fashion-mnist", "cifar10"}
    for files in data.OFFICIAL.values():
        for digest, size in files.values():
            assert len(digest) == 64 and int(digest, 16) >= 0 and size > 1000
    assert data.OFFICIAL["cifar10"]["cifar-10-python.tar.gz"][1] == 170498071


def test_missing_files_need_download_true(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        data.load("fashion-mnist", root=tmp_path)
    assert not (tmp_path / "fashion-mnist").exists() or not any((tmp_path / "fashion-mnist").iterdir())


def test_root_defaults_to_the_cache_and_env_overrides(monkeypatch, tmp_path):
    monkeypatch.delenv("ROBUSTAGG_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.default_root() == tmp_path / "xdg" / "robustagg" / "data"
    monkeypatch.setenv("ROBUSTAGG_DATA", str(tmp_path / "mine"))
    assert data.default_root() == tmp_path / "mine"
    make_idx_set(tmp_path / "mine" / "mnist")
    assert data.load("mnist", verify=False).train_size == 12


def test_download_from_a_mirror_verifies_and_moves_into_place(tmp_path):
    arrays, sums = make_idx_set(tmp_path / "mirror")
    cache = tmp_path / "cache"
    ds = data.load("mnist", root=cache, download=True, checksums=sums, mirrors=[(tmp_path / "mirror").as_uri()])
    assert ds.train_size == 12
    assert sorted(os.listdir(cache / "mnist")) == sorted(arrays)  # no temporary files left
    # a mirror serving a file with the wrong digest is refused, and nothing is kept
    bad = dict(sums, **{"train-images-idx3-ubyte.gz": "f" * 64})
    with pytest.raises(data.DownloadError, match="SHA-256"):
        data.load("mnist", root=tmp_path / "other", download=True, checksums=bad,
                  mirrors=[(tmp_path / "mirror").as_uri()])
    assert not (tmp_path / "other" / "mnist" / "train-images-idx3-ubyte.gz").exists()
    assert [f for f in os.listdir(tmp_path / "other" / "mnist") if f.endswith(".part")] == []


def test_download_falls_back_to_the_next_mirror(tmp_path):
    _, sums = make_idx_set(tmp_path / "good")
    mirrors = [(tmp_path / "empty").as_uri(), (tmp_path / "good").as_uri()]
    assert data.load("fashion-mnist", root=tmp_path / "c", download=True, checksums=sums, mirrors=mirrors).test_size == 5


def test_download_offline_fails_with_a_clear_error(tmp_path, monkeypatch):
    def unreachable(*args, **kwargs):
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(real.urllib.request, "urlopen", unreachable)
    with pytest.raises(data.DownloadError) as err:
        data.load("cifar10", root=tmp_path, download=True)
    msg = str(err.value)
    assert "cifar-10-python.tar.gz" in msg and "Network is unreachable" in msg and "offline" in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg
    assert os.listdir(tmp_path / "cifar10") == []
    assert isinstance(err.value, OSError)


# ---------------------------------------------------------------------------- CIFAR-10
def make_cifar_archive(path, n_per_batch=3, n_test=4, str_keys=False, protocol=2, seed=0):
    rng = np.random.default_rng(seed)
    batches = {}
    with tarfile.open(path, "w:gz") as tar:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for name in names:
            n = n_test if name == "test_batch" else n_per_batch
            images = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            labels = rng.integers(0, 10, n).tolist()
            batch = {"data": images, "labels": labels, "batch_label": name}
            if not str_keys:  # what a Python 2 pickle of the official files looks like
                batch = {k.encode(): v for k, v in batch.items()}
            raw = pickle.dumps(batch, protocol=protocol)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
            batches[name] = (images, labels)
    return batches, sha(path)


@pytest.mark.parametrize("str_keys,protocol", [(False, 2), (True, 4)])
def test_cifar10_parses_a_generated_archive(tmp_path, str_keys, protocol):
    (tmp_path / "cifar10").mkdir()
    batches, digest = make_cifar_archive(tmp_path / "cifar10" / "cifar-10-python.tar.gz", str_keys=str_keys,
                                         protocol=protocol)
    ds = data.load("cifar10", root=tmp_path, checksums={"cifar-10-python.tar.gz": digest})
    assert (ds.train_size, ds.test_size, ds.input_shape) == (15, 4, (3, 32, 32))
    images, labels = batches["data_batch_2"]  # rows 3..5: the batches keep their order
    assert torch.equal(ds.X_train[3:6], torch.from_numpy(images.reshape(3, 3, 32, 32).astype(np.float32) / 255))
    assert ds.y_train[3:6].tolist() == labels
    # channel layout: the first 1024 bytes of a row are the red plane, row-major
    row = batches["test_batch"][0][0].astype(np.float32) / np.float32(255)
    assert ds.X_test[0, 0, 0, 1].item() == row[1] and ds.X_test[0, 1, 0, 0].item() == row[1024]
    assert ds.X_test[0, 2, 31, 31].item() == row[3071]
    with pytest.raises(data.ChecksumError):
        data.load("cifar10", root=tmp_path)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar_unpickler_refuses_code(tmp_path):
    raw = pickle.dumps({b"data": _Exploit(), b"labels": [0]}, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        data.read_cifar_batch(io.BytesIO(raw))
    incomplete = tmp_path / "c.tar.gz"
    with tarfile.open(incomplete, "w:gz") as tar:
        raw = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [1]})
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    with pytest.raises(ValueError, match="lacks"):
        data.read_cifar10_archive(incomplete)
