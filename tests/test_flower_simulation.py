"""One real Flower simulation on the Ray backend (CPU), from the example TOML configuration.

``experiments/configs/flower_digits.toml`` (the format of ``robustagg train``): 6 virtual
SuperNodes train logistic regression on scikit-learn's digits (iid partitions); node 5 (the
last ``workers.f = 1``) is Byzantine and sends the reversed, amplified honest mean
(``reverse``, -10x) computed from the honest updates it recomputes itself (the omniscient
channel of ``federated.client``). Three strategies run in the same simulation (one Ray
start-up), each from the same initial model: ``RobustStrategy(trimmed-mean, f=1)`` must end
with test accuracy >= 0.8 and Flower's ``FedAvg`` below 0.5; the ``ElectionStrategy``'s
certificates must equal those recomputed offline from the base models it received. Ray gets
one CPU and a session directory under /tmp, and is shut down even when the test fails.
"""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")

from federated import simulate  # noqa: E402
from federated import config as fconfig  # noqa: E402
from federated.app import shutdown_ray  # noqa: E402
from robustagg import election  # noqa: E402
from robustagg.train import components  # noqa: E402
from robustagg.train._toml import loads  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "flower_digits.toml"


@pytest.fixture
def ray_cleanup():
    yield
    shutdown_ray()


@pytest.mark.timeout(300)
def test_example_config_on_ray(in_fresh_process, ray_cleanup):
    if in_fresh_process:
        return
    history = simulate(EXAMPLE, ["flower.num_cpus=1", "flower.ray_temp_dir='/tmp/ray_robustagg_test'"], out_dir="")
    fedavg, ensemble = history["compare"]
    assert history["round"] == [0, 1, 2, 3, 4, 5] and history["out_dir"] is None
    assert history["accuracy"][-1] >= 0.8, history["accuracy"]
    assert fedavg["label"] == "fedavg" and fedavg["accuracy"][-1] < 0.5, fedavg["accuracy"]
    assert all(not e["skipped"] and len(e["accepted"]) == 6 for e in history["strategy"])

    # the ensemble: certificates recomputed offline from the models the strategy received
    got = ensemble["election"]
    cfg, _ = fconfig.read(loads(history["config"]))  # the full configuration the run used
    data = fconfig.TrainData(cfg)
    model_fn = components.model_factory(cfg, data.load())
    scores = []
    for state in got["state_dicts"]:
        model = model_fn()
        model.load_state_dict(state)
        scores.append(model.eval()(data.test()[0]).detach().numpy())
    scores = np.stack(scores)
    np.testing.assert_array_equal(scores, got["scores"])
    certs = election.certify(scores, got["labels"], "dpa+roe")
    np.testing.assert_array_equal(certs, got["certificates"])
    last = ensemble["metrics"][5]
    assert last["certified-accuracy-1"] == pytest.approx(election.certified_accuracy(certs, 1))
    assert ensemble["round"] == [1, 2, 3, 4, 5] and last["accuracy"] >= 0.8, last
    assert len(got["members"]) == 6

