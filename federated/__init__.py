"""Flower integration for robustagg: robust strategies and adversarial client apps.

Importing this package needs the ``flower`` extra (``pip install robustagg[flower]``).

* :class:`RobustStrategy`: any robustagg rule or pipeline as a Flower strategy (Message API);
* :class:`ElectionStrategy`: one base model per client, run-off election, certified accuracy
  against poisoned clients;
* :func:`make_client_app`: a ``ClientApp`` whose nodes can be Byzantine, poisoned, faulty or
  anarchic (roles from the node config);
* :func:`run_app`: an existing Flower app directory, unchanged, with ``RobustStrategy``
  swapped in for its ``FedAvg`` (in-process or on Ray; :mod:`federated.deploy` on a local
  SuperLink and SuperNodes);
* :func:`make_server_app` and :func:`simulate`: a ``ServerApp``, and a simulation (Ray on CPU,
  or in-process) of the TOML configuration of ``robustagg train`` (:mod:`federated.config`).

See ``docs/flower.md``.
"""

from federated.app import PartitionData, central_evaluate_fn, make_server_app, print_progress, simulate
from federated.apprun import run_app
from federated.client import make_client_app
from federated.config import FLOWER_DEFAULTS, TrainData
from federated.election import ElectionStrategy
from federated.inline import InlineGrid
from federated.strategy import RobustStrategy, mean_metrics

__all__ = [
    "ElectionStrategy", "FLOWER_DEFAULTS", "InlineGrid", "PartitionData", "RobustStrategy", "TrainData",
    "central_evaluate_fn", "make_client_app", "make_server_app", "mean_metrics", "print_progress", "run_app",
    "simulate",
]
