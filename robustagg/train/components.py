"""Building the run's objects from a :class:`~robustagg.train.config.TrainConfig` (checked
first by :func:`robustagg.train.validation.validate`, which calls these builders).

Every builder is a plain function of the configuration, so the in-process trainers and the
``torch.distributed`` workers build identical objects from the same file and seed. This
module reads the configuration's attributes only: it does not import
:mod:`robustagg.train.config` (which imports it to check what it reads).
"""

from __future__ import annotations

import inspect
import zlib
from typing import TYPE_CHECKING, Any, List, Optional

import numpy as np

from robustagg import aggregators
from robustagg._registry import normalize_name

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
