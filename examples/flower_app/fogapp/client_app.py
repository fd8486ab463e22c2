"""A Flower ClientApp that trains whatever sub-model it receives (three helper calls
from ``fogsim.flower.client``; the rest is an ordinary PyTorch client)."""

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fogapp.task import ARCH, accuracy, lenet5, node_data, settings, test_data, train
from fogsim.flower.client import budget_reply, dynhp_reply, load_arrays, node_budget, train_reply

app = ClientApp()


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The strategy asks each node's memory budget once."""
    return budget_reply(msg, node_budget(context, settings(context.run_config)["budgets"]))


@app.train()
def train_model(msg: Message, context: Context) -> Message:
    model = load_arrays(lenet5(), msg.content["arrays"])  # the sub-model, as received
    cfg = settings(context.run_config)
    x, y = node_data(int(context.node_config["partition-id"]), int(cfg["samples-per-node"]))
    if cfg["dynhp"]:  # fogsim's DynHP prunes it further, within the node's budget
        r, rounds = int(msg.content["config"]["server-round"]), int(cfg["num-server-rounds"])
        budget = node_budget(context, cfg["budgets"])
        progress = ((r - 1) / rounds, r / rounds)  # where this round is on the schedule
        return dynhp_reply(msg, model, ARCH, (x, y), budget, progress=progress,
                           epochs=int(cfg["local-epochs"]), lr=float(cfg["lr"]))  # fmt: skip
    loss = train(model, x, y, int(cfg["local-epochs"]), float(cfg["lr"]))
    return train_reply(msg, model, len(x), {"train-loss": loss})


@app.evaluate()
def evaluate_model(msg: Message, context: Context) -> Message:
    model = load_arrays(lenet5(), msg.content["arrays"])
    x, y = test_data(500)
    metrics = MetricRecord({"accuracy": accuracy(model, x, y), "num-examples": len(x)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
