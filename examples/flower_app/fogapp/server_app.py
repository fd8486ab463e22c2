"""A stock Flower ServerApp: one of fogsim's sub-model strategies, started as any
Flower strategy is, with centralized evaluation of the global model."""

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result, Strategy

from fogapp.task import ARCH, BATCH, accuracy, lenet5, settings, test_data
from fogsim.flower.chain import check_model
from fogsim.flower.client import load_arrays
from fogsim.flower.strategies import FedRolex, HeteroFL, MaskUnion, replayed_memory

STRATEGIES = {"mask-union": MaskUnion, "heterofl": HeteroFL, "fedrolex": FedRolex}
RUNS: list[tuple[Strategy, Result]] = []  # each run's, for whoever runs the app in-process
app = ServerApp()


def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    x, y = test_data()
    return MetricRecord({"accuracy": accuracy(load_arrays(lenet5(), arrays), x, y)})


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = settings(context.run_config)
    check_model(lenet5(), (1, 28, 28))  # a chain the strategies can slice (torch.fx)
    strategy = STRATEGIES[str(cfg["strategy"])](
        fraction_train=float(cfg["fraction-train"]),
        fraction_evaluate=0.5,
        # each node's sub-model: the widest whose training step at BATCH fits its budget
        memory_fn=replayed_memory(ARCH, BATCH, "sgd-momentum"),
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(lenet5().state_dict()),
        num_rounds=int(cfg["num-server-rounds"]),
        evaluate_fn=central_evaluate,
    )
    RUNS.append((strategy, result))
