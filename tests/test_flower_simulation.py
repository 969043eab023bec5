"""One real Flower simulation on the Ray backend (CPU): robust aggregation vs FedAvg.

6 virtual SuperNodes train logistic regression on scikit-learn's digits (iid partitions);
node 0 is Byzantine and sends the reversed, amplified honest mean (``reverse``, -10x),
computed from the honest updates it recomputes itself (the omniscient channel of
``federated.client``). Both strategies run in the same simulation, one after the other, from
the same initial model: ``RobustStrategy(trimmed-mean, f=1)`` must end with test accuracy
>= 0.8 and Flower's ``FedAvg`` below 0.5. Ray gets one CPU and a session directory under
/tmp, and is shut down even when the test fails.
"""

import pytest

pytest.importorskip("ray")

from federated import simulate  # noqa: E402
from federated.app import shutdown_ray  # noqa: E402


@pytest.fixture
def ray_cleanup():
    yield
    shutdown_ray()


@pytest.mark.timeout(300)
def test_trimmed_mean_survives_reverse_attack_fedavg_does_not(ray_cleanup):
    history = simulate({
        "dataset": "digits", "model": "logistic", "nodes": 6, "rounds": 5,
        "aggregator": "trimmed-mean", "f": 1, "attack": "reverse", "num_byzantine": 1,
        "local_steps": 20, "lr": 0.3, "batch_size": 32, "seed": 0,
        "num_cpus": 1, "client_cpus": 1, "ray_temp_dir": "/tmp/ray_robustagg_test",
        "compare": [{"strategy": "fedavg"}],
    })
    fedavg = history["compare"][0]
    assert history["round"] == [0, 1, 2, 3, 4, 5]
    assert history["accuracy"][-1] >= 0.8, history["accuracy"]
    assert fedavg["accuracy"][-1] < 0.5, fedavg["accuracy"]
    assert all(not e["skipped"] and len(e["accepted"]) == 6 for e in history["strategy"])
