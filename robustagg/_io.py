"""Atomic file writes, shared by everything that writes results, checkpoints or ensembles.

The data goes to a temporary file in the target's directory, is flushed and fsync'ed, and
``os.replace`` moves it onto the target: a reader (or a run resumed after a kill) sees the
old file or the new one, never a partial one. A failed write removes its temporary file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Union

PathLike = Union[str, "os.PathLike[str]"]


def atomic_write(path: PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(fh)`` on a binary file handle, then move the file onto ``path`` atomically
    (``write`` may stream, e.g. ``lambda fh: np.save(fh, array)`` or ``torch.save(obj, fh)``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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
