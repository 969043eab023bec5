"""Training configuration: nested dataclasses read from a dict or a TOML file.

>>> from robustagg.train import TrainConfig
>>> cfg = TrainConfig.from_dict({"workers": {"n": 10, "f": 2}, "attack": {"name": "alie"},
...                              "aggregator": {"name": "trimmed-mean"}})
>>> cfg.aggregator.f is None, cfg.rule_f
(True, 2)
>>> cfg.with_overrides(["optimizer.lr=0.05", "aggregator.name=krum"]).aggregator.name
'krum'

Every section and key is documented in ``docs/training.md``. Reading checks, in order:

* unknown keys raise ``ValueError`` with the closest valid key (``difflib``);
* wrong types raise ``TypeError`` naming the key and the expected type (an int is accepted
  where a float is expected, nothing else is converted);
* names and parameters of datasets, models, partitions, attacks, poisoning, faults,
  participation components and rules are checked against their registries, and an ``f``
  too large for the chosen rule raises ``ValueError`` (``rule.min_inputs()``), all before
  any data is loaded (:func:`robustagg.train.validation.validate`).

Checking builds the run's components (rule, attack, poisoner, faults, participation, mixing
rule) once; the trainer built from the configuration takes them (:meth:`TrainConfig.components`)
instead of building them again.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

from robustagg import _toml
from robustagg.train import validation as _validation

Params = Dict[str, Any]


@dataclass
class Component:
    """A registered component and its parameters: ``{name = "bernoulli", params = {p = 0.5}}``."""

    name: str = "none"
    params: Params = field(default_factory=dict)


@dataclass
class DataConfig:
    name: str = "digits"
    params: Params = field(default_factory=dict)
    partition: str = "iid"
    alpha: float = 0.5
    partition_params: Params = field(default_factory=dict)
    replacement: bool = False


@dataclass
class ModelConfig(Component):
    """``[model]``: a registered model and its parameters (default the MLP)."""

    name: str = "mlp"


@dataclass
class WorkersConfig:
    n: int = 10
    f: int = 0
    batch_size: int = 32
    local_steps: int = 1


@dataclass
class ParticipationConfig:
    arrival: Component = field(default_factory=lambda: Component("full"))
    local_steps: Component = field(default_factory=lambda: Component("fixed-steps"))
    delay: Component = field(default_factory=lambda: Component("no-delay"))
    seed: Optional[int] = None


@dataclass
class StageConfig:
    name: str = "mean"
    f: Optional[int] = None
    params: Params = field(default_factory=dict)


@dataclass
class AggregatorConfig:
    name: str = "mean"
    f: Optional[int] = None
    params: Params = field(default_factory=dict)
    pipeline: List[StageConfig] = field(default_factory=list)
    root_samples: int = 0


@dataclass
class OptimizerConfig:
    lr: float = 0.1
    local_lr: float = 0.1
    momentum: float = 0.0
    momentum_at: str = "server"
    weight_decay: float = 0.0
    schedule: str = "auto"
    schedule_params: Params = field(default_factory=dict)


@dataclass
class RunConfig:
    steps: int = 100
    seed: int = 0
    eval_every: int = 10
    checkpoint_every: int = 0
    out_dir: str = "results"
    name: str = "run"
    device: str = "cpu"
    eval_batch_size: int = 1000
    on_nonfinite: str = "skip"


@dataclass
class P2PConfig:
    mixing: str = "nna"
    mixing_params: Params = field(default_factory=dict)
    l2: float = 1e-4
    sample: bool = False
    eval_nodes: str = "first"


@dataclass
class TrainConfig:
    """The whole run: one dataclass per TOML section (see ``docs/training.md``)."""

    trainer: str = "parameter-server"
    mode: str = "sgd"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    attack: Component = field(default_factory=Component)
    poisoning: Component = field(default_factory=Component)
    faults: List[Component] = field(default_factory=list)
    participation: ParticipationConfig = field(default_factory=ParticipationConfig)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    run: RunConfig = field(default_factory=RunConfig)
    p2p: P2PConfig = field(default_factory=P2PConfig)

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_dict(cls, data: Dict[str, Any], *, validate: bool = True) -> "TrainConfig":
        """Build and check a configuration from nested dicts (the parsed TOML)."""
        cfg = _build(cls, data, "")
        cfg._normalise()
        if validate:
            cfg.__dict__["_built"] = _validation.validate(cfg)
        return cfg

    def components(self) -> "_validation.Components":
        """The run's components (rule, attack, poisoner, faults, participation, mixing rule).

        The first call returns those :func:`~robustagg.train.validation.validate` built when
        the configuration was read; every later call builds fresh ones, so two trainers built
        from one configuration never share a stateful rule or fault.
        """
        built = self.__dict__.pop("_built", None)
        return built if built is not None else _validation.validate(self)

    @classmethod
    def from_toml(cls, path: Union[str, os.PathLike], overrides: Sequence[str] = ()) -> "TrainConfig":
        """Read a TOML file; ``overrides`` are ``--set`` strings (see :meth:`with_overrides`)."""
        return cls.from_dict(apply_overrides(_toml.read_toml(path), overrides))

    @classmethod
    def from_toml_string(cls, text: str, overrides: Sequence[str] = ()) -> "TrainConfig":
        return cls.from_dict(apply_overrides(_toml.loads(text), overrides))

    def with_overrides(self, overrides: Sequence[str]) -> "TrainConfig":
        """A new configuration with ``["section.key=value", ...]`` applied.

        Values are parsed as TOML (``0.1``, ``true``, ``[64, 32]``, ``{q = 0.2}``); a value
        that is not valid TOML is a string, so ``aggregator.name=krum`` needs no quotes.
        Keys inside free-form tables (``model.params.hidden=[64]``) and list indices
        (``faults.0.params.q=0.2``, ``aggregator.pipeline.1.name=krum``) are accepted.
        """
        return TrainConfig.from_dict(apply_overrides(self.to_dict(), overrides))

    # ------------------------------------------------------------------ writing
    def to_dict(self) -> Dict[str, Any]:
        """Plain nested dicts and lists (what :meth:`from_dict` reads back)."""
        return copy.deepcopy(dataclasses.asdict(self))

    def to_toml(self) -> str:
        return _toml.dumps(self.to_dict())

    # ------------------------------------------------------------------ derived values
    @property
    def honest(self) -> int:
        """Number of honest workers ``n - f``."""
        return self.workers.n - self.workers.f

    @property
    def rule_f(self) -> int:
        """The ``f`` the rule declares (``aggregator.f``, defaulting to ``workers.f``)."""
        return self.workers.f if self.aggregator.f is None else self.aggregator.f

    @property
    def is_p2p(self) -> bool:
        return self.trainer == "peer-to-peer"

    def _normalise(self) -> None:
        aliases = {"ps": "parameter-server", "parameter_server": "parameter-server", "server": "parameter-server",
                   "p2p": "peer-to-peer", "peer_to_peer": "peer-to-peer", "monna": "peer-to-peer"}
        self.trainer = aliases.get(self.trainer, self.trainer)
        self.mode = self.mode.lower().replace("_", "-")
        if self.mode == "avg":
            self.mode = "fedavg"


# ---------------------------------------------------------------------- parsing helpers

_NONE = type(None)
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "a boolean (true/false)"}


def _where(path: str) -> str:
    return path or "the configuration"


def _build(cls: Any, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise TypeError(f"{_where(path)} must be a table (got {type(data).__name__} {data!r})")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" Did you mean {_join(path, close[0])!r}?" if close else ""
            raise ValueError(f"unknown key {_join(path, key)!r}.{hint} Valid keys{' in [' + path + ']' if path else ''}: "
                             f"{', '.join(names)}")
        values[key] = _convert(value, hints[key], _join(path, key))
    return cls(**values)


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Union:
        inner = [a for a in typing.get_args(tp) if a is not _NONE]
        if value is None:
            return None
        return _convert(value, inner[0], path)
    if dataclasses.is_dataclass(tp):
        if tp is Component and isinstance(value, str):  # shorthand: arrival = "markov"
            return Component(value)
        return _build(tp, value, path)
    if origin in (list, List):
        if not isinstance(value, list):
            raise TypeError(f"{path} must be an array, got {type(value).__name__} {value!r}")
        (elem,) = typing.get_args(tp)
        return [_convert(v, elem, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict) or tp is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{path} must be a table, got {type(value).__name__} {value!r}")
        return copy.deepcopy(value)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[tp]
    if not ok:
        raise TypeError(f"{path} must be {_TYPE_NAMES[tp]}, got {type(value).__name__} {value!r}")
    return float(value) if tp is float else value


def _field_type(path: List[str]) -> Any:
    """The declared type at a dotted path of :class:`TrainConfig` (``None`` inside free tables)."""
    tp: Any = TrainConfig
    for part in path:
        origin = typing.get_origin(tp)
        if origin is Union:
            tp = [a for a in typing.get_args(tp) if a is not _NONE][0]
            origin = typing.get_origin(tp)
        if origin in (list, List):
            tp = typing.get_args(tp)[0]
            continue
        if not dataclasses.is_dataclass(tp):
            return None
        hints = typing.get_type_hints(tp)
        if part not in hints:
            return None
        tp = hints[part]
    if typing.get_origin(tp) is Union:
        tp = [a for a in typing.get_args(tp) if a is not _NONE][0]
    return tp


def apply_overrides(data: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Apply ``"a.b.c=value"`` strings to nested dicts (a copy is returned)."""
    data = copy.deepcopy(data)
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(f"an override must look like 'section.key=value', got {item!r}")
        key, raw = item.split("=", 1)
        parts = [p.strip() for p in key.strip().split(".")]
        if not all(parts):
            raise ValueError(f"bad override key {key!r}")
        raw = raw.strip()
        value = _toml.parse_scalar(raw)
        if _field_type(parts) is str and not isinstance(value, str):
            value = raw  # run.name=2024 stays a string
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                node = node[_index(part, node, parts[: i + 1])]
                continue
            if part not in node:
                default = _default_at(parts[: i + 1])
                node[part] = default if default is not None else {}
            node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            node[_index(last, node, parts)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise TypeError(f"cannot set {key!r}: {'.'.join(parts[:-1])} is not a table")
    return data


def _index(part: str, node: list, parts: List[str]) -> int:
    try:
        i = int(part)
    except ValueError:
        raise TypeError(f"{'.'.join(parts[:-1])} is an array: index it with a number, got {part!r}") from None
    if not -len(node) <= i < len(node):
        raise ValueError(f"{'.'.join(parts)}: index {i} out of range (the array has {len(node)} entries)")
    return i


def _default_at(parts: List[str]) -> Any:
    """The default value (as plain data) of a section missing from the dict being overridden."""
    tp = _field_type(parts)
    if dataclasses.is_dataclass(tp):
        return dataclasses.asdict(tp())
    if typing.get_origin(tp) in (list, List):
        return []
    return None


def load_config(source: Any, overrides: Sequence[str] = ()) -> TrainConfig:
    """A :class:`TrainConfig` from a path to a TOML file, a dict or a TrainConfig (+ overrides)."""
    if isinstance(source, TrainConfig):
        return source.with_overrides(overrides) if overrides else source
    if isinstance(source, dict):
        return TrainConfig.from_dict(apply_overrides(source, overrides))
    if isinstance(source, (str, os.PathLike)):
        return TrainConfig.from_toml(source, overrides)
    raise TypeError(f"a configuration must be a TrainConfig, a dict or a path to a TOML file, got {type(source).__name__}")
