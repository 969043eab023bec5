"""Model and data factories shared by the server and client apps, from the run config."""

from __future__ import annotations

from typing import Any, Dict, Mapping

from federated import PartitionData
from robustagg import models


def data_fn(run_config: Mapping[str, Any]) -> PartitionData:
    """``data_fn(partition_id, num_partitions) -> (X, y)`` (cached per process)."""
    return PartitionData(str(run_config["dataset"]), partition=str(run_config["partition"]),
                         seed=int(run_config["seed"]))


def model_fn(run_config: Mapping[str, Any]):
    """A picklable factory of the configured model (same initial weights everywhere)."""
    ds = data_fn(run_config).load()
    return models.model_fn(str(run_config["model"]), input_shape=ds.input_shape, num_classes=ds.num_outputs,
                           seed=int(run_config["seed"]))


def roles(run_config: Mapping[str, Any]) -> Dict[int, Dict[str, Any]]:
    """Byzantine partitions from ``attack`` / ``num-byzantine`` (node configs override them)."""
    attack = str(run_config.get("attack", ""))
    if not attack:
        return {}
    return {p: {"byzantine": attack} for p in range(int(run_config.get("num-byzantine", 0)))}
