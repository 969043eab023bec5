r"""``make_client_app``: a Flower ``ClientApp`` whose nodes can be honest or adversarial.

Honest nodes run ``local_steps`` SGD steps on their partition from the global model and
reply with the trained arrays and the metrics ``num-examples``, ``local-steps``,
``train-loss`` and ``staleness``. A node's role (see :mod:`federated._roles`) makes it
Byzantine, poisoned, faulty or anarchic.

**How a Byzantine node gets the honest statistics.** Attacks such as ALIE or the reversed
mean are functions of the honest updates. Flower runs each virtual node in a Ray worker
process (and each SuperNode on its own machine), so there is no shared memory to read the
other clients' updates from. With ``omniscient=True`` (what :func:`federated.simulate`
uses) a Byzantine node *recomputes* them: it loads the partitions of up to
``omniscient_sample`` honest nodes with the same ``data_fn`` and trains from the same global
model with the same per-(seed, partition, round) batch seeds the honest nodes use, so it
obtains the honest updates exactly (for honest nodes without their own participation,
fault or poisoning role) at the price of that extra computation. It knows which nodes are
Byzantine from ``roles`` (not from other nodes' node config). With ``omniscient=False`` (a
real deployment, where a node has only its own data) the attack sees one honest-looking
update: the one the node computes on its own partition. All Byzantine nodes seed the
attack with ``(seed, round)``, so they agree on the ``f`` rows and node ``j`` (by rank of
partition id) sends row ``j``.

References
----------
Beutel et al., "Flower: A Friendly Federated Learning Research Framework", arXiv:2007.14390, 2020.
Yang, Zhang, Khanduri, Liu, "Anarchic Federated Learning", ICML 2022.
"""

from __future__ import annotations

import pickle
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from robustagg._validation import check_float, check_int
from robustagg.data import WorkerLoader

from federated import _roles
from federated._updates import Layout

PARTITION_KEY, NUM_PARTITIONS_KEY = "partition-id", "num-partitions"
STATE_KEY = "robustagg"


def _loss_fn(y: torch.Tensor) -> torch.nn.Module:
    return torch.nn.CrossEntropyLoss() if not y.is_floating_point() else torch.nn.MSELoss()


def local_train(model_fn: Callable[[], torch.nn.Module], state: Dict[str, torch.Tensor], X: torch.Tensor,
                y: torch.Tensor, *, steps: int, lr: float, batch_size: int, momentum: float,
                seed: int, replacement: bool = False) -> Tuple[Dict[str, torch.Tensor], float]:
    """``steps`` SGD steps from ``state`` on ``(X, y)`` with batches and dropout seeded by ``seed``.

    Batches come from a :class:`robustagg.data.WorkerLoader` (epochs of shuffled batches, or
    draws with replacement when ``replacement``).

    Returns the trained state dict and the mean training loss.
    """
    model = model_fn()
    model.load_state_dict(state)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    loader = WorkerLoader(X, y, np.arange(len(X)), batch_size, seed=seed % (2 ** 62), replacement=replacement)
    loss_fn, total = _loss_fn(y), 0.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed % (2 ** 62))
        for _ in range(steps):
            xb, yb = loader.next()
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            total += float(loss.detach())
    return {k: v.detach() for k, v in model.state_dict().items()}, total / max(steps, 1)


def evaluate_model(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, batch: int = 1024) -> Tuple[float, float]:
    """``(loss, accuracy)`` of ``model`` on ``(X, y)`` (accuracy is NaN for regression)."""
    model.eval()
    loss_fn, loss, correct = _loss_fn(y), 0.0, 0
    with torch.no_grad():
        for i in range(0, len(X), batch):
            out = model(X[i:i + batch])
            loss += float(loss_fn(out, y[i:i + batch])) * len(out)
            if not y.is_floating_point():
                correct += int((out.argmax(dim=1) == y[i:i + batch]).sum())
    n = max(len(X), 1)
    return loss / n, (correct / n if not y.is_floating_point() else float("nan"))


def _load_state(context: Context) -> Dict[str, Any]:
    record = context.state.get(STATE_KEY) if hasattr(context.state, "get") else None
    if record is None:
        return {}
    return pickle.loads(record["blob"])  # written by this node's own process below, never by a peer


def _save_state(context: Context, state: Dict[str, Any]) -> None:
    context.state[STATE_KEY] = ConfigRecord({"blob": pickle.dumps(state)})


def make_client_app(model_fn: Callable[[], torch.nn.Module],
                    data_fn: Callable[[int, int], Tuple[torch.Tensor, torch.Tensor]], *,
                    local_steps: int = 10, lr: float = 0.1, batch_size: int = 32, momentum: float = 0.0,
                    roles: _roles.Roles = None, seed: int = 0, omniscient: bool = False,
                    omniscient_sample: Optional[int] = None, attack_aggregator: Any = None,
                    threads: Optional[int] = None, replacement: bool = False,
                    participation: Any = None) -> ClientApp:
    """A ``ClientApp`` training ``model_fn()`` on ``data_fn(partition_id, num_partitions)``.

    Parameters
    ----------
    model_fn : callable
        Zero-argument factory of the ``torch.nn.Module`` (e.g. ``robustagg.models.model_fn``);
        its state dict keys are the ArrayRecord keys.
    data_fn : callable
        ``data_fn(partition_id, num_partitions) -> (X, y)``: the node's training tensors. It
        is called every round in every worker process, so it should cache (e.g. a
        module-level ``functools.lru_cache``) and be picklable (a module-level function or
        ``functools.partial``).
    local_steps, lr, batch_size, momentum : int, float, int, float
        Local SGD of honest nodes (anarchic nodes draw their own number of steps).
    roles : mapping or callable, optional
        ``{partition_id: {"byzantine": "reverse", ...}}`` (see :mod:`federated._roles`), or a
        callable ``roles(context)``; ``context.node_config`` overrides it per node.
    seed : int
        Batches of node ``p`` in round ``t`` come from seed ``(seed, p, t)``.
    omniscient : bool
        Let Byzantine nodes recompute honest updates of other partitions (simulation only;
        see the module docstring).
    omniscient_sample : int, optional
        At most this many honest partitions are recomputed (default: all).
    attack_aggregator : robustagg rule, optional
        The server's rule, for attacks that search against it (``*-opt``).
    threads : int, optional
        ``torch.set_num_threads`` in the handlers (simulations use 1 per virtual node).
    replacement : bool
        Draw local batches with replacement instead of epochs of shuffled batches.
    participation : robustagg.participation.Participation, optional
        One anarchic participation model over all ``num_partitions`` nodes, shared by every
        node (what :func:`federated.simulate` builds from a TOML ``[participation]`` section):
        node ``p`` takes part in round ``t`` iff ``participation.round(t - 1)`` has an arrival
        of worker ``p``, with that arrival's local steps and staleness. Every node evaluates
        the same model with the same seed, so they agree, as the in-process trainer's plan
        does. Byzantine (attack) nodes ignore it and send every round (the worst case, as in
        ``robustagg train``); a node's own ``participation`` role takes precedence.

    Honest nodes that train fresh from the global model reply with their trained arrays
    exactly (no round trip through an update); others reply ``x_t + delta``.

    Returns
    -------
    flwr.clientapp.ClientApp
        With ``train`` and ``evaluate`` handlers. Nodes read ``partition-id`` and
        ``num-partitions`` from their node config (set by the simulation, or by
        ``--node-config`` in a deployment).
    """
    local_steps = check_int(local_steps, "local_steps", minimum=1)
    shared_participation = participation
    lr = check_float(lr, "lr", minimum=0.0, strict_min=True)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    seed = check_int(seed, "seed", minimum=0)
    app = ClientApp()

    def honest_delta(layout: Layout, start: np.ndarray, template: ArrayRecord, partition: int,
                     num_partitions: int, rnd: int, steps: int, poison=None):
        X, y = data_fn(partition, num_partitions)
        if poison is not None:
            X, y, _ = poison(X, y)
        start_record = layout.to_record(start, template)
        trained, loss = local_train(model_fn, start_record.to_torch_state_dict(), X, y, steps=steps, lr=lr,
                                    batch_size=batch_size, momentum=momentum,
                                    seed=_roles.derive_seed(seed, partition, rnd), replacement=replacement)
        new = layout.flatten(ArrayRecord(trained))
        return new - start, loss, len(X), trained

    def byzantine_delta(role, layout, g, template, partition, num_partitions, rnd, context, own):
        from robustagg import attacks

        attack = attacks.get(role.byzantine, **role.byzantine_params)
        byz = _roles.byzantine_partitions(roles, context, num_partitions)
        if partition not in byz:
            byz = sorted(set(byz) | {partition})
        if omniscient:
            honest = [p for p in range(num_partitions) if p not in byz][:omniscient_sample]
            rows = [honest_delta(layout, g, template, p, num_partitions, rnd, local_steps)[0] for p in honest]
        else:
            rows = []
        H = torch.from_numpy(np.stack(rows if rows else [own]))
        generator = torch.Generator().manual_seed(_roles.derive_seed(seed, rnd, 2, 2))  # apart from batch seeds
        B = attack(H, len(byz), aggregator=attack_aggregator, generator=generator)
        return B[byz.index(partition)].numpy().astype(layout.dtype, copy=False)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        if threads:
            torch.set_num_threads(threads)
        partition = int(context.node_config[PARTITION_KEY])
        num_partitions = int(context.node_config[NUM_PARTITIONS_KEY])
        configs = list(msg.content.config_records.values())
        rnd = int(configs[0].get("server-round", 0)) if configs else 0
        t = max(rnd - 1, 0)
        role = _roles.node_role(partition, context.node_config, roles, context)
        global_record = next(iter(msg.content.array_records.values()))
        layout = Layout(global_record)
        g = layout.flatten(global_record)
        state = _load_state(context)
        if t <= state.get("last-round", -1):  # a new strategy run on the same nodes: forget the old one
            state = {}
        state["last-round"] = t

        steps, staleness, start = local_steps, 0, g
        model = _roles.participation_model(role, _roles.derive_seed(seed, partition, 1, 1), local_steps)
        worker = 0
        if model is None and shared_participation is not None and not role.byzantine:
            model, worker = shared_participation, partition
        if model is not None:
            history = state.setdefault("history", {})
            history[t] = g
            for old in [k for k in history if k < t - model.max_delay]:
                del history[old]
            arrivals = [a for a in model.round(t) if a.worker == worker]
            if not arrivals:
                _save_state(context, state)
                return _skipped(msg, partition)
            steps, staleness = arrivals[0].local_steps, arrivals[0].staleness
            key = min(k for k in history if k >= t - staleness)  # the oldest kept if that round is gone
            start, staleness = history[key], t - key

        poison = None
        if role.poison:
            from robustagg import poisoning

            params = dict(role.poison_params)
            params.setdefault("seed", _roles.derive_seed(seed, partition) % (2 ** 32))
            poison = poisoning.get(role.poison, **params)
        delta, loss, n_examples, trained = honest_delta(layout, start, global_record, partition, num_partitions,
                                                        rnd, steps, poison)
        exact = start is g  # the trained arrays themselves can be sent
        if role.byzantine:
            exact = False
            delta = byzantine_delta(role, layout, g, global_record, partition, num_partitions, rnd, context, delta)
        if role.fault:
            from robustagg import faults

            fault = state.get("fault")
            if fault is None:
                fault = faults.get(role.fault, **role.fault_params)
            delta = fault(t, partition, torch.from_numpy(np.ascontiguousarray(delta)))
            state["fault"] = fault
            if delta is None:
                _save_state(context, state)
                return _skipped(msg, partition)
            delta, exact = delta.numpy(), False
        _save_state(context, state)
        reply_arrays = ArrayRecord(trained) if exact else layout.to_record(g + delta, ArrayRecord(trained))
        reported = role.report_num_examples if role.report_num_examples is not None else n_examples
        metrics = MetricRecord({"num-examples": reported, "local-steps": steps, "train-loss": loss,
                                "staleness": staleness})
        return Message(RecordDict({"arrays": reply_arrays, "metrics": metrics, "node": _node(partition)}),
                       reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        if threads:
            torch.set_num_threads(threads)
        partition = int(context.node_config[PARTITION_KEY])
        X, y = data_fn(partition, int(context.node_config[NUM_PARTITIONS_KEY]))
        model = model_fn()
        model.load_state_dict(next(iter(msg.content.array_records.values())).to_torch_state_dict())
        loss, acc = evaluate_model(model, X, y)
        metrics = MetricRecord({"num-examples": len(X), "eval-loss": loss, "eval-accuracy": acc})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def _node(partition: int) -> ConfigRecord:
    """Who replies: the node's partition id (``RobustStrategy.history`` names nodes by it)."""
    return ConfigRecord({PARTITION_KEY: int(partition)})


def _skipped(msg: Message, partition: int) -> Message:
    """The reply of a node that does not take part in this round (no arrays)."""
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": 0, "skipped": 1}),
                               "node": _node(partition)}), reply_to=msg)


__all__: List[str] = ["evaluate_model", "local_train", "make_client_app"]
