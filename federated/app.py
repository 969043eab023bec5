r"""``make_server_app`` and ``simulate``: run a robust federated experiment on Flower.

``simulate(config)`` reads the TOML configuration of ``robustagg train`` (a path, a dict in
that format or a :class:`~robustagg.train.TrainConfig`), plus an optional ``[flower]`` table,
and runs :func:`flwr.simulation.run_simulation` on the Ray backend on CPU (or, with
``flower.backend = "inline"``, the same apps in this process)::

    from federated import simulate
    history = simulate("experiments/configs/flower_digits.toml", overrides=["run.out_dir="])
    history["accuracy"]        # test accuracy of the global model after rounds 0, ..., run.steps

What each section means on Flower, and what is rejected, is in :mod:`federated.config`.

References
----------
Beutel et al., "Flower: A Friendly Federated Learning Research Framework", arXiv:2007.14390, 2020.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result, Strategy

from federated import config as fconfig
from federated.client import evaluate_model, make_client_app


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


def central_evaluate_fn(model_fn: Callable[[], torch.nn.Module], X: torch.Tensor, y: torch.Tensor, *,
                        every: int = 1, last: Optional[int] = None,
                        batch: int = 1024) -> Callable[[int, ArrayRecord], Optional[MetricRecord]]:
    """Server-side ``evaluate_fn(round, arrays)`` reporting ``loss`` and ``accuracy`` on ``(X, y)``.

    It evaluates round 0, every ``every``-th round and round ``last``, and returns ``None``
    (Flower records nothing) in the other rounds.
    """

    def evaluate(server_round: int, arrays: ArrayRecord) -> Optional[MetricRecord]:
        if server_round % every and server_round != last:
            return None
        model = model_fn()
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = evaluate_model(model, X, y, batch=batch)
        return MetricRecord({"loss": loss, "accuracy": acc})

    return evaluate


# ------------------------------------------------------------------ server app
def make_server_app(strategy: Union[Strategy, List[Strategy], Callable[[Context], Strategy]],
                    model_fn: Callable[[], torch.nn.Module], *, num_rounds: Optional[int] = None,
                    evaluate_fn: Optional[Callable[[int, ArrayRecord], Optional[MetricRecord]]] = None,
                    train_config: Optional[dict] = None, timeout: float = 3600.0,
                    on_result: Optional[Callable[[Result, Strategy], None]] = None,
                    progress: Optional[Callable[[Strategy, int, int, Optional[MetricRecord]], None]] = None
                    ) -> ServerApp:
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
    progress : callable, optional
        ``progress(strategy, round, num_rounds, metrics)`` after the central evaluation of
        every round (round 0: the initial model; ``metrics`` is ``None`` in rounds not
        evaluated); needs ``evaluate_fn``.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        chosen = strategy(context) if callable(strategy) and not isinstance(strategy, (Strategy, list, tuple)) \
            else strategy
        rounds = num_rounds if num_rounds is not None else int(context.run_config.get("num-server-rounds", 3))
        for one in (chosen if isinstance(chosen, (list, tuple)) else [chosen]):
            initial = ArrayRecord(model_fn().state_dict())
            evaluate = evaluate_fn
            if progress is not None and evaluate_fn is not None:
                def evaluate(rnd: int, arrays: ArrayRecord, one: Strategy = one) -> Optional[MetricRecord]:
                    metrics = evaluate_fn(rnd, arrays)
                    progress(one, rnd, rounds, metrics)
                    return metrics
            result = one.start(grid=grid, initial_arrays=initial, num_rounds=rounds, timeout=timeout,
                               train_config=ConfigRecord(dict(train_config or {})), evaluate_fn=evaluate)
            if on_result is not None:
                on_result(result, one)

    return app




# ------------------------------------------------------------------ simulate
@contextlib.contextmanager
def quiet_flower(quiet: bool = True):
    """Inside the block, Flower's logger (``flwr``, robustagg's ``flwr.robustagg`` included)
    shows warnings and errors only (``flower.verbose = false``); its level is restored after."""
    logger = logging.getLogger("flwr")
    level = logger.level
    if quiet:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def print_progress(stream: Any = None) -> Callable[[Strategy, int, int, Optional[MetricRecord]], None]:
    """A ``progress`` callback printing one line per round (``[name] round 3/5 accuracy 0.894 (4.1 s)``)."""
    import sys

    start = time.perf_counter()

    def show(strategy: Strategy, rnd: int, rounds: int, metrics: Optional[MetricRecord]) -> None:
        name = type(strategy).__name__ + (f"({strategy.rule.name})" if hasattr(strategy, "rule") else "")
        acc = f" accuracy {float(metrics['accuracy']):.3f}" if metrics is not None and "accuracy" in metrics else ""
        history = getattr(strategy, "history", None)
        extra = ""
        if history and rnd > 0 and history[-1].get("round") == rnd:
            e = history[-1]
            extra = " skipped" if e.get("skipped") else f" accepted {len(e['accepted'])}"
            extra += f" rejected {len(e['rejected'])}" if e.get("rejected") else ""
        print(f"[{name}] round {rnd}/{rounds}{acc}{extra} ({time.perf_counter() - start:.1f} s)",
              file=stream or sys.stderr, flush=True)

    return show


def simulate(config: Any, overrides: Sequence[str] = (), *, flower: Optional[Dict[str, Any]] = None,
             out_dir: Optional[str] = None, progress: Optional[Callable[..., None]] = None) -> Dict[str, Any]:
    """Run one Flower simulation of a ``robustagg train`` configuration and return its history.

    Parameters
    ----------
    config : str, path, dict or robustagg.train.TrainConfig
        The TOML configuration (``docs/training.md``) with an optional ``[flower]`` table
        (:data:`federated.config.FLOWER_DEFAULTS`); :mod:`federated.config` says what each
        key means on Flower and which ones are rejected.
    overrides : sequence of str
        ``--set`` strings (``"aggregator.name=krum"``, ``"flower.num_cpus=1"``).
    flower : dict, optional
        ``[flower]`` entries on top of the file's.
    out_dir : str, optional
        Replaces ``run.out_dir`` (``""`` writes nothing).
    progress : callable, optional
        Called after every round (see :func:`make_server_app`; :func:`print_progress`).

    Returns
    -------
    dict
        ``label``, ``round`` (the evaluated rounds), ``accuracy`` and ``loss`` of the global
        model on the test set (round 0: the initial model; the ensemble's for an election run,
        whose rounds start at 1), ``metrics`` (every server-side metric per round, e.g.
        ``certified-accuracy-2``), ``train`` (the aggregated client metrics per round),
        ``strategy`` (the strategy's per-round ``history``), ``election`` (the ensemble's
        scores, certificates and models; election runs only), ``config`` (the full TOML
        text, ``[flower]`` included), ``out_dir`` (where results went, or ``None``) and
        ``compare`` (one such dict per ``flower.compare`` entry).
    """
    if out_dir is not None:
        overrides = list(overrides) + [f"run.out_dir='{out_dir}'"]
    cfg, opts = fconfig.read(config, overrides, flower)
    runs = fconfig.runs(cfg, opts)
    data_fn = fconfig.TrainData(cfg)
    ds = data_fn.load()
    from robustagg.train import components

    model_fn = components.model_factory(cfg, ds)
    test = data_fn.test()
    strategies = [fconfig.build_strategy(kind, run_cfg, extra, model_fn, test) for kind, run_cfg, extra in runs]
    rule = getattr(strategies[0], "rule", None)
    client = make_client_app(model_fn, data_fn,
                             **fconfig.client_settings(cfg, opts, rule, getattr(ds, "num_classes", None)))
    results: List[Tuple[Result, Strategy]] = []
    rounds, n = cfg.run.steps, cfg.workers.n
    evaluate = central_evaluate_fn(model_fn, *test, every=cfg.run.eval_every, last=rounds,
                                   batch=cfg.run.eval_batch_size)
    server = make_server_app(strategies, model_fn, num_rounds=rounds, evaluate_fn=evaluate, timeout=opts["timeout"],
                             on_result=lambda r, s: results.append((r, s)), progress=progress)
    threads = torch.get_num_threads()
    try:
        with quiet_flower(not opts["verbose"]):
            if opts["backend"] == "inline":
                from federated.inline import run_inline

                run_inline(server, client, n)
            else:
                from flwr.simulation import run_simulation

                backend = {"client_resources": {"num_cpus": float(opts["client_cpus"]), "num_gpus": 0.0},
                           "init_args": {"num_cpus": int(opts["num_cpus"]), "num_gpus": 0,
                                         "_temp_dir": opts["ray_temp_dir"], "include_dashboard": False}}
                run_simulation(server_app=server, client_app=client, num_supernodes=n, backend_config=backend,
                               verbose_logging=bool(opts["verbose"]))
    finally:
        torch.set_num_threads(threads)
        shutdown_ray()
    if len(results) != len(strategies):
        raise RuntimeError(f"the simulation finished {len(results)} of {len(strategies)} strategy runs "
                           "(see Flower's log above)")
    histories = [_history(result, used, fconfig.label(kind, run_cfg))
                 for (result, used), (kind, run_cfg, _) in zip(results, runs)]
    text = fconfig.to_toml(cfg, opts)
    where = _write(cfg, histories, text) if cfg.run.out_dir else None
    return {**histories[0], "config": text, "out_dir": where, "compare": histories[1:]}


def _history(result: Result, strategy: Strategy, label: str) -> Dict[str, Any]:
    central = result.evaluate_metrics_serverapp
    rounds = sorted(central)
    nan = float("nan")
    out = {
        "label": label,
        "round": rounds,
        "accuracy": [float(central[r].get("accuracy", nan)) for r in rounds],
        "loss": [float(central[r].get("loss", nan)) for r in rounds],
        "metrics": {r: {k: float(v) for k, v in central[r].items()} for r in rounds},
        "train": {r: dict(m) for r, m in result.train_metrics_clientapp.items()},
        "strategy": list(getattr(strategy, "history", [])),
        "name": type(strategy).__name__ + (f"({strategy.rule!r})" if hasattr(strategy, "rule") else ""),
    }
    if hasattr(strategy, "ensemble"):
        out["election"] = strategy.ensemble()
    return out


def _write(cfg: Any, histories: List[Dict[str, Any]], text: str) -> str:
    """``config.toml`` and, per run, ``metrics.csv`` and ``plot.png`` (compare runs in subfolders)."""
    import re
    from pathlib import Path

    from robustagg.train import History, atomic_write_text, write_results

    top = Path(cfg.run.out_dir) / cfg.run.name
    top.mkdir(parents=True, exist_ok=True)
    atomic_write_text(top / "config.toml", text)
    for i, h in enumerate(histories):
        rows = History()
        for r in h["round"]:
            row = {"step": r, "loss": float(h["train"].get(r, {}).get("train-loss", float("nan")))}
            row.update({("test_loss" if k == "loss" else k): v for k, v in h["metrics"][r].items()})
            rows.append(row)
        sub = top if i == 0 else top / f"compare-{i}-{re.sub(r'[^A-Za-z0-9]+', '-', h['label']).strip('-')}"
        write_results(sub, rows, title=f"{cfg.run.name}: {h['label']} on Flower, n={cfg.workers.n}, f={cfg.workers.f}")
    return str(top)


def shutdown_ray() -> None:
    """``ray.shutdown()`` if Ray is running in this process (Flower usually stops it already)."""
    try:
        import ray
    except ImportError:  # pragma: no cover - flwr[simulation] brings ray
        return
    if ray.is_initialized():
        ray.shutdown()
