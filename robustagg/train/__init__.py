"""Training under attack: the parameter server (with AFA-CD / AFA-CS modes) and peer-to-peer MoNNA.

>>> from robustagg.train import TrainConfig, build
>>> cfg = TrainConfig.from_dict({"workers": {"n": 10, "f": 2}, "attack": {"name": "reverse"},
...                              "aggregator": {"name": "trimmed-mean"},
...                              "run": {"steps": 30, "out_dir": ""}})
>>> history = build(cfg).run()
>>> history.last("accuracy") > 0.5
True

* :class:`ParameterServer`: ``n`` workers, ``f`` Byzantine, a robust rule at the server;
  modes ``sgd``, ``fedavg``, ``afa-cd``, ``afa-cs`` under a participation model.
* :class:`PeerToPeer`: MoNNA (momentum + nearest-neighbour averaging) and baselines.
* :class:`TrainConfig`: the TOML configuration (``docs/training.md`` lists every key).
* :func:`local_update`: what one honest worker computes (used by ``torch.distributed`` runs).

Runs write ``config.toml``, ``metrics.csv`` and ``plot.png`` under ``<run.out_dir>/<run.name>/``
and checkpoint there every ``run.checkpoint_every`` steps; ``run(resume=True)`` continues a
killed run to exactly the model an uninterrupted run reaches.
"""

import importlib
from typing import Any, Sequence

#: public name -> the submodule defining it (imported on first access, PEP 562, so that
#: ``robustagg train --help`` and reading a configuration do not import torch)
_WHERE = {
    "Trainer": "base", "atomic_write_bytes": "checkpoint", "atomic_write_text": "checkpoint",
    "derive_seed": "components", "TrainConfig": "config", "apply_overrides": "config", "load_config": "config",
    "FlatModel": "flat", "ServerSGD": "optim", "learning_rate": "optim", "PeerToPeer": "p2p",
    "History": "results", "plot": "results", "write_results": "results", "ParameterServer": "server",
    "local_update": "worker",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"robustagg.train.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'robustagg.train' has no attribute {name!r}")


def build(config: Any, overrides: Sequence[str] = (), **kwargs: Any) -> Any:
    """The trainer named by ``config.trainer`` (a path, dict or :class:`TrainConfig`):
    a :class:`ParameterServer` or a :class:`PeerToPeer`."""
    from robustagg.train.config import load_config
    from robustagg.train.p2p import PeerToPeer
    from robustagg.train.server import ParameterServer

    cfg = load_config(config, overrides)
    return (PeerToPeer if cfg.is_p2p else ParameterServer)(cfg, **kwargs)


def train(config: Any, overrides: Sequence[str] = (), *, resume: bool = False, **run_kwargs: Any) -> Any:
    """``build(config, overrides).run(resume=resume, **run_kwargs)``; returns the :class:`History`."""
    return build(config, overrides).run(resume=resume, **run_kwargs)


__all__ = sorted([*_WHERE, "build", "train"])
