r"""``RobustStrategy``: any robustagg rule as a Flower strategy (Message API).

The strategy subclasses Flower's :class:`~flwr.serverapp.strategy.FedAvg` and keeps its
node sampling, message construction and evaluation plumbing; only the aggregation of
training replies is replaced.
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg, Result

from robustagg._validation import check_choice, check_float, check_int
from robustagg.aggregators import Aggregator, ops
from robustagg.aggregators.fltrust import fltrust_stage

from federated import _rules
from federated._metrics import (check_weight_key, log_received, log_round, mean_metrics, train_metrics,
                                wait_for_nodes)
from federated._reference import reference_vector
from federated._collect import LOCAL_STEPS_KEY, SKIPPED_KEY, collect
from federated._updates import Layout, split_records

logger = logging.getLogger("flwr.robustagg")

__all__ = ["RobustStrategy", "MODES", "LOCAL_STEPS_KEY", "SKIPPED_KEY", "mean_metrics"]

MODES = ("sync", "afa-cd", "afa-cs")


class RobustStrategy(FedAvg):
    r"""Flower strategy that aggregates client *updates* with a Byzantine-robust rule.

    Each round the strategy remembers the global arrays :math:`x_t` it sends. A reply of
    node :math:`i` with arrays :math:`y_i` becomes the update :math:`u_i = y_i - x_t`,
    flattened over all floating-point layers into one vector (or one per layer with
    ``per_layer=True``). The rule :math:`R` combines the accepted updates and the server
    steps with learning rate :math:`\eta` and heavy-ball momentum :math:`\beta`:

    .. math:: m_{t+1} = \beta\, m_t + R(u_1, \dots, u_n), \qquad x_{t+1} = x_t + \eta\, m_{t+1}

    With ``server_lr=1`` and no momentum, ``mean`` gives FedAvg with equal weights and every
    translation-equivariant rule gives the same model as the rule applied to the weights.

    **Client-reported sample counts are never used as weights**: a Byzantine client can
    report any ``num-examples``, and weighting by it lets one client outweigh all the
    others. Every accepted reply counts once; ``num-examples`` only enters the (reported,
    unweighted) metrics.

    **Failures.** Replies carrying an error, or a ``skipped`` metric and no arrays (a client
    that chose not to take part), are *absent*. A reply is *rejected*, with a warning and
    without stopping the server, when its arrays do not match the global arrays (missing or
    extra keys, another shape, dtype or encoding, bytes after the data), it holds NaN/Inf, or
    it carries no or several ArrayRecords. A node counts once per round: its first valid
    reply; later ones are ignored (``replayed``). When fewer updates remain than the rule
    needs (``rule.min_inputs()``, e.g. Bulyan's :math:`4f + 3`), or the rule raises or
    returns NaN/Inf, the round is **skipped** with a warning and the model is unchanged;
    ``start`` refuses a sampling that can never give the rule enough updates.

    **Anarchic modes** (Yang et al., 2022; ``docs/algorithms.md``). Clients report their
    number of local steps :math:`K_i` as the ``local-steps`` metric (1 when absent; values
    that are not finite and >= 1 reject the reply); the update becomes the per-step average
    :math:`u_i / K_i`, i.e. :math:`-\eta_L G_i` for a worker that ran :math:`K_i` SGD
    steps with step :math:`\eta_L`.

    * ``"afa-cd"`` (cross-device): the rule combines the updates that arrived this round.
    * ``"afa-cs"`` (cross-silo): the server stores the latest update of every node, keyed by
      node id, zero for a node not heard from yet; arrivals overwrite their entry and the rule
      combines all :math:`M` stored updates, even in a round in which nobody arrives. The
      :math:`M` nodes are those the grid reports as connected when a round is configured
      (:meth:`flwr.serverapp.Grid.get_node_ids`), plus any node that replied; a node that
      connects later joins with a zero entry. Set ``server_lr`` to about the mean number of
      local steps to match the scale of ``"sync"``.

    Parameters
    ----------
    aggregator : str or robustagg.Aggregator
        A rule or pipeline object, or a registered name built with ``robustagg.get(name, f=f)``.
    pre : str, robustagg.PreAggregator or sequence of them, optional
        Pre-aggregators applied before ``aggregator`` (e.g. ``"nnm"``).
    f : int
        Declared number of Byzantine clients, used only to build rules given by name.
    server_lr : float
        Server learning rate :math:`\eta` (> 0).
    server_momentum : float
        Server momentum :math:`\beta \in [0, 1)`.
    per_layer : bool
        Aggregate each floating-point array separately, with its own copy of the rule.
    mode : {"sync", "afa-cd", "afa-cs"}
    reference_fn : callable, optional
        FLTrust's trusted direction (the rule, or a pipeline's last stage, is ``fltrust``):
        ``reference_fn(arrays, server_round)`` gets the global arrays :math:`x_t` and returns
        the server's own update on its root data, in the space of the aggregated updates
        (:math:`y - x_t` after local training like a client's; per local step in the AFA
        modes): a ``(d,)`` vector of the floating-point arrays flattened in record order, or
        a mapping ``{key: array}`` over them (an ``ArrayRecord`` included). It is called once
        per aggregated round, before the rule; when it raises or returns a wrong shape or
        NaN/Inf, the round is skipped with the reason. Without it FLTrust falls back to the
        median of the updates (a warning says so).
    *fedavg_args, **fedavg_kwargs
        :class:`flwr.serverapp.strategy.FedAvg`'s arguments, positionally after the rule or
        by keyword (``fraction_train``, ``fraction_evaluate``, ``min_train_nodes``, ...).
        ``train_metrics_aggr_fn`` / ``evaluate_metrics_aggr_fn`` default here to
        :func:`federated.mean_metrics` (FedAvg's shape, unweighted).

    Attributes
    ----------
    rule : robustagg.Aggregator
        The rule (pipeline) applied to the updates.
    history : list of dict
        One entry per aggregated round: ``round``, ``accepted`` / ``absent`` / ``replayed``
        nodes, ``rejected`` ({node: reason}), ``skipped`` (bool) and ``reason``, ``trusted`` /
        ``weights`` when the rule exposes them, ``reference`` (FLTrust: ``"server"`` or
        ``"median"``), ``seconds`` spent in ``aggregate_train`` and
        ``rule_seconds`` of it in the rule itself. Nodes are partition ids when
        :attr:`partitions` knows them all (``ids == "partition"``, ``node_ids`` maps them
        back), else Flower node ids (``ids == "node"``).

    References
    ----------
    Beutel, Topal, Mathur, Qiu, Fernandez-Marques, Gao, Sani, Li, Parcollet, de Gusmão,
    Lane, "Flower: A Friendly Federated Learning Research Framework", arXiv:2007.14390, 2020.
    McMahan, Moore, Ramage, Hampson, Agüera y Arcas, "Communication-Efficient Learning of
    Deep Networks from Decentralized Data", AISTATS 2017.
    Yang, Zhang, Khanduri, Liu, "Anarchic Federated Learning", ICML 2022.
    The rules' own papers are cited in their docstrings (``robustagg.get(name).__doc__``).
    """

    def __init__(self, aggregator: Any, *fedavg_args: Any, pre: Any = None, f: int = 0, server_lr: float = 1.0,
                 server_momentum: float = 0.0, per_layer: bool = False, mode: str = "sync",
                 reference_fn: Optional[Callable[[ArrayRecord, int], Any]] = None, **fedavg_kwargs: Any) -> None:
        try:  # FedAvg's own signature, positional or by keyword, after the rule
            bound = inspect.signature(FedAvg.__init__).bind(self, *fedavg_args, **fedavg_kwargs)
        except TypeError as exc:
            raise TypeError(f"RobustStrategy(aggregator, <FedAvg arguments>): {exc}") from None
        fedavg = dict(bound.arguments)
        fedavg.pop("self")
        for key in ("train_metrics_aggr_fn", "evaluate_metrics_aggr_fn"):
            if fedavg.get(key) is None:
                fedavg[key] = mean_metrics
        super().__init__(**fedavg)
        self.rule: Aggregator = _rules.build_rule(aggregator, pre, check_int(f, "f", minimum=0))
        self.server_lr = check_float(server_lr, "server_lr", minimum=0.0, strict_min=True)
        self.server_momentum = check_float(server_momentum, "server_momentum", minimum=0.0, maximum=1.0,
                                           strict_max=True)
        if not isinstance(per_layer, bool):
            raise TypeError(f"per_layer must be a bool, got {per_layer!r}")
        self.per_layer = per_layer
        self.mode = check_choice(mode, "mode", MODES)
        if reference_fn is not None and not callable(reference_fn):
            raise TypeError(f"reference_fn must be callable (arrays, server_round) -> update, got {reference_fn!r}")
        if reference_fn is not None and fltrust_stage(self.rule) is None:
            raise ValueError(f"reference_fn is read only by fltrust (the rule or the pipeline's last stage), "
                             f"not by {self.rule.name!r}")
        if reference_fn is None and fltrust_stage(self.rule) is not None:
            logger.warning("fltrust without reference_fn: the median of the updates stands in for the server's "
                           "update (pass reference_fn for FLTrust's guarantee)")
        self.reference_fn = reference_fn
        self.history: List[Dict[str, Any]] = []
        self._layout: Optional[Layout] = None
        self._global: Optional[np.ndarray] = None
        self._global_record: Optional[ArrayRecord] = None
        self._momentum: Optional[torch.Tensor] = None
        self._layer_rules: Dict[str, Aggregator] = {}
        self._known_nodes: Dict[int, None] = {}  # insertion-ordered set
        self._buffer: Optional[np.ndarray] = None  # (rows, d) update matrix reused every round
        self._row_views: List[List[np.ndarray]] = []  # its rows cut into the float arrays' places
        self._global_views: List[np.ndarray] = []
        # AFA-CS: the latest update of every known node, row j for the j-th node first seen
        # (kept across rounds and grown by doubling, not rebuilt from a dict every round)
        self._store: Optional[torch.Tensor] = None
        self._store_rows: Dict[int, int] = {}
        #: node id -> partition id, as the grid (``InlineGrid``) or the nodes' replies state them
        self.partitions: Dict[int, int] = {}

    # ----------------------------------------------------------------- Flower API
    def summary(self) -> None:
        logger.info("\t├──> RobustStrategy: rule %r, mode %s, server lr %g, momentum %g%s",
                    self.rule, self.mode, self.server_lr, self.server_momentum,
                    ", per layer" if self.per_layer else "")
        super().summary()

    def start(self, grid: Any, initial_arrays: ArrayRecord, num_rounds: int = 3, timeout: float = 3600,
              train_config: Optional[ConfigRecord] = None, evaluate_config: Optional[ConfigRecord] = None,
              evaluate_fn: Any = None) -> Result:
        """FedAvg's ``start``, after checking that the sampling can ever feed the rule.

        Raises ``ValueError`` when every round would be skipped (see :meth:`check_sampling`).
        ``Result.arrays`` is never empty: when rounds were skipped it is the last model the
        strategy has (the initial arrays when every round was skipped).
        """
        self.check_sampling(grid)
        result = super().start(grid, initial_arrays, num_rounds, timeout, train_config, evaluate_config,
                               evaluate_fn)
        if len(result.arrays) == 0:
            result.arrays = self._global_record if self._global_record is not None else initial_arrays
        skipped = [e["round"] for e in self.history[-num_rounds:] if e["skipped"]] if num_rounds > 0 else []
        if skipped:
            logger.warning("%d of %d round(s) skipped (%s): Result.arrays is the last model aggregated",
                           len(skipped), num_rounds, skipped)
        return result

    def check_sampling(self, grid: Any) -> None:
        """Refuse a sampling that can never give the rule enough updates.

        Waits, as FedAvg's sampling does, until ``min_available_nodes`` nodes are connected,
        then computes the nodes FedAvg samples per round, ``max(int(fraction_train * N),
        min_train_nodes)``, and raises ``ValueError`` when that is below
        ``rule.min_inputs()`` (in ``afa-cs`` mode: when the ``N`` nodes are). Nodes that
        connect later are not counted: in a deployment, set ``min_available_nodes`` to the
        federation's size.
        """
        if self.fraction_train == 0.0:
            return
        available = wait_for_nodes(grid, self.min_available_nodes)
        if available is None:
            return
        needed = self.rule.min_inputs()
        sample = available if self.mode == "afa-cs" else max(int(available * self.fraction_train),
                                                             self.min_train_nodes)
        if sample < needed:
            raise ValueError(
                f"fraction_train={self.fraction_train:g} with min_train_nodes={self.min_train_nodes} samples "
                f"{min(sample, available)} of the {available} available nodes per round, but {self.rule!r} "
                f"needs at least {needed} updates: every round would be skipped (sample >= {needed} nodes)")

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Any) -> Iterable[Message]:
        """Remember the global arrays sent this round, then sample nodes as FedAvg does."""
        self.set_global(arrays)
        try:
            for node in grid.get_node_ids():
                self._known_nodes.setdefault(int(node), None)
            self.partitions.update(getattr(grid, "partition_ids", {}) or {})
        except Exception as exc:  # noqa: BLE001 - a grid without node ids still trains
            logger.debug("could not list the grid's nodes: %s", exc)
        return super().configure_train(server_round, arrays, config, grid)

    def set_global(self, arrays: ArrayRecord) -> None:
        """Set the global arrays :math:`x_t` the next replies are compared with."""
        if arrays is self._global_record and self._global is not None:
            return  # the record this strategy built last round (Flower passes it back): decoded already
        layout = self._layout
        if layout is None or list(arrays.keys()) != layout.keys or any(
                tuple(arrays[k].shape) != layout.shapes[k] or np.dtype(arrays[k].dtype) != layout.dtypes[k]
                for k in layout.keys):
            layout = Layout(arrays)
            if self._layout is not None:  # the model changed: server state no longer fits
                self._momentum, self._store, self._store_rows, self._layer_rules = None, None, {}, {}
            self._buffer, self._row_views = None, []
        self._layout, self._global_record = layout, arrays
        self._global = layout.flatten(arrays)
        self._global_views = layout.views(self._global)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> Tuple[Optional[ArrayRecord], Optional[MetricRecord]]:
        """Robustly aggregate the updates of this round's replies (see the class docstring)."""
        if self._layout is None or self._global is None:
            raise RuntimeError("RobustStrategy.aggregate_train needs the global arrays: call "
                               "configure_train (Strategy.start does) or set_global first")
        start = time.perf_counter()
        replies = list(replies)
        errors = [m for m in replies if m.has_error()]
        log_received("aggregate_train", len(replies) - len(errors), errors)
        entry: Dict[str, Any] = {"round": int(server_round), "skipped": False, "reason": ""}
        X, nodes, contents, rejected, absent, replayed = collect(self, replies)
        check_weight_key([m for _, records in contents for m in records], self.weighted_by_key, "training")
        entry.update(accepted=list(nodes), rejected=rejected, absent=absent, replayed=replayed)
        if self.mode == "afa-cs":
            X, nodes = self._cross_silo(X, nodes)
        arrays = None
        needed = self.rule.min_inputs()
        if len(nodes) < needed:
            entry.update(skipped=True, reason=f"{len(nodes)} usable update(s) but {self.rule.name or 'the rule'} "
                                              f"needs at least {needed}")
        else:
            try:
                reference = self._reference(server_round)
            except Exception as exc:  # noqa: BLE001 - a failing reference skips the round, never the server
                entry.update(skipped=True, reason=f"reference_fn failed: {type(exc).__name__}: {exc}")
        if not entry["skipped"]:
            try:
                tic = time.perf_counter()
                aggregate, exposed = self._aggregate(X, nodes, reference)
                entry["rule_seconds"] = time.perf_counter() - tic
                if aggregate.untyped_storage().data_ptr() == X.untyped_storage().data_ptr():
                    aggregate = aggregate.clone()  # a row of the reused buffer (e.g. Krum's pick)
            except Exception as exc:  # noqa: BLE001 - a failing rule skips the round, never the server
                entry.update(skipped=True, reason=f"the rule failed: {type(exc).__name__}: {exc}")
            else:
                entry.update(exposed)
                if ops.all_finite(aggregate):
                    arrays = self._step(aggregate)
                else:
                    entry.update(skipped=True, reason="the rule returned non-finite values")
        entry["seconds"] = time.perf_counter() - start
        metrics = train_metrics(self.train_metrics_aggr_fn, self.weighted_by_key, contents, entry)
        self.history.append(_rules.name_nodes(entry, self.partitions))
        log_round(self.history[-1], self.rule.name)
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> Optional[MetricRecord]:
        """Unweighted mean of the evaluation metrics of the replies without error.

        Raises Flower's ``InconsistentMessageReplies`` only when no reply has
        ``weighted_by_key`` (a misconfiguration); a malformed metric is logged and skipped.
        """
        replies = list(replies)
        errors = [m for m in replies if m.has_error()]
        log_received("aggregate_evaluate", len(replies) - len(errors), errors)
        contents = [m.content for m in replies if not m.has_error() and m.has_content()]
        if not contents:
            return None
        check_weight_key([m for c in contents for m in split_records(c)[1]], self.weighted_by_key, "evaluation")
        try:
            return self.evaluate_metrics_aggr_fn(contents, self.weighted_by_key)
        except Exception as exc:  # noqa: BLE001 - a malformed metric must not stop the server
            logger.warning("aggregate_evaluate: metrics not aggregated (%s)", exc)
            return None

    # ----------------------------------------------------------------- internals
    def _rows(self, n: int) -> np.ndarray:
        """The update buffer with at least ``n`` rows, allocated once and reused across rounds
        (a fresh ``(n, d)`` array every round costs page faults on first touch), and the views
        of its rows that :meth:`Layout.decode_views` writes into."""
        layout = self._layout
        if self._buffer is None or self._buffer.shape[0] < n:
            self._buffer = np.empty((max(n, 1), layout.d), dtype=layout.dtype)
            self._row_views = [layout.views(row) for row in self._buffer]
        return self._buffer

    def _cross_silo(self, X: torch.Tensor, nodes: List[int]) -> Tuple[torch.Tensor, List[int]]:
        """AFA-CS: overwrite the arrivals' stored updates, return all ``M`` stored updates (zeros
        for a known node that has not sent one yet), in the order the nodes were first seen."""
        everyone = list(self._known_nodes)
        for node in everyone[len(self._store_rows):]:
            self._store_rows[node] = len(self._store_rows)
        m, store = len(everyone), self._store
        if store is None or store.shape[0] < m or store.dtype != X.dtype:
            grown = torch.zeros((max(m, 2 * (0 if store is None else store.shape[0])), self._layout.d), dtype=X.dtype)
            if store is not None:
                grown[: store.shape[0]] = store
            self._store = store = grown
        for i, node in enumerate(nodes):
            store[self._store_rows[node]] = X[i]
        M = store[:m]
        # a stage that scales its input in place (clipping/arc with inplace=True) must not
        # rewrite the stored updates
        stages = getattr(self.rule, "stages", [self.rule])
        return (M.clone() if any(getattr(s, "inplace", False) for s in stages) else M), everyone

    def _reference(self, server_round: int) -> Optional[torch.Tensor]:
        """FLTrust: ``reference_fn``'s update for this round as one ``(d,)`` vector (``None`` without it)."""
        if self.reference_fn is None:
            return None
        return reference_vector(self.reference_fn(self._global_record, int(server_round)), self._layout)

    def _aggregate(self, X: torch.Tensor, nodes: List[int],
                   reference: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Dict[str, Any]]:
        if not self.per_layer:
            if reference is not None:
                fltrust_stage(self.rule).set_reference(reference)
            out = self.rule.aggregate(X)
            exposed = _rules.trusted(self.rule, nodes)
            stage = fltrust_stage(self.rule)
            if stage is not None:  # "server" (reference_fn) or "median" (the stand-in)
                exposed["reference"] = stage.last.get("reference")
            return out, exposed
        layout = self._layout
        rules = _rules.per_layer_rules(self.rule, layout.float_keys, self._layer_rules)
        out = torch.empty(layout.d, dtype=X.dtype)
        per_layer: Dict[str, Any] = {}
        for key in layout.float_keys:
            sl = layout.slices[key]
            if reference is not None:
                fltrust_stage(rules[key]).set_reference(reference[sl])
            out[sl] = rules[key].aggregate(X[:, sl].contiguous())
            exposed = _rules.trusted(rules[key], nodes)
            if exposed:
                per_layer[key] = exposed
        return out, ({"per_layer": per_layer} if per_layer else {})

    def _step(self, aggregate: torch.Tensor) -> ArrayRecord:
        """Server step: momentum, learning rate; returns (and keeps) the new global arrays."""
        direction = aggregate
        if self.server_momentum > 0:
            if self._momentum is None:
                self._momentum = torch.zeros_like(aggregate)
            self._momentum.mul_(self.server_momentum).add_(aggregate)
            direction = self._momentum
        step = direction.numpy().astype(self._global.dtype, copy=False)
        if self.server_lr != 1.0:
            step = step * self.server_lr
        new = np.add(self._global, step)
        record = self._layout.to_record(new, self._global_record)
        self._global, self._global_record = new, record
        self._global_views = self._layout.views(new)
        return record
