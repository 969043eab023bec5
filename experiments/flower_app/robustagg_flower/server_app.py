"""ServerApp: RobustStrategy (or FedAvg) from the run config, central evaluation on the test set."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from federated import RobustStrategy, central_evaluate_fn
from robustagg_flower import task

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    nodes = int(cfg["min-nodes"])
    common = dict(fraction_train=float(cfg["fraction-train"]), fraction_evaluate=0.0, min_train_nodes=nodes,
                  min_available_nodes=nodes)
    if cfg["aggregator"] == "fedavg":
        strategy = FedAvg(**common)
    else:
        pre = [p.strip() for p in str(cfg["pre"]).split(",") if p.strip()] or None
        strategy = RobustStrategy(str(cfg["aggregator"]), pre=pre, f=int(cfg["f"]), server_lr=float(cfg["server-lr"]),
                                  server_momentum=float(cfg["server-momentum"]), per_layer=bool(cfg["per-layer"]),
                                  mode=str(cfg["mode"]), **common)
    model_fn = task.model_fn(cfg)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model_fn().state_dict()),
                            num_rounds=int(cfg["num-server-rounds"]), train_config=ConfigRecord(),
                            evaluate_fn=central_evaluate_fn(model_fn, *task.data_fn(cfg).test()))
    accuracy = {r: round(float(m["accuracy"]), 4) for r, m in result.evaluate_metrics_serverapp.items()}
    print(f"test accuracy per round: {accuracy}")
