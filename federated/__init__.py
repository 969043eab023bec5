"""Flower integration for robustagg: robust strategies and adversarial client apps.

Importing this package needs the ``flower`` extra (``pip install robustagg[flower]``).

* :class:`RobustStrategy`: any robustagg rule or pipeline as a Flower strategy (Message API);
* :func:`make_client_app`: a ``ClientApp`` whose nodes can be Byzantine, poisoned, faulty or
  anarchic (roles from the node config);
* :func:`make_server_app` and :func:`simulate`: a ``ServerApp`` and a Ray simulation on CPU.

See ``docs/flower.md``.
"""

from federated.app import DEFAULTS, PartitionData, central_evaluate_fn, make_server_app, simulate
from federated.client import make_client_app
from federated.strategy import RobustStrategy, mean_metrics

__all__ = [
    "DEFAULTS", "PartitionData", "RobustStrategy", "central_evaluate_fn", "make_client_app", "make_server_app",
    "mean_metrics", "simulate",
]
