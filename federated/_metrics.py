"""Client metrics in FedAvg's shape, without FedAvg's weighting by client-reported counts.

Flower's ``aggregate_metricrecords`` (the default of ``FedAvg``) averages every metric
weighted by the replies' ``weighted_by_key`` (``num-examples``), element by element for
list-valued metrics, and leaves ``weighted_by_key`` itself out of the result. The
functions here return the same keys and value types, as *unweighted* means: a Byzantine
client can report any count, and a count that weights the average lets one client own it.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Dict, Iterable, List, Optional

from flwr.app import ConfigRecord, MetricRecord
from flwr.serverapp.exception import InconsistentMessageReplies

from federated._updates import split_records

logger = logging.getLogger("flwr.robustagg")
flwr_logger = logging.getLogger("flwr")


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def mean_metrics(records: List[Any], weighted_by_key: str = "num-examples") -> MetricRecord:
    """Unweighted mean of the clients' metrics, in the shape of Flower's ``aggregate_metricrecords``.

    Every scalar metric is averaged over the replies that report it as a finite number;
    every list-valued metric element by element over the replies whose list has the length
    most replies report (the others are left out of that key). ``weighted_by_key`` (e.g.
    ``num-examples``) is left out, as FedAvg does, and never used as a weight.

    Parameters
    ----------
    records : list of flwr.app.RecordDict
        The replies' contents.
    weighted_by_key : str
        The key FedAvg would weight by; it is dropped from the result.

    Returns
    -------
    flwr.app.MetricRecord
    """
    return mean_of((m for record in records for m in split_records(record)[1]), weighted_by_key)


def mean_of(metric_records: Iterable[Any], weighted_by_key: str) -> MetricRecord:
    """:func:`mean_metrics` over the ``MetricRecord`` objects themselves."""
    scalars: Dict[str, List[float]] = {}
    lists: Dict[str, List[List[float]]] = {}
    for metrics in metric_records:
        for key, value in metrics.items():
            if key == weighted_by_key:
                continue
            if isinstance(value, list):
                if value and all(_number(v) for v in value):
                    lists.setdefault(key, []).append([float(v) for v in value])
            elif _number(value):
                scalars.setdefault(key, []).append(float(value))
    out = MetricRecord({k: sum(v) / len(v) for k, v in scalars.items()})
    for key, rows in lists.items():
        if key in out:
            continue  # reported as a scalar by some and a list by others: the scalars win
        lengths = [len(r) for r in rows]
        common = max(set(lengths), key=lambda n: (lengths.count(n), -n))
        rows = [r for r in rows if len(r) == common]
        if len(rows) < len(lengths):
            logger.warning("metric %r: %d of %d replies sent a list of another length (left out)", key,
                           len(lengths) - len(rows), len(lengths))
        out[key] = [sum(col) / len(rows) for col in zip(*rows)]
    return out


def check_weight_key(metric_records: List[Any], weighted_by_key: str, what: str) -> None:
    """Raise Flower's ``InconsistentMessageReplies`` when no reply reports ``weighted_by_key``.

    FedAvg raises when *any* reply lacks it; a robust server cannot let one client stop it
    that way, so only a key that *no* reply has (a misconfigured ``weighted_by_key``) raises.
    """
    if not metric_records:
        return
    if not any(hasattr(m, "keys") and weighted_by_key in m.keys() for m in metric_records):
        raise InconsistentMessageReplies(
            reason=f"weighted_by_key={weighted_by_key!r}: no {what} reply has this metric "
                   f"(they report {sorted({k for m in metric_records for k in m.keys()})[:8]}); "
                   "set weighted_by_key to a key the clients send, as FedAvg requires")


def log_received(stage: str, ok: int, errors: List[Any]) -> None:
    """FedAvg's ``Received N results and M failures`` line, and one line per error reply."""
    flwr_logger.info("%s: Received %s results and %s failures", stage, ok, len(errors))
    for msg in errors:
        reason = msg.error.reason if msg.has_error() else "no content"
        flwr_logger.info("\t> Received error in reply from node %d: %s", msg.metadata.src_node_id, reason)


def node_partition(content: Any) -> Optional[int]:
    """The ``partition-id`` a robustagg node states in the ``ConfigRecord`` of its reply.

    (:func:`federated.make_client_app` nodes add ``{"node": ConfigRecord({"partition-id": p})}``;
    FedAvg ignores ConfigRecords in replies.) A label for the history only, trusted for nothing.
    """
    for value in content.values():
        if isinstance(value, ConfigRecord):
            pid = value.get("partition-id")
            if isinstance(pid, int) and not isinstance(pid, bool) and pid >= 0:
                return pid
    return None


def log_round(e: Dict[str, Any], rule_name: str) -> None:
    """Log what a round of :class:`RobustStrategy` did (logger ``flwr.robustagg``)."""
    who = e.get("ids", "node")
    for node, reason in e["rejected"].items():
        logger.warning("round %d: rejected the reply of %s %d: %s", e["round"], who, node, reason)
    if e["replayed"]:
        logger.warning("round %d: ignored further replies of %s(s) %s (the first valid one counts)",
                       e["round"], who, e["replayed"])
    if e["absent"]:
        logger.info("round %d: no update from %s(s) %s", e["round"], who, e["absent"])
    if e["skipped"]:
        logger.warning("round %d skipped, model unchanged: %s", e["round"], e["reason"])
        return
    if "trusted" in e:
        logger.info("round %d: %s trusted %s(s) %s", e["round"], rule_name, who, e["trusted"])
    if "weights" in e:
        logger.info("round %d: %s weights %s", e["round"], rule_name,
                    {k: round(v, 4) for k, v in e["weights"].items()})
    if "per_layer" in e:
        logger.info("round %d: %s per layer %s", e["round"], rule_name, e["per_layer"])


def wait_for_nodes(grid: Any, minimum: int) -> Optional[int]:
    """The number of connected nodes once ``minimum`` are (``None``: the grid cannot tell)."""
    try:
        while len(nodes := list(grid.get_node_ids())) < minimum:
            logger.info("Waiting for nodes to connect: %d connected (minimum required: %d).", len(nodes), minimum)
            time.sleep(1)
    except Exception as exc:  # noqa: BLE001 - a grid without node ids: nothing to check
        logger.debug("could not list the grid's nodes: %s", exc)
        return None
    return len(nodes)


def train_metrics(aggr_fn: Any, weighted_by_key: str, contents: List[Any], entry: Dict[str, Any]) -> MetricRecord:
    """The train ``MetricRecord`` of a round: the clients' metrics aggregated by ``aggr_fn`` (over
    ``contents``, ``(RecordDict, its MetricRecords)`` of the accepted replies) plus the round's
    ``num-accepted``, ``num-rejected``, ``num-absent`` and ``skipped``."""
    metrics = MetricRecord()
    if contents:
        try:
            if aggr_fn is mean_metrics:  # the records are split already
                metrics = mean_of((m for _, records in contents for m in records), weighted_by_key)
            else:
                metrics = aggr_fn([c for c, _ in contents], weighted_by_key) or MetricRecord()
        except Exception as exc:  # noqa: BLE001 - metrics are reporting only
            logger.warning("round %d: train metrics not aggregated (%s)", entry["round"], exc)
    metrics["num-accepted"] = len(entry["accepted"])
    metrics["num-rejected"] = len(entry["rejected"])
    metrics["num-absent"] = len(entry["absent"])
    metrics["skipped"] = int(entry["skipped"])
    return metrics
