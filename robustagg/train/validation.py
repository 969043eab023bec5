"""Checking a training configuration before anything heavy happens: :func:`validate` raises a
``ValueError``/``TypeError`` naming the key at fault and returns the objects it built on the way
(:class:`Components`), the ones the trainer then uses.

Like :mod:`robustagg.train.components`, this module reads the configuration's attributes only
and does not import :mod:`robustagg.train.config` (which imports it).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from robustagg import aggregators
from robustagg._registry import check_params, normalize_name
from robustagg._validation import check_choice, check_float, check_int
from robustagg.train.components import (MODES, NONFINITE_POLICIES, TRAINERS, build_attack, build_faults,
                                        build_mixing_rule, build_participation, build_poisoner, build_rule)
from robustagg.train.optim import resolve_schedule

if TYPE_CHECKING:  # annotations only: config imports this module
    from robustagg.train.config import TrainConfig


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
