r"""The ``robustagg train`` TOML configuration on Flower: what each section means in a simulation.

:func:`federated.simulate` reads the same file as ``robustagg train`` (a path, a dict in that
format or a :class:`~robustagg.train.TrainConfig`) plus an optional ``[flower]`` table with
the settings only a Flower run has. :func:`read` splits and checks both; :func:`plan` turns
them into the server's strategies and the clients' roles.

=========================  =====================================================================
TrainConfig key            on Flower
=========================  =====================================================================
``data.*``                 the partitions, exactly as ``robustagg train`` builds them (same seed);
                           node ``p`` of ``workers.n`` trains on partition ``p``;
                           ``replacement`` draws local batches with replacement
``model.*``                the model and its initial weights (seed from ``run.seed``)
``workers.n``              number of virtual SuperNodes
``workers.f``              the last ``f`` nodes (``n-f .. n-1``) are Byzantine, as in ``train``
                           (without ``attack`` or ``poisoning`` they send nothing, as there)
``workers.batch_size``     local batch size
``workers.local_steps``    local SGD steps per round (``K``)
``attack.*``               the Byzantine nodes send the attack's update (omniscient channel,
                           see :mod:`federated.client`); they send every round
``poisoning.*``            the Byzantine nodes train honestly on poisoned data
``[[faults]]``             one fault (``workers = [...]`` restricts it), applied by every node
                           to its own update; at most one entry
``participation.*``        one shared :class:`robustagg.participation.Participation`: node ``p``
                           arrives in round ``t`` as worker ``p`` does in ``train``'s plan,
                           with its local steps and staleness
``aggregator.*``           the rule or pipeline of :class:`~federated.RobustStrategy`;
                           ``root_samples`` (FLTrust): held out of the partitions, the server
                           trains on them as a node does (``reference_fn``)
``mode``                   ``sgd``: ``x <- x - lr * Agg(G_i)`` with ``G_i`` the per-step update:
                           ``RobustStrategy(mode="sync", server_lr=lr / (local_lr * K))``, or
                           ``mode="afa-cd", server_lr=lr / local_lr`` under a participation
                           model; ``fedavg``: ``sync``, ``server_lr=lr``; ``afa-cd``/``afa-cs``:
                           the same mode, ``server_lr=lr``
``optimizer.lr``           the server learning rate, scaled as above
``optimizer.local_lr``     the clients' SGD step
``optimizer.momentum``     server momentum (``momentum_at = "server"``)
``run.steps``              server rounds
``run.seed``               partitions, model, batches (per node and round), attacks, faults
``run.eval_every``         central evaluation on the test set at round 0, every ``eval_every``
                           rounds and at the last round; ``run.eval_batch_size``
``run.out_dir``, ``name``  results (``config.toml``, ``metrics.csv``, ``plot.png``) as ``train``
=========================  =====================================================================

Rejected, with an error naming the key: ``trainer = "peer-to-peer"`` (MoNNA has no server),
``optimizer.momentum_at = "worker"`` with momentum (clients keep no momentum across rounds),
``optimizer.weight_decay > 0``, a non-constant ``optimizer.schedule``,
``run.checkpoint_every > 0`` (no resumable Flower runs), ``run.device`` other than ``cpu``,
more than one ``[[faults]]`` entry. ``[p2p]`` is ignored, as by the parameter-server trainer.

The scaling of ``mode`` makes the server step the one of ``robustagg train`` for rules that are
positively homogeneous and odd (``R(-cX) = -c R(X)``: mean, median, trimmed mean, Krum, ...):
the rule sees the clients' model changes ``y_i - x_t = -local_lr * sum_k g_k`` rather than
``G_i``, so rules with absolute thresholds (``centered-clipping``'s ``tau``, ``clipping``) need
thresholds on that scale. Local batches differ from ``train``'s (each node draws fresh batches
each round, seeded by ``(run.seed, node, round)``), so the numbers are not bit-identical.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from robustagg.train import TrainConfig, apply_overrides
from robustagg.train import components
from robustagg._toml import read_toml
from robustagg.train.optim import resolve_schedule

#: The ``[flower]`` table: settings that only a Flower run has (defaults).
FLOWER_DEFAULTS: Dict[str, Any] = {
    "strategy": "robust",             # robust (RobustStrategy), fedavg (Flower's FedAvg), election
    "compare": [],                    # further runs in the same simulation (see COMPARE_KEYS)
    "backend": "ray",                 # ray (flwr.simulation.run_simulation) or inline (this process)
    "num_cpus": 2,                    # CPUs Ray may use
    "client_cpus": 1.0,               # CPUs per virtual node
    "ray_temp_dir": "/tmp/ray_robustagg",
    "verbose": False,                 # Flower's DEBUG logging
    "omniscient": True,               # Byzantine nodes recompute the honest updates
    "omniscient_sample": 0,           # at most this many honest partitions recomputed (0: all)
    "timeout": 3600.0,                # seconds a round waits for replies
    "vote": "run-off",                # election: run-off (certify "dpa+roe") or plurality ("dpa")
    "radii": [],                      # election: certified accuracy at these radii ([]: 0..(K-1)//2)
}
STRATEGIES = ("robust", "fedavg", "election")
BACKENDS = ("ray", "inline")
VOTES = ("run-off", "plurality")
#: What a ``[[flower.compare]]`` entry may set: the server side only (the nodes are shared).
COMPARE_KEYS = ("strategy", "aggregator", "mode", "optimizer", "vote", "radii")
COMPARE_OPTIMIZER_KEYS = ("lr", "momentum")


# ---------------------------------------------------------------------- reading
def read(config: Any, overrides: Sequence[str] = (),
         flower: Optional[Dict[str, Any]] = None) -> Tuple[TrainConfig, Dict[str, Any]]:
    """``(TrainConfig, flower options)`` from a path, a dict or a TrainConfig, with ``--set``
    ``overrides`` (``flower.num_cpus=1`` reaches the ``[flower]`` table) and ``flower``
    entries on top. Raises ``ValueError``/``TypeError`` naming the key for anything that is
    invalid or has no Flower meaning."""
    if isinstance(config, TrainConfig):
        raw = config.to_dict()
    elif isinstance(config, dict):
        raw = copy.deepcopy(config)
    elif isinstance(config, (str, os.PathLike)):
        raw = read_toml(config)
    else:
        raise TypeError(f"a configuration must be a TrainConfig, a dict or a path to a TOML file, "
                        f"got {type(config).__name__}")
    raw = apply_overrides(raw, overrides)
    table = raw.pop("flower", None) or {}
    if not isinstance(table, dict):
        raise TypeError(f"[flower] must be a table, got {type(table).__name__}")
    cfg = TrainConfig.from_dict(raw)
    check_supported(cfg)
    opts = flower_options({**table, **(flower or {})})
    for i, entry in enumerate(opts["compare"]):
        compare_config(cfg, entry, i)  # fail before anything starts
    return cfg, opts


def _expect(value: Any, types: tuple, key: str, what: str) -> Any:
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        raise TypeError(f"flower.{key} must be {what}, got {type(value).__name__} {value!r}")
    return value


def flower_options(table: Dict[str, Any]) -> Dict[str, Any]:
    """The ``[flower]`` table checked and completed with :data:`FLOWER_DEFAULTS`."""
    for key in table:
        if key not in FLOWER_DEFAULTS:
            close = difflib.get_close_matches(str(key), list(FLOWER_DEFAULTS), n=1)
            hint = f" Did you mean 'flower.{close[0]}'?" if close else ""
            raise ValueError(f"unknown key 'flower.{key}'.{hint} Valid keys in [flower]: {', '.join(FLOWER_DEFAULTS)}")
    opts = {**copy.deepcopy(FLOWER_DEFAULTS), **copy.deepcopy(table)}
    for key, choices in (("strategy", STRATEGIES), ("backend", BACKENDS), ("vote", VOTES)):
        if opts[key] not in choices:
            raise ValueError(f"flower.{key} must be one of {', '.join(choices)}; got {opts[key]!r}")
    _expect(opts["num_cpus"], (int,), "num_cpus", "a positive integer")
    _expect(opts["client_cpus"], (int, float), "client_cpus", "a number")
    _expect(opts["omniscient_sample"], (int,), "omniscient_sample", "an integer (0: all)")
    _expect(opts["timeout"], (int, float), "timeout", "a number of seconds")
    for key in ("verbose", "omniscient"):
        _expect(opts[key], (bool,), key, "true or false")
    _expect(opts["ray_temp_dir"], (str,), "ray_temp_dir", "a path")
    radii = _expect(opts["radii"], (list,), "radii", "an array of integers")
    if not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in radii):
        raise ValueError(f"flower.radii must hold integers >= 0, got {radii!r}")
    if opts["num_cpus"] < 1 or opts["client_cpus"] <= 0 or opts["omniscient_sample"] < 0 or opts["timeout"] <= 0:
        raise ValueError("flower.num_cpus >= 1, flower.client_cpus > 0, flower.omniscient_sample >= 0 and "
                         "flower.timeout > 0 are required")
    compare = _expect(opts["compare"], (list,), "compare", "an array of tables")
    for i, entry in enumerate(compare):
        if not isinstance(entry, dict):
            raise TypeError(f"flower.compare[{i}] must be a table, got {type(entry).__name__} {entry!r}")
        bad = sorted(set(entry) - set(COMPARE_KEYS))
        if bad:
            raise ValueError(f"flower.compare[{i}] may set only the server side {COMPARE_KEYS} "
                             f"(the nodes are shared by all runs); got {bad}")
    return opts


def check_supported(cfg: TrainConfig) -> None:
    """Raise ``ValueError`` listing every key of ``cfg`` that has no Flower meaning."""
    problems = []
    opt, run = cfg.optimizer, cfg.run
    if cfg.is_p2p:
        problems.append("trainer = 'peer-to-peer': MoNNA has no server, Flower always does "
                        "(use `robustagg train` for peer-to-peer runs)")
    if opt.momentum_at == "worker" and opt.momentum > 0:
        problems.append("optimizer.momentum_at = 'worker': Flower clients keep no momentum across rounds "
                        "(use momentum_at = 'server')")
    if opt.weight_decay > 0:
        problems.append("optimizer.weight_decay > 0: RobustStrategy's server step has no weight decay")
    if resolve_schedule(opt.schedule, opt.schedule_params, p2p=False)["name"] != "constant":
        problems.append(f"optimizer.schedule = {opt.schedule!r}: the server learning rate is constant on Flower")
    if run.checkpoint_every:
        problems.append("run.checkpoint_every > 0: Flower runs are not checkpointed (set it to 0)")
    if run.device != "cpu":
        problems.append(f"run.device = {run.device!r}: simulations run on CPU")
    if len(cfg.faults) > 1:
        problems.append(f"[[faults]] has {len(cfg.faults)} entries: a Flower node applies one fault")
    if problems:
        raise ValueError("this configuration cannot run on Flower:\n  - " + "\n  - ".join(problems))


def compare_config(cfg: TrainConfig, entry: Dict[str, Any], index: int) -> Tuple[str, TrainConfig, Dict[str, Any]]:
    """``(strategy kind, TrainConfig, election options)`` of one ``flower.compare`` entry."""
    raw = cfg.to_dict()
    where = f"flower.compare[{index}]"
    if "aggregator" in entry:
        raw["aggregator"] = copy.deepcopy(entry["aggregator"])  # replaces the table (name <-> pipeline)
    if "mode" in entry:
        raw["mode"] = entry["mode"]
    if "optimizer" in entry:
        if not isinstance(entry["optimizer"], dict) or set(entry["optimizer"]) - set(COMPARE_OPTIMIZER_KEYS):
            raise ValueError(f"{where}.optimizer may set only {COMPARE_OPTIMIZER_KEYS} (local_lr belongs to the "
                             f"shared nodes); got {entry['optimizer']!r}")
        raw["optimizer"].update(entry["optimizer"])
    try:
        other = TrainConfig.from_dict(raw)
        check_supported(other)
        if other.aggregator.root_samples not in (0, cfg.aggregator.root_samples):
            raise ValueError(f"aggregator.root_samples = {other.aggregator.root_samples} differs from the main run's "
                             f"{cfg.aggregator.root_samples}: the nodes' partitions leave out the main run's root samples")
        extra = flower_options({k: entry[k] for k in ("strategy", "vote", "radii") if k in entry})
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{where}: {exc}") from None
    return extra["strategy"], other, extra


# ---------------------------------------------------------------------- the mapping
def server_settings(cfg: TrainConfig) -> Dict[str, Any]:
    """``mode``, ``server_lr`` and ``server_momentum`` of :class:`RobustStrategy` for ``cfg``."""
    opt = cfg.optimizer
    if cfg.mode == "sgd":
        if components.build_participation(cfg) is None:
            mode, lr = "sync", opt.lr / (opt.local_lr * cfg.workers.local_steps)
        else:
            mode, lr = "afa-cd", opt.lr / opt.local_lr
    elif cfg.mode == "fedavg":
        mode, lr = "sync", opt.lr
    else:
        mode, lr = cfg.mode, opt.lr
    return {"mode": mode, "server_lr": float(lr), "server_momentum": float(opt.momentum)}


def roles(cfg: TrainConfig, num_classes: Optional[int] = None) -> Dict[int, Dict[str, Any]]:
    """The nodes' roles (:mod:`federated._roles`) for the attack, poisoning and fault of ``cfg``.

    Seeds of poisoning and faults are derived from ``run.seed`` as ``robustagg train`` does;
    a label-mapping poisoning gets the dataset's ``num_classes``.
    """
    n, f, seed = cfg.workers.n, cfg.workers.f, cfg.run.seed
    table: Dict[int, Dict[str, Any]] = {p: {} for p in range(n)}
    byzantine = range(n - f, n)
    if cfg.attack.name != "none":
        for p in byzantine:
            table[p].update({"byzantine": cfg.attack.name,
                             **{f"byzantine-{k}": v for k, v in cfg.attack.params.items()}})
    if cfg.poisoning.name != "none":
        from robustagg import poisoning

        params = components._seeded(poisoning.REGISTRY, cfg.poisoning.name, dict(cfg.poisoning.params), seed,
                                    "poisoning")
        function = getattr(poisoning.get(cfg.poisoning.name, **params), "function", None)
        if num_classes and function is not None and "num_classes" in inspect.signature(function).parameters:
            params.setdefault("num_classes", int(num_classes))
        for p in byzantine:
            table[p].update({"poison": cfg.poisoning.name, **{f"poison-{k}": v for k, v in params.items()}})
    if cfg.attack.name == "none" and cfg.poisoning.name == "none":
        for p in byzantine:  # as in `robustagg train`: Byzantine workers without a threat send nothing
            table[p].update({"participation": "anarchic", "participation-p": 0.0})
    if cfg.faults:
        from robustagg import faults

        spec = cfg.faults[0]
        params = components._seeded(faults.REGISTRY, spec.name, dict(spec.params), seed, "fault", 0)
        for p in range(n):
            table[p].update({"fault": spec.name, **{f"fault-{k}": v for k, v in params.items()}})
    return {p: spec for p, spec in table.items() if spec}


_CACHE: Dict[str, Any] = {}


class TrainData:
    """Picklable ``data_fn(partition_id, num_partitions) -> (X, y)`` with ``robustagg train``'s
    partitions (:func:`robustagg.train.components.partition`); cached per process."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.data = cfg.to_dict()["data"]
        self.n, self.seed = cfg.workers.n, cfg.run.seed
        self.root_samples = cfg.aggregator.root_samples  # the server's, left out of the partitions
        self.key = json.dumps([self.data, self.n, self.seed, self.root_samples], sort_keys=True, default=str)

    def _config(self) -> TrainConfig:
        return TrainConfig.from_dict({"data": self.data, "workers": {"n": self.n}, "run": {"seed": self.seed},
                                      "aggregator": {"root_samples": self.root_samples}}, validate=False)

    def root(self):
        """``(X, y)`` of the server's root samples (:func:`robustagg.train.components.root_indices`)."""
        import torch

        ds = self.load()
        idx = torch.as_tensor(components.root_indices(self._config(), ds))
        return ds.X_train[idx], ds.y_train[idx]

    def load(self):
        """The :class:`robustagg.data.Dataset` (cached)."""
        key = "dataset:" + json.dumps([self.data["name"], self.data["params"]], sort_keys=True, default=str)
        if key not in _CACHE:
            _CACHE[key] = components.load_dataset(self._config())
        return _CACHE[key]

    def parts(self) -> List[Any]:
        if self.key not in _CACHE:
            _CACHE[self.key] = components.partition(self._config(), self.load())
        return _CACHE[self.key]

    def __call__(self, partition_id: int, num_partitions: int):
        if int(num_partitions) != self.n:
            raise ValueError(f"the configuration has workers.n = {self.n} partitions, the node says {num_partitions}")
        import torch

        ds = self.load()
        idx = torch.as_tensor(self.parts()[int(partition_id)])
        return ds.X_train[idx], ds.y_train[idx]

    def test(self):
        """``(X_test, y_test)``."""
        ds = self.load()
        return ds.X_test, ds.y_test


def client_settings(cfg: TrainConfig, opts: Dict[str, Any], rule: Any, num_classes: Optional[int]) -> Dict[str, Any]:
    """Keyword arguments of :func:`federated.make_client_app` (besides ``model_fn``, ``data_fn``)."""
    return dict(local_steps=cfg.workers.local_steps, lr=cfg.optimizer.local_lr, batch_size=cfg.workers.batch_size,
                momentum=0.0, roles=roles(cfg, num_classes), seed=cfg.run.seed, omniscient=opts["omniscient"],
                omniscient_sample=opts["omniscient_sample"] or None, attack_aggregator=rule, threads=1,
                replacement=cfg.data.replacement, participation=components.build_participation(cfg))


def build_strategy(kind: str, cfg: TrainConfig, election: Dict[str, Any], model_fn: Any = None, test: Any = None):
    """The server strategy of one run: ``robust``, ``fedavg`` or ``election``."""
    n = cfg.workers.n
    common = dict(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n)
    if kind == "fedavg":
        from flwr.serverapp.strategy import FedAvg

        return FedAvg(**common)
    if kind == "election":
        from federated.election import ElectionStrategy

        return ElectionStrategy(model_fn, test, vote=election["vote"], radii=election["radii"] or None,
                                min_nodes=n, eval_every=cfg.run.eval_every, eval_batch_size=cfg.run.eval_batch_size)
    from federated.strategy import RobustStrategy

    settings = server_settings(cfg)
    reference = None
    if cfg.aggregator.root_samples:  # FLTrust (validated): the server's update on its root samples
        from federated._reference import RootReference

        reference = RootReference(model_fn, *TrainData(cfg).root(), steps=cfg.workers.local_steps,
                                  lr=cfg.optimizer.local_lr, batch_size=cfg.workers.batch_size, seed=cfg.run.seed,
                                  replacement=cfg.data.replacement, per_step=settings["mode"] != "sync")
    return RobustStrategy(components.build_rule(cfg), **settings, **common, reference_fn=reference)


def runs(cfg: TrainConfig, opts: Dict[str, Any]) -> List[Tuple[str, TrainConfig, Dict[str, Any]]]:
    """``(kind, config, election options)`` of the main run and every ``compare`` entry."""
    main = (opts["strategy"], cfg, {"vote": opts["vote"], "radii": opts["radii"]})
    return [main] + [compare_config(cfg, entry, i) for i, entry in enumerate(opts["compare"])]


def label(kind: str, cfg: TrainConfig) -> str:
    """A short name of a run (``robust(trimmed-mean)``, ``fedavg``, ``election``)."""
    if kind != "robust":
        return kind
    agg = cfg.aggregator
    rule = "+".join(s.name for s in agg.pipeline) if agg.pipeline else agg.name
    return f"robust({rule})"


def to_toml(cfg: TrainConfig, opts: Dict[str, Any]) -> str:
    """The full configuration, ``[flower]`` included (what ``read`` reads back)."""
    from robustagg.train import _toml

    return _toml.dumps({**cfg.to_dict(), "flower": opts})
