"""The Flower ``ClientApp`` every simulated fog node runs.

A message says which fleet node it is for (``config["node"]``, see
``fogsim.strategies.base``) and carries that node's model; the client trains or
evaluates it on the node's data partition and replies with compact weights and
metrics. The app closes over the scenario only (a small dict): Ray ships the app to
its workers with every message, while the data set is loaded once per worker process
and a node's partition is an index array into it.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fogsim.accounting import train_flops
from fogsim.data import load_dataset, partition, split_local
from fogsim.models import model_from_state, num_params
from fogsim.scenario import Scenario
from fogsim.training import evaluate, make_optimizer, train_epochs


@functools.lru_cache(maxsize=2)
def _partitions(data: tuple, num_nodes: int, seed: int) -> list[np.ndarray]:
    d = dict(data)
    labels = load_dataset(d["dataset"], d["path"]).train_y
    return partition(
        labels,
        num_nodes,
        d["partitioning"],
        seed=seed,
        alpha=d["alpha"],
        shards_per_node=d["shards_per_node"],
    )


def local_data(spec: dict[str, Any], node: int) -> tuple[torch.Tensor, ...]:
    """(train x, train y, held-out x, held-out y) of fleet node ``node``."""
    data, seed = spec["data"], spec["run"]["seed"]
    indices = _partitions(tuple(sorted(data.items())), spec["fleet"]["nodes"], seed)[node]
    train_idx, test_idx = split_local(indices, data["client_test_fraction"], seed + node)
    ds = load_dataset(data["dataset"], data["path"])
    return (
        *ds.tensors(ds.train_x[train_idx], ds.train_y[train_idx]),
        *ds.tensors(ds.train_x[test_idx], ds.train_y[test_idx]),
    )


def _reply(msg: Message, metrics: dict[str, Any], arrays: ArrayRecord | None = None) -> Message:
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content, reply_to=msg)


def train(spec: dict[str, Any], msg: Message) -> Message:
    start = time.perf_counter()
    cfg, node = msg.content["config"], int(msg.content["config"]["node"])
    rnd = int(cfg["server-round"])
    t = spec["train"]
    x, y, _, _ = local_data(spec, node)
    model = model_from_state(msg.content["arrays"].to_torch_state_dict())
    opt = make_optimizer(t["optimizer"], model.parameters(), t["lr"], t["momentum"])
    gen = torch.Generator().manual_seed(spec["run"]["seed"] * 1_000_003 + rnd * 10_007 + node)
    loss = train_epochs(
        model,
        x,
        y,
        epochs=t["local_epochs"],
        batch_size=t["batch_size"],
        optimizer=opt,
        generator=gen,
    )
    metrics = {
        "node": node,
        "num-examples": len(x),
        "train-loss": loss,
        "params": num_params(model),
        "batch-size": min(t["batch_size"], len(x)),
        "train-flops": train_flops(model, len(x) * t["local_epochs"]),
        "time-s": time.perf_counter() - start,
    }
    return _reply(msg, metrics, ArrayRecord(model.state_dict()))


def evaluate_local(spec: dict[str, Any], msg: Message) -> Message:
    node = int(msg.content["config"]["node"])
    _, _, x, y = local_data(spec, node)
    model = model_from_state(msg.content["arrays"].to_torch_state_dict())
    acc, loss = evaluate(model, x, y)
    return _reply(msg, {"node": node, "num-examples": len(x), "accuracy": acc, "loss": loss})


def make_client_app(scenario: Scenario) -> ClientApp:
    """A ClientApp bound to ``scenario`` (as a plain dict, cheap to ship to workers)."""
    spec = scenario.model_dump()
    threads = max(1, int(scenario.simulation.cpus_per_client))
    app = ClientApp()

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(threads)
        return train(spec, msg)

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        torch.set_num_threads(threads)
        return evaluate_local(spec, msg)

    return app
