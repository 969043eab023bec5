"""What a client node is in an experiment: honest, Byzantine, poisoned, faulty, anarchic.

A node's role comes from two places, merged with the node config winning:

1. ``roles``, given to :func:`federated.make_client_app`: ``{partition_id: {key: value}}``
   (or a callable ``roles(context)`` returning that mapping). Simulations use this, since
   ``run_simulation`` gives every virtual node the same config apart from its partition.
2. ``context.node_config``, set per SuperNode with ``flower-supernode --node-config``.

Keys (values are Flower config scalars: str, int, float, bool):

``byzantine=<attack>``
    send the attack's update (``robustagg.attacks.available()``); ``byzantine-<param>=v``
    sets the attack's parameter ``<param>`` (dashes become underscores, e.g.
    ``byzantine-s=10``); ``byzantine-num-examples=N`` reports ``N`` examples (a lie).
``poison=<poisoning>``
    train honestly on poisoned data (``robustagg.poisoning.available()``),
    ``poison-<param>=v`` (e.g. ``poison-fraction=0.5``). ``label-flip`` infers the number
    of classes from the node's own labels: pass ``poison-num-classes`` when a partition may
    miss the top classes.
``fault=<fault>``
    pass the update through a system fault (``robustagg.faults.available()``),
    ``fault-<param>=v`` (e.g. ``fault-q=0.3``); a missing update is a skipped round.
``participation=<model>``
    anarchic participation: ``anarchic`` / ``bernoulli`` (arrive with probability
    ``participation-p``, default 0.5) or ``markov`` (``participation-p-on``,
    ``participation-p-off``); local steps uniform in ``participation-min-steps`` (1) ..
    ``participation-max-steps`` (the app's ``local_steps``); staleness uniform in
    ``0 .. participation-max-delay`` (0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Union

import numpy as np

KINDS = ("byzantine", "poison", "fault", "participation")
BYZANTINE_RESERVED = ("num-examples",)

Roles = Union[None, Mapping[Any, Mapping[str, Any]], Callable[[Any], Mapping[Any, Mapping[str, Any]]]]


@dataclass
class Role:
    """The parsed role of one node (``None`` fields: the node behaves honestly there)."""

    byzantine: Optional[str] = None
    byzantine_params: Dict[str, Any] = field(default_factory=dict)
    report_num_examples: Optional[float] = None
    poison: Optional[str] = None
    poison_params: Dict[str, Any] = field(default_factory=dict)
    fault: Optional[str] = None
    fault_params: Dict[str, Any] = field(default_factory=dict)
    participation: Optional[str] = None
    participation_params: Dict[str, Any] = field(default_factory=dict)


def role_table(roles: Roles, context: Any) -> Dict[int, Dict[str, Any]]:
    """``roles`` as ``{partition id (int): {key: value}}`` (calling it with ``context`` if callable)."""
    if roles is None:
        return {}
    table = roles(context) if callable(roles) else roles
    return {int(k): dict(v) for k, v in dict(table).items()}


def parse_role(spec: Mapping[str, Any]) -> Role:
    """A :class:`Role` from flat ``key=value`` pairs (see the module docstring)."""
    role = Role()
    for key, value in spec.items():
        kind, _, param = str(key).partition("-")
        if kind not in KINDS:
            continue
        if not param:
            if value in (None, "", "none", False):
                continue
            if not isinstance(value, str):
                raise TypeError(f"node role {key}={value!r}: expected a name (str)")
            setattr(role, kind, value)
        elif kind == "byzantine" and param in BYZANTINE_RESERVED:
            role.report_num_examples = float(value)
        else:
            getattr(role, f"{kind}_params")[param.replace("-", "_")] = value
    return role


def node_role(partition_id: int, node_config: Mapping[str, Any], roles: Roles, context: Any = None) -> Role:
    """The role of the node holding ``partition_id``: ``roles`` entry updated by ``node_config``."""
    spec = dict(role_table(roles, context).get(int(partition_id), {}))
    spec.update({k: v for k, v in dict(node_config).items() if str(k).partition("-")[0] in KINDS})
    return parse_role(spec)


def byzantine_partitions(roles: Roles, context: Any, num_partitions: int) -> list:
    """Partition ids that ``roles`` marks Byzantine (what an omniscient adversary knows)."""
    table = role_table(roles, context)
    return sorted(p for p, spec in table.items() if parse_role(spec).byzantine and 0 <= p < num_partitions)


def participation_model(role: Role, seed: int, default_steps: int):
    """The node's own :class:`robustagg.participation.Participation` (``n = 1``), or ``None``."""
    if role.participation is None:
        return None
    from robustagg import participation as part

    p = dict(role.participation_params)
    name = role.participation.lower()
    if name in ("anarchic", "bernoulli"):
        arrival = part.Bernoulli(float(p.pop("p", 0.5)))
    elif name in ("markov", "markov-on-off"):
        arrival = part.MarkovOnOff(float(p.pop("p_on", 0.5)), float(p.pop("p_off", 0.5)))
    else:
        raise ValueError(f"unknown participation model {role.participation!r}; use anarchic, bernoulli or markov")
    low = int(p.pop("min_steps", 1))
    high = int(p.pop("max_steps", max(default_steps, low)))
    max_delay = int(p.pop("max_delay", 0))
    if p:
        raise ValueError(f"unknown participation parameter(s) {sorted(p)}; "
                         "use p, p_on, p_off, min_steps, max_steps, max_delay")
    delay = part.UniformDelay(max_delay) if max_delay > 0 else None
    return part.Participation(1, arrival=arrival, local_steps=part.UniformSteps(low, high), delay=delay,
                              seed=seed)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (``numpy.random.SeedSequence``): same parts, same seed."""
    state = np.random.SeedSequence([int(x) for x in parts]).generate_state(2, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))
