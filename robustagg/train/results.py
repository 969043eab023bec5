"""Training history and the files of ``results/<run>/``: ``config.toml``, ``metrics.csv``,
``plot.png``, each written atomically (temporary file + ``os.replace``)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from robustagg._io import atomic_write, atomic_write_text


class History(list):
    """A list of rows (dicts), one per evaluation, with a few table helpers.

    Every row has ``step``, ``loss`` (mean training loss of the honest workers over the
    steps since the previous row), ``test_loss``, ``accuracy``, ``time`` (cumulative training
    seconds, evaluation excluded) and the mean per-step split of that time (``t_compute``,
    ``t_attack``, ``t_aggregate``, ``t_optimizer`` for the parameter server; ``t_compute``,
    ``t_attack``, ``t_mix`` for peer-to-peer); trainers add their own columns (the parameter
    server: ``rows``, ``skipped`` and ``skipped_nonfinite``, the steps skipped since the previous
    row, all of them and those with more than ``f`` non-finite updates).

    >>> h = History([{"step": 10, "accuracy": 0.5}, {"step": 20, "accuracy": 0.8}])
    >>> h.column("accuracy"), h.last("accuracy")
    ([0.5, 0.8], 0.8)
    """

    def column(self, key: str) -> List[Any]:
        """The values of ``key`` in every row (``nan`` where a row lacks it)."""
        return [row.get(key, math.nan) for row in self]

    def last(self, key: Optional[str] = None) -> Any:
        """The last row, or its value for ``key``."""
        if not self:
            raise IndexError("the history is empty")
        return self[-1] if key is None else self[-1].get(key, math.nan)

    def best(self, key: str = "accuracy") -> float:
        """The largest finite value of ``key`` (e.g. the MoNNA paper's max test accuracy)."""
        values = [v for v in self.column(key) if isinstance(v, (int, float)) and math.isfinite(v)]
        return max(values) if values else math.nan

    def columns(self) -> List[str]:
        keys: Dict[str, None] = {}
        for row in self:
            keys.update(dict.fromkeys(row))
        return list(keys)

    def to_csv(self, path: Optional[Any] = None) -> str:
        """The rows as CSV text; written atomically to ``path`` when given."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns(), lineterminator="\n")
        writer.writeheader()
        for row in self:
            writer.writerow({k: _fmt(v) for k, v in row.items()})
        text = buffer.getvalue()
        if path is not None:
            atomic_write_text(path, text)
        return text

    def to_pandas(self):
        """A ``pandas.DataFrame`` (needs pandas)."""
        import pandas as pd

        return pd.DataFrame(list(self), columns=self.columns())


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)
    return value


def plot(history: Iterable[Dict[str, Any]], path: Any, title: str = "") -> None:
    """Accuracy and loss against the step, as a PNG (matplotlib's Agg backend), written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = list(history)
    fig = Figure(figsize=(9, 3.6), dpi=110)
    FigureCanvasAgg(fig)  # the Agg backend, without pyplot or the global backend setting
    ax_acc, ax_loss = fig.subplots(1, 2)
    steps = [r["step"] for r in rows]
    for key, style in (("accuracy", "-"), ("accuracy_mean", "--"), ("accuracy_min", ":")):
        values = [r.get(key, math.nan) for r in rows]
        if any(isinstance(v, float) and math.isfinite(v) for v in values):
            ax_acc.plot(steps, values, style, label=key.replace("_", " "))
    skips = [(r["step"], r.get("skipped", 0)) for r in rows
             if isinstance(r.get("skipped", 0), (int, float)) and r.get("skipped", 0) > 0]
    if skips:  # steps the server skipped (too few rows, or more than f non-finite ones)
        total = sum(count for _, count in skips)
        ax_acc.plot([s for s, _ in skips], [0.0] * len(skips), "x", color="tab:red",
                    label=f"skipped steps ({total:g})")
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("test accuracy")
    ax_acc.grid(alpha=0.3)
    if ax_acc.lines:
        ax_acc.legend(loc="lower right", fontsize=8)
    for key in ("loss", "test_loss"):
        values = [r.get(key, math.nan) for r in rows]
        finite = [v for v in values if isinstance(v, float) and math.isfinite(v)]
        if finite:
            ax_loss.plot(steps, values, label="train loss (honest)" if key == "loss" else "test loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.grid(alpha=0.3)
    if ax_loss.lines:
        ax_loss.legend(fontsize=8)
        positive = all(v > 0 for line in ax_loss.lines for v in line.get_ydata() if math.isfinite(v))
        if positive:
            ax_loss.set_yscale("log")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png"))


def write_results(directory: Any, history: History, *, config_toml: Optional[str] = None,
                  with_plot: bool = True, title: str = "") -> Path:
    """Write ``config.toml`` (when given), ``metrics.csv`` and ``plot.png`` under ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if config_toml is not None:
        atomic_write_text(directory / "config.toml", config_toml)
    history.to_csv(directory / "metrics.csv")
    if with_plot and len(history):
        plot(history, directory / "plot.png", title=title)
    return directory
