"""Building the run's objects from a :class:`~robustagg.train.config.TrainConfig`, and checking
the configuration before anything heavy happens (:func:`validate`, which returns the objects
it built as :class:`Components`, the ones the trainer then uses).

Every builder is a plain function of the configuration, so the in-process trainers and the
``torch.distributed`` workers build identical objects from the same file and seed. This
module reads the configuration's attributes only: it does not import
:mod:`robustagg.train.config` (which imports it to check what it reads).
"""

from __future__ import annotations

import inspect
import math
import os
import re
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, List, Optional

import numpy as np

from robustagg import aggregators
from robustagg._registry import check_params, normalize_name
from robustagg._validation import check_choice, check_float, check_int
from robustagg.train.optim import resolve_schedule

if TYPE_CHECKING:  # annotations only: config imports this module
    from robustagg.train.config import Component, TrainConfig

TRAINERS = ("parameter-server", "peer-to-peer")
MODES = ("sgd", "fedavg", "afa-cd", "afa-cs")
MIXINGS = ("nna", "dsgd", "cc")
#: ``run.on_nonfinite``: what a step with more than ``f`` non-finite updates does
NONFINITE_POLICIES = ("skip", "stop")


def derive_seed(seed: int, *keys: Any) -> int:
    """An independent 63-bit seed for ``(seed, *keys)``; string keys are hashed with CRC-32.

    All of a run's randomness flows from ``run.seed`` through this function, keyed by what it
    is for and by the step (``derive_seed(seed, "dropout", t, worker)``), so the draws of step
    ``t`` do not depend on the steps before it: what makes resumed runs exact.
    """
    ints = [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    state = np.random.SeedSequence([int(seed)] + ints).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


# ---------------------------------------------------------------------- builders


def build_rule(cfg: "TrainConfig") -> aggregators.Aggregator:
    """The server's rule (or pipeline); each stage's ``f`` defaults to :attr:`TrainConfig.rule_f`."""
    agg = cfg.aggregator
    if agg.pipeline:
        stages = []
        for i, stage in enumerate(agg.pipeline):
            f = cfg.rule_f if stage.f is None else stage.f
            stages.append(_rule(stage.name, f, stage.params, f"aggregator.pipeline[{i}]", cfg.run.seed))
        return aggregators.pipeline(*stages)
    return _rule(agg.name, cfg.rule_f, agg.params, "aggregator", cfg.run.seed)


def _seeded(registry: Any, name: str, params: dict, seed: int, *keys: Any) -> dict:
    """``params`` plus ``seed = derive_seed(seed, *keys)`` when the component takes a ``seed``
    and none was given (so ``run.seed`` reaches every randomised component)."""
    try:
        accepted = inspect.signature(registry.resolve(name)).parameters
    except (TypeError, ValueError):
        return params
    if "seed" in accepted and "seed" not in params:
        return {**params, "seed": derive_seed(seed, *keys) % (2 ** 31)}
    return params


def _rule(name: str, f: int, params: dict, where: str, seed: int = 0) -> aggregators.Aggregator:
    if "f" in params:
        raise ValueError(f"{where}.params must not hold 'f': set {where}.f")
    try:
        params = _seeded(aggregators.REGISTRY, name, params, seed, "rule", where)
        return aggregators.get(name, f=f, **params)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{where}: {exc}") from None


def _component(module: Any, spec: "Component", where: str, seed: Optional[int], *keys: Any) -> Any:
    """``module.get(spec.name, **spec.params)``, errors prefixed with ``where``; with a ``seed``,
    a component that takes one and was given none gets ``derive_seed(seed, *keys)``."""
    try:
        params = spec.params if seed is None else _seeded(module.REGISTRY, spec.name, spec.params, seed, *keys)
        return module.get(spec.name, **params)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{where}: {exc}") from None


def build_attack(cfg: "TrainConfig"):
    """The update attack of the Byzantine workers, or ``None`` (``attack.name = "none"``).

    Not seeded here: the trainers hand the attack a generator seeded per step."""
    if normalize_name(cfg.attack.name) == "none":
        return None
    from robustagg import attacks

    return _component(attacks, cfg.attack, "attack", None)


def build_poisoner(cfg: "TrainConfig"):
    """The data poisoning applied to the Byzantine workers' partitions, or ``None``."""
    if normalize_name(cfg.poisoning.name) == "none":
        return None
    from robustagg import poisoning

    return _component(poisoning, cfg.poisoning, "poisoning", cfg.run.seed, "poisoning")


def build_faults(cfg: "TrainConfig"):
    """``faults.Compose`` of the configured faults (in order), or ``None``."""
    if not cfg.faults:
        return None
    from robustagg import faults

    built = [_component(faults, spec, f"faults[{i}]", cfg.run.seed, "fault", i) for i, spec in enumerate(cfg.faults)]
    for i, fault in enumerate(built):
        if hasattr(fault, "check_workers"):
            try:
                fault.check_workers(cfg.workers.n)
            except ValueError as exc:
                raise ValueError(f"faults[{i}].params.workers: {exc}") from None
    return faults.Compose(*built)


def build_participation(cfg: "TrainConfig"):
    """The anarchic participation model, or ``None`` when every worker sends every step with
    ``workers.local_steps`` fresh local steps (the default)."""
    part = cfg.participation
    default = (normalize_name(part.arrival.name) == "full" and not part.arrival.params
               and normalize_name(part.local_steps.name) == "fixed-steps" and not part.local_steps.params
               and normalize_name(part.delay.name) == "no-delay")
    if default:
        return None
    from robustagg import participation as P

    def make(spec: "Component", kind: type, where: str):
        obj = _component(P, spec, f"participation.{where}", None)
        if not isinstance(obj, kind):
            raise ValueError(f"participation.{where}: {spec.name!r} is not a {kind.__name__} "
                             f"(it is a {type(obj).__name__})")
        return obj

    if normalize_name(part.arrival.name) == "full":
        if part.arrival.params:
            raise TypeError("participation.arrival 'full' takes no parameters")
        arrival = P.Bernoulli(1.0)
    else:
        arrival = make(part.arrival, P.ArrivalProcess, "arrival")
    if normalize_name(part.local_steps.name) == "fixed-steps" and not part.local_steps.params:
        steps = P.FixedSteps(cfg.workers.local_steps)
    else:
        steps = make(part.local_steps, P.LocalSteps, "local_steps")
    delay = make(part.delay, P.Delay, "delay")
    seed = derive_seed(cfg.run.seed, "participation") % (2 ** 31) if part.seed is None else part.seed
    try:
        return P.Participation(cfg.workers.n, arrival=arrival, local_steps=steps, delay=delay, seed=seed)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"participation: {exc}") from None


def load_dataset(cfg: "TrainConfig"):
    from robustagg import data

    return data.load(cfg.data.name, **cfg.data.params)


def partition(cfg: "TrainConfig", dataset: Any) -> List[np.ndarray]:
    """One index array per worker (all ``n``; the Byzantine workers' data is used only when
    they poison it). The partition seed is derived from ``run.seed``. The server's root
    samples (:func:`root_indices`) are left out: the workers share the rest."""
    from robustagg import data

    params = dict(cfg.data.partition_params)
    if normalize_name(cfg.data.partition) in ("dirichlet", "non-iid"):
        params.setdefault("alpha", cfg.data.alpha)
    params.setdefault("seed", derive_seed(cfg.run.seed, "partition") % (2 ** 31))
    root = root_indices(cfg, dataset)
    if root is None:
        return data.partition(cfg.data.partition, dataset.y_train, cfg.workers.n, **params)
    import torch

    rest = np.setdiff1d(np.arange(len(dataset.y_train)), root)
    labels = dataset.y_train[torch.as_tensor(rest)] if torch.is_tensor(dataset.y_train) else dataset.y_train[rest]
    parts = data.partition(cfg.data.partition, labels, cfg.workers.n, **params)
    return [rest[np.asarray(p, dtype=np.int64)] for p in parts]


def root_indices(cfg: "TrainConfig", dataset: Any) -> Optional[np.ndarray]:
    """The server's root dataset (FLTrust's trusted data): ``aggregator.root_samples`` training
    indices drawn without replacement with a seed derived from ``run.seed``, sorted; ``None``
    when ``root_samples = 0``. No worker's partition holds them."""
    k = getattr(cfg.aggregator, "root_samples", 0)
    if not k:
        return None
    size = len(dataset.y_train)
    if k >= size:
        raise ValueError(f"aggregator.root_samples = {k} leaves no training data to the workers "
                         f"(the training set has {size} samples)")
    rng = np.random.default_rng(derive_seed(cfg.run.seed, "root") % (2 ** 31))
    return np.sort(rng.choice(size, size=k, replace=False))


def model_factory(cfg: "TrainConfig", dataset: Any):
    """A zero-argument callable building the model for ``dataset`` (seeded from ``run.seed``)."""
    from robustagg import models

    params = dict(cfg.model.params)
    params.setdefault("input_shape", dataset.input_shape)
    params.setdefault("num_classes", dataset.num_outputs)
    params.setdefault("seed", derive_seed(cfg.run.seed, "model") % (2 ** 31))
    return models.model_fn(cfg.model.name, **params)


def build_mixing_rule(cfg: "TrainConfig") -> Optional[aggregators.Aggregator]:
    """Peer-to-peer: a robustagg rule used as the mixing step, or ``None`` for nna/dsgd/cc."""
    name = normalize_name(cfg.p2p.mixing)
    if name in MIXINGS or name == "mean":
        return None
    return _rule(name, cfg.rule_f, cfg.p2p.mixing_params, "p2p.mixing", cfg.run.seed)


# ---------------------------------------------------------------------- validation


@dataclass
class Components:
    """The objects a configuration describes, built once by :func:`validate`.

    Attributes
    ----------
    rule : Aggregator or None
        The server's rule or pipeline (parameter server; ``None`` for peer-to-peer).
    attack, poisoner, faults, participation : object or None
        ``None`` when the configuration has none (participation: the default, everyone fresh).
    mixing_rule : Aggregator or None
        Peer-to-peer: a robustagg rule used as the mixing step (``None`` for nna/dsgd/cc).
    """

    rule: Any = None
    attack: Any = None
    poisoner: Any = None
    faults: Any = None
    participation: Any = None
    mixing_rule: Any = None


def validate(cfg: "TrainConfig") -> Components:
    """Check names, parameters and bounds, raising ``ValueError``/``TypeError`` naming the key;
    return the components built on the way (:class:`Components`)."""
    check_choice(cfg.trainer, "trainer", TRAINERS + ("ps", "p2p"))
    check_choice(cfg.mode, "mode", MODES)
    w, opt, run = cfg.workers, cfg.optimizer, cfg.run
    n = check_int(w.n, "workers.n", minimum=1)
    f = check_int(w.f, "workers.f", minimum=0)
    if f >= n:
        raise ValueError(f"workers.f must be < workers.n (got n={n}, f={f}): at least one worker must be honest")
    check_int(w.batch_size, "workers.batch_size", minimum=1)
    check_int(w.local_steps, "workers.local_steps", minimum=1)
    check_int(cfg.aggregator.root_samples, "aggregator.root_samples", minimum=0)
    for key in ("lr", "local_lr", "weight_decay"):
        value = getattr(opt, key)
        check_float(value, f"optimizer.{key}", minimum=0.0, strict_min=key != "weight_decay")
        if not math.isfinite(value):
            raise ValueError(f"optimizer.{key} must be finite, got {value}")
    check_float(opt.momentum, "optimizer.momentum", minimum=0.0, maximum=1.0, strict_max=True)
    check_choice(opt.momentum_at, "optimizer.momentum_at", ("server", "worker"))
    resolve_schedule(opt.schedule, opt.schedule_params, p2p=cfg.is_p2p)
    check_int(run.steps, "run.steps", minimum=0)
    check_int(run.seed, "run.seed", minimum=0)
    check_int(run.eval_every, "run.eval_every", minimum=1)
    check_int(run.checkpoint_every, "run.checkpoint_every", minimum=0)
    check_int(run.eval_batch_size, "run.eval_batch_size", minimum=1)
    if not run.name or any(sep in run.name for sep in ("/", "\\")) or run.name in (".", ".."):
        raise ValueError(f"run.name must be a plain directory name, got {run.name!r}")
    check_choice(run.on_nonfinite, "run.on_nonfinite", NONFINITE_POLICIES)
    if run.checkpoint_every and not run.out_dir:
        raise ValueError("run.checkpoint_every needs run.out_dir (checkpoints go to <out_dir>/<name>/); "
                         "set run.checkpoint_every = 0 to write nothing (the CLI's --out '' does)")
    check_out_dir(run.out_dir, run.name)
    if not re.fullmatch(r"cpu|cuda(:\d+)?", run.device):
        raise ValueError(f"run.device must be 'cpu' or 'cuda[:i]', got {run.device!r}")
    _check_data_and_model(cfg)
    attack, poisoner = build_attack(cfg), build_poisoner(cfg)
    if attack is not None and poisoner is not None:
        raise ValueError("set either attack.name or poisoning.name: the f Byzantine workers either send crafted "
                         "updates or train honestly on poisoned data")
    if (attack is not None or poisoner is not None) and f == 0:
        what = f"attack {cfg.attack.name!r}" if attack is not None else f"poisoning {cfg.poisoning.name!r}"
        raise ValueError(f"{what} needs Byzantine workers: set workers.f >= 1")
    if cfg.is_p2p:
        return Components(attack=attack, poisoner=poisoner, mixing_rule=_check_p2p(cfg))
    faults, participation = build_faults(cfg), build_participation(cfg)
    rule = build_rule(cfg)
    _check_root(cfg, rule)
    need = rule.min_inputs()
    if need > n:
        bound = "" if cfg.aggregator.pipeline else f" ({rule.bound})"
        raise ValueError(
            f"aggregator {rule.name!r} with f={cfg.rule_f} needs at least {need} inputs{bound}, but the server "
            f"receives at most workers.n = {n} updates per step; lower aggregator.f or add workers")
    return Components(rule=rule, attack=attack, poisoner=poisoner, faults=faults, participation=participation)


def _check_root(cfg: "TrainConfig", rule: Any) -> None:
    """FLTrust needs the server's root data, and only FLTrust uses it."""
    from robustagg.aggregators.fltrust import fltrust_stage

    uses = fltrust_stage(rule) is not None
    if uses and not cfg.aggregator.root_samples:
        raise ValueError("aggregator 'fltrust' needs the server's own gradient: set aggregator.root_samples "
                         "(e.g. 100 training samples held by the server)")
    if cfg.aggregator.root_samples and not uses:
        raise ValueError(f"aggregator.root_samples = {cfg.aggregator.root_samples} is read only by fltrust "
                         f"(the rule or the pipeline's last stage), not by {rule.name!r}; set it to 0")


def check_device(device: str, key: str = "run.device") -> None:
    """Raise a one-line ``ValueError`` unless this torch has ``device`` (``cpu`` or ``cuda[:i]``).

    Not part of :func:`validate` (a configuration for a GPU machine reads on any machine):
    the trainers call it before loading data, the distributed launcher before forming the group.
    """
    import torch

    if device == "cpu":
        return
    if not torch.cuda.is_available():
        raise ValueError(f"{key} = {device!r}, but this torch has no usable CUDA device "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use 'cpu'")
    index = device.partition(":")[2]
    if index and int(index) >= torch.cuda.device_count():
        raise ValueError(f"{key} = {device!r}, but only {torch.cuda.device_count()} CUDA device(s) are visible")


def check_out_dir(out_dir: str, name: str) -> None:
    """``run.out_dir`` (and ``<out_dir>/<name>``) must be directories or not exist yet."""
    if not out_dir:
        return
    for path, key in ((out_dir, "run.out_dir"), (os.path.join(out_dir, name), "run.out_dir/run.name")):
        if os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"{key}: {path!r} is a file, not a directory")


def _check_data_and_model(cfg: "TrainConfig") -> None:
    from robustagg import data, models

    try:
        check_params(data.DATASETS.resolve(cfg.data.name), cfg.data.params, f"dataset {cfg.data.name!r}")
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"data: {exc}") from None
    try:
        factory = data.PARTITIONS.resolve(cfg.data.partition)
        check_params(factory, cfg.data.partition_params, f"partition {cfg.data.partition!r}")
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"data.partition: {exc}") from None
    for reserved in ("labels", "n_workers"):
        if reserved in cfg.data.partition_params:
            raise ValueError(f"data.partition_params must not set {reserved!r} (it comes from the run)")
    check_float(cfg.data.alpha, "data.alpha", minimum=0.0, strict_min=True)
    try:
        models.model_fn(cfg.model.name, **{k: v for k, v in cfg.model.params.items()})
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"model: {exc}") from None


def _check_p2p(cfg: "TrainConfig") -> Optional[aggregators.Aggregator]:
    """Peer-to-peer checks; returns the mixing rule (``None`` for nna/dsgd/cc)."""
    p = cfg.p2p
    n, f = cfg.workers.n, cfg.workers.f
    if cfg.mode != "sgd":
        raise ValueError(f"mode {cfg.mode!r} is a parameter-server mode; the peer-to-peer trainer has none")
    unsupported = [name for name, used in (("faults", bool(cfg.faults)),
                                           ("participation", build_participation(cfg) is not None),
                                           ("aggregator.pipeline", bool(cfg.aggregator.pipeline)),
                                           ("aggregator.root_samples", cfg.aggregator.root_samples > 0),
                                           ("optimizer.weight_decay (use p2p.l2)", cfg.optimizer.weight_decay > 0))
                   if used]
    if unsupported:
        raise ValueError(f"the peer-to-peer trainer does not use {', '.join(unsupported)}")
    check_float(p.l2, "p2p.l2", minimum=0.0)
    check_choice(p.eval_nodes, "p2p.eval_nodes", ("first", "all"))
    name = normalize_name(p.mixing)
    received = n - f if p.sample else n
    if name == "nna":
        if p.mixing_params:
            raise TypeError("p2p.mixing 'nna' takes no mixing_params")
        declared = cfg.rule_f
        if not n > 2 * max(f, declared):
            raise ValueError(f"p2p.mixing 'nna' needs n > 2f (got n={n}, workers.f={f}, declared f={declared})")
    elif name == "cc":
        extra = set(p.mixing_params) - {"tau"}
        if extra:
            raise TypeError(f"p2p.mixing 'cc' takes only 'tau', got {sorted(extra)}")
        check_float(p.mixing_params.get("tau", 1.0), "p2p.mixing_params.tau", minimum=0.0, strict_min=True)
    elif name in ("dsgd", "mean"):
        if p.mixing_params:
            raise TypeError("p2p.mixing 'dsgd' takes no mixing_params")
    else:
        rule = build_mixing_rule(cfg)
        if rule.min_inputs() > received:
            raise ValueError(f"p2p.mixing {rule.name!r} with f={cfg.rule_f} needs at least {rule.min_inputs()} "
                             f"inputs, but a node receives {received}")
        return rule
    return None

