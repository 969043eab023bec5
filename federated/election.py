r"""``ElectionStrategy``: a certified ensemble of per-client models on Flower (DPA, run-off election).

Every client trains its own base model on its own data; the server keeps one model per client
(the ensemble), predicts on its test set by run-off election (or plurality) and certifies each
prediction against poisoned clients with :func:`robustagg.election.certify`. A client's data is
one partition of the ensemble's training set, so a poisoned (or Byzantine) client corrupts one
base model, exactly what Deep Partition Aggregation's certificate counts: a certificate ``c``
at a test point means that no ``c`` clients, whatever models they send, change the prediction
there. ``certified-accuracy-r`` is the share of test points whose prediction is correct and
certified against ``r`` poisoned clients.

**Rounds.** Round ``t`` sends node ``i`` its *own* current base model (round 1: the initial
model, the same for everyone); the node trains ``local_steps`` SGD steps on its data (the honest
protocol of :func:`federated.make_client_app`, batches seeded by ``(seed, partition, t)``) and
replies with the trained arrays, which become base model ``i``. ``R`` rounds are ``R`` pieces of
one training run per base model: one round with many local steps is the classic DPA setting;
several rounds let the server watch the ensemble (evaluated every ``eval_every`` rounds and at
the last one). No model is ever averaged: the robustness comes from the vote.

**Members and failures.** The ensemble's members are the nodes connected when round 1 is
configured (at least ``min_nodes``), sorted by node id; base model ``j`` is member ``j``'s.
Nodes that connect later are ignored (with a warning). A member whose reply is absent,
carries an error, is malformed (keys, shapes, dtypes, encoding) or non-finite keeps its
previous model (the initial one if none) and is logged: it still casts one vote, and a
failing client is at worst one of the clients the certificate counts.

References
----------
Levine & Feizi, "Deep Partition Aggregation: Provable Defenses against General Poisoning
Attacks", ICLR 2021.
Rezaei, Banihashem, Chegini, Feizi, "Run-Off Election: Improved Provable Defense against Data
Poisoning Attacks", ICML 2023.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, Result
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from robustagg import election
from robustagg._validation import check_choice, check_int
from robustagg.aggregators import ops

from federated._updates import Layout, MalformedReply, metric_scalar, split_records
from federated.strategy import SKIPPED_KEY, mean_metrics

logger = logging.getLogger("flwr.robustagg")

VOTES = {"run-off": "dpa+roe", "plurality": "dpa"}


class ElectionStrategy(FedAvg):
    """Flower strategy keeping one base model per client and certifying their election.

    Parameters
    ----------
    model_fn : callable
        Builds the model the clients train (its state dict keys are the ArrayRecord keys).
    test_data : (X, y)
        The server's test set: inputs and integer labels.
    vote : {"run-off", "plurality"}
        Run-off election (certified with ``"dpa+roe"``) or plurality (``"dpa"``).
    radii : sequence of int, optional
        Radii of the reported certified accuracy (default ``0 .. (K - 1) // 2``).
    min_nodes : int
        Wait for this many connected nodes before round 1: the ensemble's size ``K``.
    eval_every : int
        Score and certify the ensemble every ``eval_every`` rounds and at the last round.
    eval_batch_size : int
        Test-set batch when scoring a base model.
    **fedavg_kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg` (``fraction_evaluate`` defaults to 0).

    Attributes
    ----------
    members : list of int
        Node ids of the base models, in order.
    scores, predictions, certificates : numpy.ndarray
        ``(K, N, C)`` test scores, ``(N,)`` election winners and ``(N,)`` certificates (``-1``
        where the prediction is wrong) of the last evaluation.
    history : list of dict
        Per round: ``round``, ``accepted`` / ``absent`` node ids, ``rejected`` ({node: reason}).
    """

    def __init__(self, model_fn: Callable[[], torch.nn.Module], test_data: Tuple[Any, Any], *,
                 vote: str = "run-off", radii: Optional[Sequence[int]] = None, min_nodes: int = 2,
                 eval_every: int = 1, eval_batch_size: int = 1024, **fedavg_kwargs: Any) -> None:
        min_nodes = check_int(min_nodes, "min_nodes", minimum=1)
        fedavg_kwargs.setdefault("fraction_evaluate", 0.0)
        fedavg_kwargs.setdefault("min_available_nodes", min_nodes)
        fedavg_kwargs.setdefault("min_train_nodes", min_nodes)
        fedavg_kwargs.setdefault("train_metrics_aggr_fn", mean_metrics)
        fedavg_kwargs.setdefault("evaluate_metrics_aggr_fn", mean_metrics)
        super().__init__(**fedavg_kwargs)
        self.model_fn = model_fn
        X, y = test_data
        self.X_test = torch.as_tensor(X)
        self.y_test = np.asarray(y.detach().cpu() if hasattr(y, "detach") else y).astype(np.int64)
        self.vote = check_choice(vote, "vote", tuple(VOTES))
        self.method = VOTES[self.vote]
        self.radii = None if radii is None else [check_int(r, "radius", minimum=0) for r in radii]
        self.eval_every = check_int(eval_every, "eval_every", minimum=1)
        self.eval_batch_size = check_int(eval_batch_size, "eval_batch_size", minimum=1)
        self.members: List[int] = []
        self.history: List[Dict[str, Any]] = []
        self.scores: Optional[np.ndarray] = None
        self.predictions: Optional[np.ndarray] = None
        self.certificates: Optional[np.ndarray] = None
        self._index: Dict[int, int] = {}
        self._layout: Optional[Layout] = None
        self._template: Optional[ArrayRecord] = None
        self._models: Optional[np.ndarray] = None  # (K, d): member j's flat base model
        self._num_rounds = 0

    # ----------------------------------------------------------------- Flower API
    def summary(self) -> None:
        logger.info("\t├──> ElectionStrategy: %s vote, certificates %r, at least %d members",
                    self.vote, self.method, self.min_available_nodes)

    def start(self, grid: Any, initial_arrays: ArrayRecord, num_rounds: int = 3, timeout: float = 3600,
              train_config: Optional[ConfigRecord] = None, evaluate_config: Optional[ConfigRecord] = None,
              evaluate_fn: Any = None) -> Result:
        """Flower's loop, with the ensemble's evaluation (:meth:`evaluate`) as the central one.

        ``evaluate_fn`` is replaced: a single global model does not exist here.
        """
        self._num_rounds = int(num_rounds)
        self.members, self._index, self._models, self.history = [], {}, None, []
        return super().start(grid, initial_arrays, num_rounds=num_rounds, timeout=timeout, train_config=train_config,
                             evaluate_config=evaluate_config, evaluate_fn=self.evaluate)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Any) -> Iterable[Message]:
        """Send every member its own base model (round 1: ``arrays``, the initial model)."""
        if self._models is None:
            _, connected = sample_nodes(grid, self.min_available_nodes, self.min_available_nodes)
            self.members = sorted(int(n) for n in connected)
            self._index = {node: j for j, node in enumerate(self.members)}
            self._layout, self._template = Layout(arrays), arrays
            self._models = np.tile(self._layout.flatten(arrays), (len(self.members), 1))
            logger.info("ElectionStrategy: an ensemble of %d base models (nodes %s)", len(self.members), self.members)
        layout = self._layout
        messages = []
        for j, node in enumerate(self.members):
            round_config = ConfigRecord(dict(config))
            round_config["server-round"] = server_round
            content = RecordDict({self.arrayrecord_key: layout.to_record(self._models[j], self._template),
                                  self.configrecord_key: round_config})
            messages.append(Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node))
        return messages

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> Tuple[Optional[ArrayRecord], Optional[MetricRecord]]:
        """Store each member's trained model; absent or invalid replies keep the previous one."""
        if self._models is None:
            raise RuntimeError("ElectionStrategy.aggregate_train before configure_train")
        entry: Dict[str, Any] = {"round": int(server_round), "accepted": [], "rejected": {}, "absent": []}
        accepted = set()  # the nodes of entry["accepted"], for the replay check
        contents = []
        row = np.empty(self._layout.d, dtype=self._layout.dtype)
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            if node not in self._index:
                logger.warning("round %d: node %d is not a member of the ensemble; reply ignored", server_round, node)
                continue
            if msg.has_error() or not msg.has_content():
                entry["absent"].append(node)
                continue
            records, metric_records = split_records(msg.content)
            try:
                if not records and metric_records and metric_scalar(metric_records[0], SKIPPED_KEY):
                    entry["absent"].append(node)
                    continue
                if node in accepted:
                    raise MalformedReply("a second reply from this node in one round (replayed?)")
                if len(records) != 1:
                    raise MalformedReply(f"expected one ArrayRecord, got {len(records)}")
                self._layout.decode_into(records[0], row)
                if not ops.all_finite(torch.from_numpy(row)):
                    raise MalformedReply("non-finite values (NaN/Inf)")
            except MalformedReply as exc:
                entry["rejected"][node] = str(exc)
                continue
            self._models[self._index[node]] = row
            entry["accepted"].append(node)
            accepted.add(node)
            contents.append(msg.content)
        for node, reason in entry["rejected"].items():
            logger.warning("round %d: rejected the model of node %d (it keeps its previous one): %s",
                           server_round, node, reason)
        self.history.append(entry)
        metrics = mean_metrics(contents) if contents else MetricRecord()
        metrics["num-accepted"] = len(entry["accepted"])
        metrics["num-rejected"] = len(entry["rejected"])
        metrics["num-absent"] = len(entry["absent"])
        return None, metrics

    # ----------------------------------------------------------------- the ensemble
    def state_dicts(self) -> List[Dict[str, torch.Tensor]]:
        """The base models' state dicts, in member order."""
        if self._models is None:
            return []
        return [self._layout.to_record(m, self._template).to_torch_state_dict() for m in self._models]

    def predict_scores(self, X: Optional[torch.Tensor] = None) -> np.ndarray:
        """``(K, N, C)`` scores (logits) of every base model on ``X`` (default: the test set)."""
        X = self.X_test if X is None else X
        out = []
        for state in self.state_dicts():
            model = self.model_fn()
            model.load_state_dict(state)
            model.eval()
            with torch.no_grad():
                out.append(torch.cat([model(X[i:i + self.eval_batch_size]).float()
                                      for i in range(0, len(X), self.eval_batch_size)]).numpy())
        return np.stack(out)

    def evaluate(self, server_round: int, arrays: Any = None) -> Optional[MetricRecord]:
        """Score, elect and certify on the test set (rounds ``eval_every``, ``2 eval_every``, ... and
        the last); ``accuracy`` and ``certified-accuracy-<r>`` per radius. ``None`` in round 0 and
        in the rounds skipped."""
        if self._models is None or server_round == 0 or (server_round % self.eval_every
                                                         and server_round != self._num_rounds):
            return None
        scores = self.predict_scores()
        vote = election.run_off if self.vote == "run-off" else election.plurality
        self.scores, self.predictions = scores, vote(scores)
        self.certificates = election.certify(scores, self.y_test, self.method)
        radii = self.radii if self.radii is not None else list(range((len(self.members) - 1) // 2 + 1))
        certified = election.certified_accuracy(self.certificates, radii)
        metrics = MetricRecord({"accuracy": float((self.predictions == self.y_test).mean())})
        for r, value in zip(radii, np.atleast_1d(certified)):
            metrics[f"certified-accuracy-{r}"] = float(value)
        return metrics

    def ensemble(self) -> Dict[str, Any]:
        """The last evaluation: ``members``, ``method``, ``scores``, ``labels``, ``predictions``,
        ``certificates`` and the base models' ``state_dicts``."""
        return {"members": list(self.members), "method": self.method, "scores": self.scores, "labels": self.y_test,
                "predictions": self.predictions, "certificates": self.certificates,
                "state_dicts": self.state_dicts()}
