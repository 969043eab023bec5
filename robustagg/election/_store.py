"""Files of an ensemble directory that are written with a digest and verified when read.

Every file :func:`write_hashed` writes (atomically, through :mod:`robustagg._io`) has
its SHA-256 appended to ``SHA256SUMS`` in the same directory, in the format of
``sha256sum`` (``<hex>  <name>``, one line per file; a later line for the same
name wins), so ``sha256sum -c SHA256SUMS`` checks a directory by hand too.
:func:`read_verified` refuses a file whose bytes no longer have the recorded
digest (a flipped bit, a truncated or replaced file) with a one-line
``ValueError`` naming the file, instead of letting a corrupted score file be
certified.

A line is appended only after its file is in place, so a run killed in between
leaves a file without a recorded digest: the trainer treats it as missing
(trains that model again), a reader refuses it.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Mapping

import numpy as np

from robustagg._io import HashingWriter, atomic_write

__all__ = ["DIGESTS", "compact_digests", "load_npy", "read_digests", "read_verified", "record_digests",
           "write_hashed"]

#: Name of the digest file in an ensemble directory.
DIGESTS = "SHA256SUMS"
_LINE = re.compile(r"^([0-9a-f]{64}) [ *](\S+)$")


def write_hashed(path: Path, write: Callable[[BinaryIO], Any]) -> str:
    """Write ``path`` atomically with ``write(fh)`` (which may stream); return its SHA-256 (hex).

    The digest is not recorded: pass it to :func:`record_digests` once the file is in place.
    """
    out: Dict[str, str] = {}

    def hashed(fh: BinaryIO) -> None:
        w = HashingWriter(fh)
        write(w)  # type: ignore[arg-type]
        out["sha256"] = w.sha.hexdigest()

    atomic_write(path, hashed)
    return out["sha256"]


def read_digests(directory: Path) -> Dict[str, str]:
    """``{file name: sha256}`` recorded in ``directory/SHA256SUMS`` (empty when there is none).

    Lines that are not ``<64 hex digits>  <name>`` (a line cut by a kill) are ignored.
    """
    path = Path(directory) / DIGESTS
    if not path.exists():
        return {}
    digests = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _LINE.match(line.strip())
        if m:
            digests[m.group(2)] = m.group(1)
    return digests


def record_digests(directory: Path, digests: Mapping[str, str]) -> None:
    """Append ``name -> sha256`` lines to ``directory/SHA256SUMS`` (flushed and fsync'ed)."""
    if not digests:
        return
    path = Path(directory) / DIGESTS
    text = "".join(f"{h}  {name}\n" for name, h in digests.items())
    with open(path, "a+b") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell():
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":  # a line cut by a kill: start on a fresh line
                text = "\n" + text
        fh.write(text.encode())
        fh.flush()
        os.fsync(fh.fileno())


def compact_digests(directory: Path) -> None:
    """Rewrite ``SHA256SUMS`` atomically with one line per file that still exists (sorted)."""
    directory = Path(directory)
    digests = read_digests(directory)
    text = "".join(f"{digests[n]}  {n}\n" for n in sorted(digests) if (directory / n).exists())
    atomic_write(directory / DIGESTS, lambda fh: fh.write(text.encode()))


def read_verified(path: Path, digests: Mapping[str, str]) -> bytes:
    """The bytes of ``path``, checked against ``digests[path.name]``; ``ValueError`` naming the file otherwise."""
    path = Path(path)
    want = digests.get(path.name)
    if want is None:
        raise ValueError(f"{path} has no sha256 recorded in {path.parent / DIGESTS}: it cannot be verified "
                         "(a run killed before recording it, or files copied by hand)")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != want:
        raise ValueError(f"{path} is corrupted: its sha256 differs from the one recorded in {DIGESTS} "
                         "when it was written (delete it to have it computed again)")
    return data


def load_npy(path: Path, data: bytes) -> np.ndarray:
    """``np.load`` of ``data`` (the bytes of ``path``), with a one-line error naming ``path``."""
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path} is not a readable .npy file ({exc})") from None
