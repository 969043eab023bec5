"""ClientApp: honest or adversarial nodes (role from ``--node-config`` or the run config)."""

from __future__ import annotations

import functools
from typing import Tuple

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from federated import make_client_app
from robustagg_flower import task

app = ClientApp()


@functools.lru_cache(maxsize=4)
def _inner(items: Tuple) -> ClientApp:
    """The configured ``make_client_app`` app for one run config (built once per process)."""
    cfg = dict(items)
    return make_client_app(task.model_fn(cfg), task.data_fn(cfg), local_steps=int(cfg["local-steps"]),
                           lr=float(cfg["lr"]), batch_size=int(cfg["batch-size"]), roles=task.roles(cfg),
                           seed=int(cfg["seed"]), omniscient=bool(cfg["omniscient"]))


def _key(context: Context) -> Tuple:
    return tuple(sorted(context.run_config.items()))


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _inner(_key(context))(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _inner(_key(context))(msg, context)
