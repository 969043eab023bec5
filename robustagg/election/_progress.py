"""Progress over the base models of an ensemble: a bar on a terminal, a few lines in a log.

On a terminal (``stream.isatty()``) a ``tqdm`` bar; otherwise (a log file, a
pipe, a test's captured output) one line when training starts and one every
tenth of the models and at the end, so a log gets about a dozen lines however
many models there are, never a carriage-return bar.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Optional, TextIO

__all__ = ["ModelProgress"]


class ModelProgress:
    """Count trained base models and show it on ``stream`` (default ``sys.stderr``).

    Parameters
    ----------
    total : int
        Base models in the ensemble.
    done : int
        Models already stored (counted as done from the start).
    desc : str
        Label, e.g. ``"fa base models"``.
    enabled : bool
        ``False`` shows nothing.
    lines : int
        Without a terminal: about this many progress lines over the run.
    """

    def __init__(self, total: int, done: int = 0, desc: str = "base models", enabled: bool = True,
                 stream: Optional[TextIO] = None, lines: int = 10) -> None:
        self.total, self.done, self.desc = total, done, desc
        self.stream = sys.stderr if stream is None else stream
        self.enabled = bool(enabled) and done < total
        self._start = time.perf_counter()
        self._first = done
        self._every = max(1, -(-(total - done) // max(1, lines)))
        self._bar: Any = None
        if not self.enabled:
            return
        isatty = getattr(self.stream, "isatty", None)
        if isatty is not None and isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=done, desc=desc, unit="model", file=self.stream,
                             dynamic_ncols=True)
        else:
            self._line(f"{total - done} to train" + (f" ({done} already stored)" if done else ""))

    def _line(self, text: str) -> None:
        print(f"{self.desc}: {text}", file=self.stream, flush=True)

    def update(self, n: int = 1) -> None:
        """``n`` more models are stored."""
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        new = self.done - self._first
        if new % self._every == 0 or self.done >= self.total:
            elapsed = time.perf_counter() - self._start
            left = elapsed / new * (self.total - self.done)
            eta = f", about {left:.0f} s left" if self.done < self.total else ""
            self._line(f"{self.done}/{self.total} models ({100 * self.done / self.total:.0f}%) "
                       f"in {elapsed:.0f} s{eta}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "ModelProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
