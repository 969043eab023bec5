r"""``make_server_app`` and ``simulate``: run a robust federated experiment on Flower.

``simulate(config)`` builds everything from a plain dict and runs
:func:`flwr.simulation.run_simulation` on the Ray backend on CPU::

    from federated import simulate
    history = simulate({"aggregator": "trimmed-mean", "f": 1, "nodes": 6,
                        "attack": "reverse", "num_byzantine": 1, "rounds": 5})
    history["accuracy"]        # test accuracy of the global model after rounds 0..5

Config keys (defaults in :data:`DEFAULTS`):

========================  ==================================================================
``dataset``               ``robustagg.data.load`` name (``"digits"``); ``dataset_params``
``model``                 ``robustagg.models`` name (``"logistic"``); ``model_params``
``nodes``                 number of virtual SuperNodes (partitions)
``partition``             ``"iid"``, ``"dirichlet"``, ``"shards"``; ``partition_params``
``rounds``                server rounds
``strategy``              ``"robust"`` (:class:`RobustStrategy`) or ``"fedavg"`` (Flower's FedAvg)
``aggregator``, ``f``     the rule name (or object) and declared Byzantine count
``pre``                   pre-aggregator name(s) or ``None``
``server_lr``             server learning rate; ``server_momentum``
``per_layer``, ``mode``   see :class:`RobustStrategy` (``"sync"``, ``"afa-cd"``, ``"afa-cs"``)
``local_steps``, ``lr``   honest local SGD; ``batch_size``, ``momentum``
``attack``                attack of the Byzantine nodes (``None``: none); ``attack_params``
``num_byzantine``         the first ``num_byzantine`` partitions are Byzantine
``roles``                 extra per-partition roles ``{partition: {key: value}}`` (see
                          :mod:`federated._roles`): poison, fault, participation, ...
``omniscient``            Byzantine nodes recompute honest updates (``True``)
``seed``                  model init, partitions, batches, attacks
``num_cpus``              CPUs Ray may use (2); ``client_cpus`` per virtual node (1)
``ray_temp_dir``          Ray's session directory (``/tmp/ray_robustagg``)
``verbose``               Flower's DEBUG logging
========================  ==================================================================

References
----------
Beutel et al., "Flower: A Friendly Federated Learning Research Framework", arXiv:2007.14390, 2020.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, Result, Strategy

from federated.client import evaluate_model, make_client_app
from federated.strategy import RobustStrategy

DEFAULTS: Dict[str, Any] = {
    "dataset": "digits", "dataset_params": {},
    "model": "logistic", "model_params": {},
    "nodes": 6, "partition": "iid", "partition_params": {},
    "rounds": 5,
    "strategy": "robust", "aggregator": "trimmed-mean", "f": 1, "pre": None,
    "server_lr": 1.0, "server_momentum": 0.0, "per_layer": False, "mode": "sync",
    "local_steps": 20, "lr": 0.3, "batch_size": 32, "momentum": 0.0,
    "attack": None, "attack_params": {}, "num_byzantine": 0, "roles": {},
    "omniscient": True, "seed": 0,
    "num_cpus": 2, "client_cpus": 1, "ray_temp_dir": "/tmp/ray_robustagg", "verbose": False,
}


# ------------------------------------------------------------------ data and model factories
@functools.lru_cache(maxsize=4)
def _dataset(name: str, params: Tuple[Tuple[str, Any], ...]):
    from robustagg import data

    return data.load(name, **dict(params))


@functools.lru_cache(maxsize=8)
def _parts(name: str, params: Tuple, scheme: str, n: int, scheme_params: Tuple, seed: int):
    ds = _dataset(name, params)
    return ds.partition(scheme, n, seed=seed, **dict(scheme_params))


class PartitionData:
    """Picklable ``data_fn(partition_id, num_partitions) -> (X, y)`` over a robustagg dataset.

    Datasets and partitions are cached per process (Ray workers load them once).
    """

    def __init__(self, dataset: str, dataset_params: Optional[dict] = None, partition: str = "iid",
                 partition_params: Optional[dict] = None, seed: int = 0) -> None:
        self.dataset, self.partition, self.seed = dataset, partition, int(seed)
        self.dataset_params = tuple(sorted((dataset_params or {}).items()))
        self.partition_params = tuple(sorted((partition_params or {}).items()))

    def __call__(self, partition_id: int, num_partitions: int):
        ds = _dataset(self.dataset, self.dataset_params)
        parts = _parts(self.dataset, self.dataset_params, self.partition, int(num_partitions),
                       self.partition_params, self.seed)
        idx = torch.as_tensor(parts[int(partition_id)])
        return ds.X_train[idx], ds.y_train[idx]

    def load(self):
        """The whole :class:`robustagg.data.Dataset` (cached)."""
        return _dataset(self.dataset, self.dataset_params)

    def test(self):
        """``(X_test, y_test)``, e.g. for :func:`central_evaluate_fn`."""
        ds = self.load()
        return ds.X_test, ds.y_test


def central_evaluate_fn(model_fn: Callable[[], torch.nn.Module], X: torch.Tensor,
                        y: torch.Tensor) -> Callable[[int, ArrayRecord], MetricRecord]:
    """Server-side ``evaluate_fn(round, arrays)`` reporting ``loss`` and ``accuracy`` on ``(X, y)``."""

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = model_fn()
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = evaluate_model(model, X, y)
        return MetricRecord({"loss": loss, "accuracy": acc})

    return evaluate


# ------------------------------------------------------------------ server app
def make_server_app(strategy: Union[Strategy, List[Strategy], Callable[[Context], Strategy]],
                    model_fn: Callable[[], torch.nn.Module], *, num_rounds: Optional[int] = None,
                    evaluate_fn: Optional[Callable[[int, ArrayRecord], Optional[MetricRecord]]] = None,
                    train_config: Optional[dict] = None, timeout: float = 3600.0,
                    on_result: Optional[Callable[[Result, Strategy], None]] = None) -> ServerApp:
    """A ``ServerApp`` that runs ``strategy`` from the initial weights of ``model_fn()``.

    Parameters
    ----------
    strategy : flwr Strategy, list of them, or callable
        A strategy (e.g. :class:`RobustStrategy`), a list of strategies run one after the
        other on the same nodes (each from the same initial model), or ``strategy(context)``
        building one from the run config (what a deployed app does).
    model_fn : callable
        Builds the model whose state dict is the initial ``ArrayRecord``.
    num_rounds : int, optional
        Server rounds; ``None`` reads ``num-server-rounds`` from the run config (default 3).
    evaluate_fn : callable, optional
        Centralized ``evaluate_fn(round, arrays) -> MetricRecord`` (see :func:`central_evaluate_fn`).
    train_config : dict, optional
        Sent to the clients each round (``ConfigRecord``).
    timeout : float
        Seconds to wait for replies in each round.
    on_result : callable, optional
        Called with Flower's ``Result`` and the strategy when each strategy's run ends (in
        simulation the ``ServerApp`` runs in the calling process, so this can collect it).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        chosen = strategy(context) if callable(strategy) and not isinstance(strategy, (Strategy, list, tuple)) \
            else strategy
        rounds = num_rounds if num_rounds is not None else int(context.run_config.get("num-server-rounds", 3))
        for one in (chosen if isinstance(chosen, (list, tuple)) else [chosen]):
            initial = ArrayRecord(model_fn().state_dict())
            result = one.start(grid=grid, initial_arrays=initial, num_rounds=rounds, timeout=timeout,
                               train_config=ConfigRecord(dict(train_config or {})), evaluate_fn=evaluate_fn)
            if on_result is not None:
                on_result(result, one)

    return app


def build_strategy(cfg: Dict[str, Any]) -> Strategy:
    """The strategy a simulate config asks for (``strategy``: ``"robust"`` or ``"fedavg"``)."""
    common = dict(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=cfg["nodes"],
                  min_available_nodes=cfg["nodes"])
    if cfg["strategy"] == "fedavg":
        return FedAvg(**common)
    if cfg["strategy"] != "robust":
        raise ValueError(f"strategy must be 'robust' or 'fedavg', got {cfg['strategy']!r}")
    return RobustStrategy(cfg["aggregator"], pre=cfg["pre"], f=cfg["f"], server_lr=cfg["server_lr"],
                          server_momentum=cfg["server_momentum"], per_layer=cfg["per_layer"], mode=cfg["mode"],
                          **common)


def _roles_from(cfg: Dict[str, Any]) -> Dict[int, Dict[str, Any]]:
    roles = {int(k): dict(v) for k, v in dict(cfg["roles"] or {}).items()}
    if bool(cfg["attack"]) != (int(cfg["num_byzantine"]) > 0):
        raise ValueError("set both 'attack' and 'num_byzantine' > 0 (or neither); got "
                         f"attack={cfg['attack']!r}, num_byzantine={cfg['num_byzantine']!r}")
    if cfg["attack"]:
        for p in range(int(cfg["num_byzantine"])):
            spec = roles.setdefault(p, {})
            spec["byzantine"] = cfg["attack"]
            spec.update({f"byzantine-{k}": v for k, v in dict(cfg["attack_params"]).items()})
    return roles


STRATEGY_KEYS = ("strategy", "aggregator", "f", "pre", "server_lr", "server_momentum", "per_layer", "mode")


def simulate(config: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Run one Flower simulation on Ray (CPU) and return its history.

    Parameters
    ----------
    config : dict
        Keys as in the module docstring; missing keys take :data:`DEFAULTS`. ``compare``
        (a list of dicts over the strategy keys ``strategy``, ``aggregator``, ``f``, ``pre``,
        ``server_lr``, ``server_momentum``, ``per_layer``, ``mode``) runs further strategies
        after the first one, in the same simulation (same nodes, data and attack; one Ray
        start-up), each from the same initial model.

    Returns
    -------
    dict
        ``round`` (0..rounds), ``accuracy`` and ``loss`` of the global model on the test set
        after each round (round 0: the initial model), ``train`` (Flower's per-round train
        metrics), ``strategy`` (the robust strategy's per-round ``history``, empty for FedAvg),
        ``config`` (the full config used) and ``compare`` (one such dict, without ``config``,
        per entry of ``config["compare"]``).
    """
    unknown = set(config or {}) - set(DEFAULTS) - {"compare"}
    if unknown:
        raise ValueError(f"unknown simulate config key(s) {sorted(unknown)}; known: {sorted(DEFAULTS)} + compare")
    cfg = {**DEFAULTS, **(config or {})}
    compare = [dict(c) for c in cfg.pop("compare", None) or []]
    for extra in compare:
        bad = set(extra) - set(STRATEGY_KEYS)
        if bad:
            raise ValueError(f"compare entries may set only {STRATEGY_KEYS}; got {sorted(bad)}")
    from flwr.simulation import run_simulation

    from robustagg import models

    data_fn = PartitionData(cfg["dataset"], cfg["dataset_params"], cfg["partition"], cfg["partition_params"],
                            cfg["seed"])
    ds = _dataset(data_fn.dataset, data_fn.dataset_params)
    model_fn = models.model_fn(cfg["model"], input_shape=ds.input_shape, num_classes=ds.num_outputs,
                               seed=cfg["seed"], **cfg["model_params"])
    strategies = [build_strategy(cfg)] + [build_strategy({**cfg, **extra}) for extra in compare]
    client = make_client_app(model_fn, data_fn, local_steps=cfg["local_steps"], lr=cfg["lr"],
                             batch_size=cfg["batch_size"], momentum=cfg["momentum"], roles=_roles_from(cfg),
                             seed=cfg["seed"], omniscient=cfg["omniscient"],
                             attack_aggregator=getattr(strategies[0], "rule", None), threads=1)
    results: List[Tuple[Result, Strategy]] = []
    server = make_server_app(strategies, model_fn, num_rounds=cfg["rounds"],
                             evaluate_fn=central_evaluate_fn(model_fn, *data_fn.test()),
                             on_result=lambda r, s: results.append((r, s)))
    backend = {"client_resources": {"num_cpus": float(cfg["client_cpus"]), "num_gpus": 0.0},
               "init_args": {"num_cpus": int(cfg["num_cpus"]), "num_gpus": 0, "_temp_dir": cfg["ray_temp_dir"],
                             "include_dashboard": False}}
    try:
        run_simulation(server_app=server, client_app=client, num_supernodes=int(cfg["nodes"]),
                       backend_config=backend, verbose_logging=bool(cfg["verbose"]))
    finally:
        shutdown_ray()
    if len(results) != len(strategies):
        raise RuntimeError(f"the simulation finished {len(results)} of {len(strategies)} strategy runs "
                           "(see Flower's log above)")
    histories = [_history(result, used) for result, used in results]
    return {**histories[0], "config": cfg, "compare": histories[1:]}


def _history(result: Result, strategy: Strategy) -> Dict[str, Any]:
    rounds = sorted(result.evaluate_metrics_serverapp)
    return {
        "round": rounds,
        "accuracy": [float(result.evaluate_metrics_serverapp[r]["accuracy"]) for r in rounds],
        "loss": [float(result.evaluate_metrics_serverapp[r]["loss"]) for r in rounds],
        "train": {r: dict(m) for r, m in result.train_metrics_clientapp.items()},
        "strategy": list(getattr(strategy, "history", [])),
        "name": type(strategy).__name__ + (f"({strategy.rule!r})" if hasattr(strategy, "rule") else ""),
    }


def shutdown_ray() -> None:
    """``ray.shutdown()`` if Ray is running in this process (Flower usually stops it already)."""
    try:
        import ray
    except ImportError:  # pragma: no cover - flwr[simulation] brings ray
        return
    if ray.is_initialized():
        ray.shutdown()
