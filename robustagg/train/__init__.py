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

from typing import Any, Sequence, Union

from robustagg.train.base import Trainer
from robustagg.train.checkpoint import atomic_write_bytes, atomic_write_text
from robustagg.train.components import derive_seed
from robustagg.train.config import TrainConfig, apply_overrides, load_config
from robustagg.train.flat import FlatModel
from robustagg.train.optim import ServerSGD, learning_rate
from robustagg.train.p2p import PeerToPeer
from robustagg.train.results import History, plot, write_results
from robustagg.train.server import ParameterServer
from robustagg.train.worker import local_update


def build(config: Any, overrides: Sequence[str] = (), **kwargs: Any) -> Union[ParameterServer, PeerToPeer]:
    """The trainer named by ``config.trainer`` (a path, dict or :class:`TrainConfig`)."""
    cfg = load_config(config, overrides)
    return (PeerToPeer if cfg.is_p2p else ParameterServer)(cfg, **kwargs)


def train(config: Any, overrides: Sequence[str] = (), *, resume: bool = False, **run_kwargs: Any) -> History:
    """``build(config, overrides).run(resume=resume, **run_kwargs)``."""
    return build(config, overrides).run(resume=resume, **run_kwargs)


__all__ = [
    "FlatModel", "History", "ParameterServer", "PeerToPeer", "ServerSGD", "TrainConfig", "Trainer",
    "apply_overrides", "atomic_write_bytes", "atomic_write_text", "build", "derive_seed", "learning_rate",
    "load_config", "local_update", "plot", "train", "write_results",
]
