"""experiments/flower_app: its pyproject passes Flower's validation and its apps run in-process.

``flwr run`` is not executed here (it builds the app's environment, which downloads a CUDA
build of torch); the ServerApp and ClientApp objects it would load are driven directly
through an in-process grid with the run config of the pyproject.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python >= 3.11")

from flwr.app import Context, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

APP_DIR = Path(__file__).resolve().parents[1] / "experiments" / "flower_app"


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_pyproject_is_a_valid_flower_app():
    from flwr.cli.config_utils import load_and_validate

    config, _ = load_and_validate(APP_DIR / "pyproject.toml", check_module=False)
    components = config["tool"]["flwr"]["app"]["components"]
    assert components == {"serverapp": "robustagg_flower.server_app:app",
                          "clientapp": "robustagg_flower.client_app:app"}


class Grid:
    def __init__(self, client_app, run_config, n, node_config):
        self.app = client_app
        self.contexts = {500 + p: Context(run_id=1, node_id=500 + p,
                                          node_config={"partition-id": p, "num-partitions": n, **node_config.get(p, {})},
                                          state=RecordDict(), run_config=run_config) for p in range(n)}

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        return [self.app(m, self.contexts[m.metadata.dst_node_id]) for m in messages]


@pytest.mark.parametrize("aggregator, low, high", [("trimmed-mean", 0.8, 1.0), ("fedavg", 0.0, 0.5)])
def test_apps_run_with_the_pyproject_config(monkeypatch, capsys, aggregator, low, high):
    monkeypatch.syspath_prepend(str(APP_DIR))
    from robustagg_flower.client_app import app as client_app
    from robustagg_flower.server_app import app as server_app

    with open(APP_DIR / "pyproject.toml", "rb") as fh:
        run_config = dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])
    run_config.update({"aggregator": aggregator, "omniscient": True})
    # node 0 is made Byzantine by its node config, as `flower-supernode --node-config` would
    grid = Grid(client_app, run_config, 6, {0: {"byzantine": "reverse"}})
    server_app(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("test accuracy per round")][-1]
    final = ast.literal_eval(line.split(": ", 1)[1])[run_config["num-server-rounds"]]
    assert low <= final <= high, line
