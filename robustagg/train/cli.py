"""``robustagg train CONFIG.toml [--set key=value ...] [--resume] [--steps N] [--out DIR]``.

Reads the configuration (every error -- unknown key with a suggestion, wrong type, unknown
component, ``f`` too large for the rule -- is one line on stderr and exit status 2), trains
with a progress bar showing the running training loss and the last test accuracy, and
writes ``config.toml``, ``metrics.csv``, ``plot.png`` (and ``checkpoint.pt`` with
``run.checkpoint_every``) under ``<out>/<run.name>/``.

The same arguments drive the distributed launcher
(``torchrun ... -m robustagg.train.distributed CONFIG.toml ...``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import TYPE_CHECKING, Any, Dict, Optional

if TYPE_CHECKING:
    from robustagg.train.config import TrainConfig

#: models with fewer parameters train on one torch thread unless --threads or OMP_NUM_THREADS
#: says otherwise (docs/training.md, "Threads": more threads lost 3.5x to 7x on such models
#: when other jobs shared the cores)
SMALL_MODEL = 1_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train`` subcommand's arguments."""
    parser.add_argument("config", help="TOML configuration (docs/training.md lists every key)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key, e.g. --set aggregator.name=krum --set workers.f=3 (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from <out>/<name>/checkpoint.pt when it exists")
    parser.add_argument("--steps", type=int, default=None,
                        help="train until this step (total, not additional; default run.steps)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="results directory (run.out_dir; default results); --out '' writes nothing "
                             "(and so checkpoints nothing)")
    parser.add_argument("--name", default=None, help="run directory name (run.name)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (one line per evaluation)")
    parser.add_argument("--threads", type=int, default=None,
                        help=f"torch threads (default: 1 for models under {SMALL_MODEL:,} parameters, "
                             "torch's choice above; OMP_NUM_THREADS, when set, is kept)")


def load(args: argparse.Namespace) -> "TrainConfig":
    """The configuration named by ``args.config`` with ``--set``, ``--out`` and ``--name`` applied.

    Reading it builds and checks the run's components, so torch is imported here, not when
    the module is (``robustagg train --help`` stays fast)."""
    from robustagg.train.config import TrainConfig

    overrides = list(args.overrides)
    if args.out is not None:
        overrides.append(f"run.out_dir={_quote(args.out)}")
        if not args.out:  # --out "": write nothing, so no checkpoints either
            overrides.append("run.checkpoint_every=0")
    if args.name is not None:
        overrides.append(f"run.name={_quote(args.name)}")
    if args.steps is not None and args.steps < 0:
        raise ValueError(f"--steps must be >= 0, got {args.steps}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    return TrainConfig.from_toml(args.config, overrides)


def _quote(text: str) -> str:
    return "'" + text + "'" if "'" not in text else '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def run(args: argparse.Namespace) -> int:
    """Train in this process (``robustagg train``). Every error a configuration, a file or
    an option can cause is one line on stderr and exit status 2."""
    try:
        cfg = load(args)
        if args.threads:  # before building: the model's initialisation runs with them too
            import torch

            torch.set_num_threads(args.threads)
        from robustagg.train import build

        trainer = build(cfg)
        default_threads(trainer, args)
        return train(trainer, args)
    except (ValueError, TypeError, OSError) as exc:
        print(f"robustagg train: error: {exc}", file=sys.stderr)
        return 2


def default_threads(trainer: Any, args: argparse.Namespace) -> int:
    """Without ``--threads`` and ``OMP_NUM_THREADS``, train a model under :data:`SMALL_MODEL`
    parameters on one torch thread; returns the thread count in use."""
    import os

    import torch

    if args.threads is None and "OMP_NUM_THREADS" not in os.environ and trainer.flat.dim < SMALL_MODEL:
        torch.set_num_threads(1)
    return torch.get_num_threads()


def train(trainer: Any, args: argparse.Namespace) -> int:
    """Run ``trainer`` with a progress bar and print a summary; returns the exit status."""
    cfg = trainer.config
    total = cfg.run.steps if args.steps is None else args.steps
    progress = _Progress(total, cfg.run.name, enabled=not args.no_progress)
    start = time.perf_counter()
    try:
        history = trainer.run(total, resume=args.resume, callback=progress.update)
    finally:
        progress.close()
    wall = time.perf_counter() - start
    if progress.calls == 0:
        print(f"{cfg.run.name}: nothing to train (already at step {trainer.t} of {total})", file=sys.stderr)
    if not history:
        return 0
    last = history.last()
    where = f"; results in {trainer.run_dir}" if trainer.run_dir is not None else ""
    acc = last.get("accuracy", math.nan)
    print(f"{cfg.run.name}: step {last['step']}, test accuracy {acc:.4f}, "
          f"test loss {last.get('test_loss', math.nan):.4f}, train loss {last.get('loss', math.nan):.4f} "
          f"({wall:.1f} s){where}")
    if last.get("diverged"):
        print(f"{cfg.run.name}: the model diverged (non-finite) at step {last['step']}", file=sys.stderr)
    skipped = sum(row.get("skipped_nonfinite", 0) for row in history)
    if skipped:
        print(f"{cfg.run.name}: {skipped:g} step(s) skipped: more than f updates were non-finite", file=sys.stderr)
    if last.get("stopped"):
        print(f"{cfg.run.name}: stopped at step {last['step']}: more than f updates were non-finite "
              "(run.on_nonfinite = 'stop')", file=sys.stderr)
        return 1
    return 0


class _Progress:
    """A tqdm bar (on stderr) with the running loss (exponential average) and the last accuracy."""

    def __init__(self, total: int, name: str, enabled: bool = True) -> None:
        self.total, self.name, self.enabled = total, name, enabled
        self.bar = None
        self.calls = 0
        self.loss = math.nan
        self.acc = math.nan

    def update(self, info: Dict[str, Any]) -> None:
        self.calls += 1
        loss = info.get("loss", math.nan)
        if isinstance(loss, float) and math.isfinite(loss):
            self.loss = loss if math.isnan(self.loss) else 0.9 * self.loss + 0.1 * loss
        if "accuracy" in info:
            self.acc = info["accuracy"]
        step = int(info["step"])
        if not self.enabled:
            if "accuracy" in info:
                print(f"{self.name}: step {step}/{self.total} loss {self.loss:.4f} accuracy {self.acc:.4f}",
                      file=sys.stderr)
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=step - 1, desc=self.name, unit="step",
                            dynamic_ncols=True, file=sys.stderr)
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(loss=f"{self.loss:.4f}", acc=f"{self.acc:.4f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="robustagg train")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
