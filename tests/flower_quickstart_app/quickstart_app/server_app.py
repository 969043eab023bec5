"""quickstart-app: the ServerApp (FedAvg, central evaluation)."""

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from quickstart_app.task import Net, load_centralized_testset, test

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    num_rounds = context.run_config["num-server-rounds"]
    lr = context.run_config["lr"]
    nodes = context.run_config["min-nodes"]

    global_model = Net()
    arrays = ArrayRecord(global_model.state_dict())

    strategy = FedAvg(fraction_train=context.run_config["fraction-train"],
                      fraction_evaluate=context.run_config["fraction-evaluate"],
                      min_train_nodes=2, min_evaluate_nodes=2, min_available_nodes=nodes)

    result = strategy.start(grid=grid, initial_arrays=arrays, train_config=ConfigRecord({"lr": lr}),
                            num_rounds=num_rounds, evaluate_fn=global_evaluate)

    state_dict = result.arrays.to_torch_state_dict()
    if context.run_config["save-path"]:
        torch.save(state_dict, context.run_config["save-path"])
    print(f"final central accuracy: {result.evaluate_metrics_serverapp[num_rounds]['accuracy']:.4f}")


def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    model = Net()
    model.load_state_dict(arrays.to_torch_state_dict())
    loss, accuracy, _ = test(model, load_centralized_testset())
    return MetricRecord({"accuracy": accuracy, "loss": loss})
