"""Atomic file writes and SHA-256 digests, shared by everything that writes results,
checkpoints or ensembles.

The data goes to a temporary file in the target's directory, is flushed and fsync'ed, and
``os.replace`` moves it onto the target: a reader (or a run resumed after a kill) sees the
old file or the new one, never a partial one. A failed write removes its temporary file; a
killed one leaves it behind, and :func:`remove_stale_temporaries` deletes it on the next start.
Files are created with the permissions the process's umask allows (as ``open`` would), not
the ``0600`` of :func:`tempfile.mkstemp`.

:func:`write_with_digest` also writes ``<file>.sha256`` (the ``sha256sum`` format, so
``sha256sum -c`` checks it), and :func:`read_verified` returns the file's bytes only when
they match it; anything else (a missing, empty, truncated or altered file) raises
:class:`CorruptFileError`, a ``ValueError`` whose one-line message names the file.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, List, Union

PathLike = Union[str, "os.PathLike[str]"]

#: suffix of the digest file written beside a file by :func:`write_with_digest`
DIGEST_SUFFIX = ".sha256"
_TEMPORARY = re.compile(r"^\..+\.tmp$")


class CorruptFileError(ValueError):
    """A file that is missing, unreadable or does not match its recorded SHA-256 digest."""


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(fh)`` on a binary file handle, then move the file onto ``path`` atomically
    (``write`` may stream, e.g. ``lambda fh: np.save(fh, array)`` or ``torch.save(obj, fh)``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temporaries(directory: PathLike) -> List[Path]:
    """Delete the temporary files (``.<name>.<random>.tmp``) a killed :func:`atomic_write` left
    in ``directory``; returns the paths removed. Call it only when no other process writes there."""
    directory = Path(directory)
    removed = []
    if directory.is_dir():
        for entry in directory.iterdir():
            if _TEMPORARY.match(entry.name) and entry.is_file():
                entry.unlink()
                removed.append(entry)
    return removed


# ---------------------------------------------------------------------- digests


class HashingWriter:
    """A write-only file wrapper that feeds every byte written to a SHA-256."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.sha = hashlib.sha256()

    def write(self, data: Any) -> int:
        self.sha.update(data)
        return self._fh.write(data)

    def flush(self) -> None:
        self._fh.flush()


def digest_path(path: PathLike) -> Path:
    """``<path>.sha256``."""
    path = Path(path)
    return path.with_name(path.name + DIGEST_SUFFIX)


def write_with_digest(path: PathLike, write: Callable[[BinaryIO], Any]) -> str:
    """:func:`atomic_write` ``path``, then write its SHA-256 to ``<path>.sha256``; returns the hex digest.

    The digest is computed from the bytes as they are written (no second read). A crash
    between the two writes leaves a file that fails :func:`read_verified`, never one that
    passes with the wrong content.
    """
    box = {}

    def hashing(fh: BinaryIO) -> None:
        wrapper = HashingWriter(fh)
        write(wrapper)  # type: ignore[arg-type]
        box["hex"] = wrapper.sha.hexdigest()

    atomic_write(path, hashing)
    atomic_write_text(digest_path(path), f"{box['hex']}  {Path(path).name}\n")
    return box["hex"]


def read_verified(path: PathLike) -> bytes:
    """The bytes of ``path`` when they match ``<path>.sha256``; otherwise :class:`CorruptFileError`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CorruptFileError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        recorded = digest_path(path).read_text(encoding="ascii").split()[0].lower()
    except (OSError, UnicodeDecodeError, IndexError):
        raise CorruptFileError(f"{path}: its digest file {digest_path(path).name} is missing or unreadable") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != recorded:
        what = "is empty" if not data else f"does not match its SHA-256 ({len(data)} bytes; truncated or altered)"
        raise CorruptFileError(f"{path} {what}")
    return data
