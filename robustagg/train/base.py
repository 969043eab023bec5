"""The run loop shared by both trainers: evaluation rows, checkpoints, resume, result files."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from robustagg._io import remove_stale_temporaries
from robustagg.train import checkpoint as ckpt
from robustagg.train.components import load_dataset, model_factory, partition
from robustagg.train.config import TrainConfig, load_config
from robustagg.train.flat import FlatModel
from robustagg.train.optim import learning_rate, resolve_schedule
from robustagg.train.results import History, write_results
from robustagg.train.validation import check_device
from robustagg.train.worker import loss_function

#: Per-step statistics summed over the steps of a history row (``rows`` is averaged).
COUNTERS = ("rows", "skipped", "skipped_nonfinite")


@dataclass
class StepResult:
    """What one training step reports; the run loop sums it into the next history row.

    Attributes
    ----------
    lr : float
        The step's scheduled learning rate.
    loss : float
        Mean training loss of the honest workers (NaN when none computed).
    times : dict
        Seconds per phase, named as the history's columns (``t_compute``, ``t_attack``,
        ``t_aggregate``, ``t_optimizer``; peer-to-peer: ``t_mix``).
    rows : int or None
        Updates the server's rule received (parameter server; ``None`` elsewhere, and when the
        step ended before the server step).
    skipped : bool
        The model did not move: fewer rows than the rule needs, or more than ``f`` non-finite.
    skipped_nonfinite : bool
        Skipped (or stopped) because more than ``f`` rows were non-finite (``run.on_nonfinite``).
    diverged : bool
        The model or the honest training loss became non-finite: the run stops.
    stopped : bool
        ``run.on_nonfinite = "stop"`` ended the run at this step.
    """

    lr: float
    loss: float = math.nan
    times: Dict[str, float] = field(default_factory=dict)
    rows: Optional[int] = None
    skipped: bool = False
    skipped_nonfinite: bool = False
    diverged: bool = False
    stopped: bool = False

    def stats(self) -> Dict[str, float]:
        """The statistics as the history and ``run(callback=...)`` name them."""
        out: Dict[str, float] = {"loss": self.loss, **self.times}
        if self.rows is not None:
            out.update(rows=float(self.rows), skipped=float(self.skipped),
                       skipped_nonfinite=float(self.skipped_nonfinite))
        out.update(lr=self.lr, diverged=self.diverged)
        if self.stopped:
            out["stopped"] = True
        return out

    def __getitem__(self, key: str) -> float:
        """``result["t_compute"]``: a value of :meth:`stats` (as when steps returned dicts)."""
        return self.stats()[key]

#: Keys that may differ between a checkpoint's configuration and the resuming one.
RESUMABLE_CHANGES = (("run", "steps"), ("run", "checkpoint_every"), ("run", "out_dir"))


class Trainer:
    """Base class of :class:`~robustagg.train.ParameterServer` and :class:`~robustagg.train.PeerToPeer`.

    Subclasses implement :meth:`step` (one training step; returns a :class:`StepResult`),
    :meth:`_evaluate` and :meth:`_state` / :meth:`_load_state`.
    """

    kind = ""
    #: whether this process writes the run directory (several processes of one run share it,
    #: and only the writer may delete what a killed write left there)
    writes_run_dir = True

    def __init__(self, config: Any, *, dataset: Any = None) -> None:
        self.config: TrainConfig = load_config(config)
        cfg = self.config
        if (cfg.trainer == "peer-to-peer") != (self.kind == "peer-to-peer"):
            raise ValueError(f"this configuration has trainer = {cfg.trainer!r}; use "
                             f"{'PeerToPeer' if cfg.is_p2p else 'ParameterServer'} (or robustagg.train.build)")
        check_device(cfg.run.device)  # before any data is loaded
        self.device = torch.device(cfg.run.device)
        self.dataset = load_dataset(cfg) if dataset is None else dataset
        self.classification = getattr(self.dataset, "task", "classification") == "classification"
        self.loss_fn = loss_function(self.dataset)
        self.parts = partition(cfg, self.dataset)
        self.flat = FlatModel(model_factory(cfg, self.dataset)(), self.device)
        self.X_test = self.dataset.X_test.to(self.device)
        self.y_test = self.dataset.y_test.to(self.device)
        self.schedule = resolve_schedule(cfg.optimizer.schedule, cfg.optimizer.schedule_params, p2p=cfg.is_p2p)
        self.n, self.f = cfg.workers.n, cfg.workers.f
        self.h = self.n - self.f
        self.seed = cfg.run.seed
        self.t = 0
        #: the step of the last checkpoint written or read (``None``: none yet), for error messages
        self.checkpoint_step: Optional[int] = None
        self.history = History()
        self.loaders: List[Any] = []
        self._elapsed = 0.0
        self._window: Dict[str, float] = {}
        #: extra evaluation metrics: callables ``fn(trainer) -> dict`` whose entries every
        #: evaluation row also gets (e.g. the loss on the whole training set); see :meth:`add_metrics`
        self.metric_fns: List[Callable[["Trainer"], Dict[str, float]]] = []

    def add_metrics(self, fn: Callable[["Trainer"], Dict[str, float]]) -> "Trainer":
        """Add ``fn(trainer) -> {name: value}`` to every evaluation row (after the test metrics).

        ``fn`` sees the trainer at the evaluation step (``trainer.t``, the model through
        ``trainer.model`` or ``trainer.node_model(i)``, ``trainer.dataset``, ``trainer.parts``).
        Its time is not counted in the row's ``time``. Returns the trainer, for chaining.
        """
        if not callable(fn):
            raise TypeError(f"add_metrics needs a callable fn(trainer) -> dict, got {type(fn).__name__}")
        self.metric_fns.append(fn)
        return self

    # ------------------------------------------------------------------ hooks
    def step(self) -> StepResult:
        """Run training step ``self.t`` and advance ``self.t``; return what it reports."""
        raise NotImplementedError

    def _evaluate(self) -> Dict[str, float]:
        raise NotImplementedError

    def _state(self) -> Dict[str, Any]:
        raise NotImplementedError

    def _load_state(self, state: Dict[str, Any]) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    def lr_at(self, t: int) -> float:
        """The scheduled learning rate of step ``t``."""
        return learning_rate(self.config.optimizer.lr, self.schedule, t, self.config.run.steps)

    def _clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @property
    def run_dir(self) -> Optional[Path]:
        """``<run.out_dir>/<run.name>``, or ``None`` when ``run.out_dir`` is empty."""
        run = self.config.run
        return Path(run.out_dir) / run.name if run.out_dir else None

    @property
    def checkpoint_path(self) -> Optional[Path]:
        return None if self.run_dir is None else self.run_dir / "checkpoint.pt"

    # ------------------------------------------------------------------ the loop
    def run(self, steps: Optional[int] = None, *, resume: bool = False, stop_after: Optional[int] = None,
            callback: Optional[Callable[[Dict[str, Any]], None]] = None, write: bool = True) -> History:
        """Train until step ``steps`` (default ``run.steps``) and return the history.

        Parameters
        ----------
        steps : int, optional
            Total number of steps (not additional ones).
        resume : bool
            Continue from ``<out_dir>/<name>/checkpoint.pt`` when it exists (otherwise start
            fresh); when it is missing or fails its digest check, from the previous checkpoint
            ``checkpoint.previous.pt`` (with a warning). The resumed run ends with exactly the
            model an uninterrupted run reaches.
        stop_after : int, optional
            Stop, as if killed, once step ``stop_after`` is done: nothing more is written, so
            only the last periodic checkpoint survives (used to test resuming).
        callback : callable, optional
            Called after every step with that step's statistics (``step``, ``loss``, ``lr``,
            the ``t_*`` times, plus the evaluation row's columns on evaluation steps).
        write : bool
            Write ``config.toml``, ``metrics.csv`` and ``plot.png`` under :attr:`run_dir`.
        """
        cfg = self.config
        total = cfg.run.steps if steps is None else int(steps)
        if self.run_dir is not None and self.writes_run_dir:
            remove_stale_temporaries(self.run_dir)  # left by a killed write
        path = self.checkpoint_path
        if resume and path is not None and (path.exists() or ckpt.previous_path(path).exists()):
            self.load_checkpoint()
        out = self.run_dir if write else None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write_text(out / "config.toml", cfg.to_toml())
        while self.t < total:
            if stop_after is not None and self.t >= stop_after:
                return self.history
            tic = self._clock()
            result = self.step()
            self._elapsed += self._clock() - tic
            self._accumulate(result)
            info = {"step": self.t, **result.stats()}
            ends = result.diverged or result.stopped
            if self.t % cfg.run.eval_every == 0 or self.t == total or ends:
                row = self._row()
                if result.diverged:
                    row["diverged"] = 1
                if result.stopped:
                    row["stopped"] = 1
                self.history.append(row)
                info.update(row)
            if ends:
                why = ("the model became non-finite" if result.diverged else
                       "more updates than f were non-finite (run.on_nonfinite = 'stop')")
                key = "diverged" if result.diverged else "stopped"
                warnings.warn(f"{self.config.run.name}: {why} at step {self.t}; "
                              f"the run stops (last history row has {key} = 1)", RuntimeWarning, stacklevel=2)
                if callback is not None:
                    callback(info)
                break
            if cfg.run.checkpoint_every and self.t % cfg.run.checkpoint_every == 0:
                self.save_checkpoint()
                if out is not None:
                    self.history.to_csv(out / "metrics.csv")
            if callback is not None:
                callback(info)
        if out is not None:
            write_results(out, self.history, title=self._title())
        return self.history

    def _title(self) -> str:
        cfg = self.config
        threat = cfg.attack.name if cfg.attack.name != "none" else cfg.poisoning.name
        return f"{cfg.run.name}: {cfg.data.name}, {cfg.model.name}, n={self.n}, f={self.f}, {threat}"

    def _accumulate(self, result: StepResult) -> None:
        w = self._window
        w["steps"] = w.get("steps", 0.0) + 1
        if math.isfinite(result.loss):
            w["loss_sum"] = w.get("loss_sum", 0.0) + result.loss
            w["loss_count"] = w.get("loss_count", 0.0) + 1
        counters = {}
        if result.rows is not None:
            counters = {"rows": result.rows, "skipped": result.skipped, "skipped_nonfinite": result.skipped_nonfinite}
        for key, value in {**result.times, **counters}.items():
            w[key] = w.get(key, 0.0) + float(value)
        w["lr"] = float(result.lr)

    def _row(self) -> Dict[str, Any]:
        w, self._window = self._window, {}
        steps = max(w.get("steps", 0.0), 1.0)
        row: Dict[str, Any] = {"step": self.t}
        count = w.get("loss_count", 0.0)
        row["loss"] = w["loss_sum"] / count if count else math.nan
        row.update(self._evaluate())
        for fn in self.metric_fns:
            extra = fn(self)
            if not isinstance(extra, dict):
                raise TypeError(f"a metrics function must return a dict, {fn!r} returned {type(extra).__name__}")
            row.update(extra)
        row["time"] = self._elapsed
        for key in sorted(k for k in w if k.startswith("t_")):
            row[key] = w[key] / steps
        for key in COUNTERS:
            if key in w:
                row[key] = w[key] / steps if key == "rows" else w[key]
        row["lr"] = w.get("lr", math.nan)
        return row

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue the run (tensors and primitives only)."""
        return {
            "kind": self.kind,
            "config": self.config.to_dict(),
            "t": self.t,
            "history": [dict(r) for r in self.history],
            "window": dict(self._window),
            "elapsed": self._elapsed,
            "rng": ckpt.rng_state(),
            "loaders": [None if ld is None else ld.state_dict() for ld in self.loaders],
            "trainer": self._state(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"the checkpoint is from a {state.get('kind')!r} run, not {self.kind!r}")
        self._check_config(state["config"])
        self.t = int(state["t"])
        self.history = History(dict(r) for r in state["history"])
        self._window = dict(state["window"])
        self._elapsed = float(state["elapsed"])
        ckpt.set_rng_state(state["rng"])
        for loader, sub in zip(self.loaders, state["loaders"]):
            if loader is not None:
                loader.load_state_dict(sub)
        self._load_state(state["trainer"])
        self.checkpoint_step = self.t

    def _check_config(self, saved: Dict[str, Any]) -> None:
        now = self.config.to_dict()
        for section, key in RESUMABLE_CHANGES:
            saved.get(section, {}).pop(key, None)
            now[section].pop(key, None)
        if saved != now:
            diffs = _differences(saved, now)
            raise ValueError("the checkpoint was written by a different configuration; differing keys: "
                             + ", ".join(diffs[:10]))

    def save_checkpoint(self, path: Optional[Any] = None) -> Path:
        """Write the checkpoint atomically (default: :attr:`checkpoint_path`)."""
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("no checkpoint path: set run.out_dir or pass a path")
        ckpt.save(self.state_dict(), path)
        self.checkpoint_step = self.t
        return path

    def load_checkpoint(self, path: Optional[Any] = None) -> Path:
        """Continue from the checkpoint at ``path``; by default the newest one under :attr:`run_dir`
        that verifies (``checkpoint.pt``, else ``checkpoint.previous.pt``). Returns the file read.

        A file that fails its digest check or lacks an entry raises
        :class:`robustagg.train.checkpoint.CorruptFileError` (a ``ValueError`` naming the file).
        """
        if path is not None:
            path = Path(path)
            state = ckpt.load(path)
        elif self.checkpoint_path is None:
            raise ValueError("no checkpoint path: set run.out_dir or pass a path")
        else:
            state, path = ckpt.load_latest(self.checkpoint_path)
        try:
            self.load_state_dict(state)
        except (KeyError, IndexError, AttributeError) as exc:
            raise ckpt.CorruptFileError(f"{path} lacks an entry this trainer needs ({exc!r})") from None
        return path

    def _to_device(self, value: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if value is None else value.to(self.device)


def _differences(a: Any, b: Any, prefix: str = "") -> List[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: List[str] = []
        for key in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if a == b else [f"{prefix} ({a!r} -> {b!r})"]
