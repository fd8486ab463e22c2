"""The Flower ``ClientApp`` every simulated fog node runs.

A message says which fleet node it is for (``config["node"]``, see
``fogsim.strategies.base``) and carries that node's model; the client trains or
evaluates it on the node's data partition and replies with compact weights and
metrics. The app closes over the scenario only (a small dict): Ray ships the app to
its workers with every message, while the data set is loaded once per worker process
and a node's partition is an index array into it.

A client never trains over its budget: if the model it gets cannot train even at
batch 1 within the budget (``BudgetError``), it refuses and says so in its reply
(``over-budget = 1``, no weights), and the server counts it. Only the dense reference
strategy (``mode = "dense"``) trains regardless, and flags every such round.

Injected faults (``[faults]``) are drawn on the client from (seed, round, node), so
the server learns of them only the way it would of real ones: a crash is an
exception (Flower turns it into an error reply), corrupt weights are NaN/Inf arrays,
and a dropped node sends no update (its reply carries only ``dropped-out = 1``:
in simulated time nothing arrives before the deadline).
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fogsim.accounting import macs_per_sample
from fogsim.data import load_dataset, partition, split_local
from fogsim.dynhp import DynHP, DynHPConfig, train_dynhp
from fogsim.memory import BudgetError, max_batch_size, training_memory
from fogsim.models import FogNet, model_from_state, num_params
from fogsim.scenario import FaultsSection, ModelSection, Scenario, TrainSection
from fogsim.strategies.base import numpy_record
from fogsim.strategies.submodel import pack_groups, pack_kept, unpack_groups, unpack_kept
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


def _reply(msg: Message, metrics: dict[str, Any], records: dict | None = None) -> Message:
    return Message(RecordDict({"metrics": MetricRecord(metrics), **(records or {})}), reply_to=msg)


def train_dynhp_round(
    spec: dict[str, Any],
    msg: Message,
    model: FogNet,
    x: torch.Tensor,
    y: torch.Tensor,
    gen: torch.Generator,
) -> tuple[dict[str, Any], dict[str, ArrayRecord]]:
    """DynHP on this node's sub-model, resuming the node's scores and schedule."""
    cfg, t, d = msg.content["config"], spec["train"], dict(spec["dynhp"])
    d.pop("participations")
    d["target_compression"] = float(cfg["target-compression"])  # the server's, per device
    global_arch = ModelSection.model_validate(spec["model"]).shape
    kept = [k.astype(np.int64) for k in unpack_kept(msg.content["kept"])]
    dynhp = DynHP(DynHPConfig(**d, lr_base_batch=t["batch_size"]), global_arch, kept)
    if "dynhp" in msg.content:
        record = msg.content["dynhp"]
        state = {k: unpack_groups(record, k) for k in ("score", "streak", "seen")}
        dynhp.load_state_dict({**state, "dense_params": global_arch.num_params()}, kept)
    stats = train_dynhp(
        model,
        x,
        y,
        dynhp,
        budget=int(cfg["budget"]),
        epochs=t["local_epochs"],
        progress_range=(float(cfg["progress-start"]), float(cfg["progress-end"])),
        optimizer=TrainSection.model_validate(t).memory_kind,
        lr=t["lr"],
        momentum=t["momentum"],
        generator=gen,
    )
    state = dynhp.state_dict()
    records = {
        "kept": pack_kept(dynhp.kept),
        "dynhp": numpy_record(
            {
                k: v
                for name in ("score", "streak", "seen")
                for k, v in pack_groups(state[name], name).items()
            }
        ),
    }
    metrics = {
        "train-loss": stats.mean_loss,
        "batch-size": max(stats.batch),  # the batch grows as the model shrinks
        "peak-memory": max(stats.memory),
        "pruned": stats.pruned,
        "samples": int(sum(stats.batch)),
    }
    return metrics, records


def train_fixed(
    spec: dict[str, Any],
    msg: Message,
    model: FogNet,
    x: torch.Tensor,
    y: torch.Tensor,
    gen: torch.Generator,
) -> dict[str, Any]:
    """Plain local SGD on a fixed (sub-)model. Budget-aware strategies ("plain") shrink
    the batch to fit the node's budget; "dense" ignores the budget (and reports it)."""
    cfg, t = msg.content["config"], spec["train"]
    kind = TrainSection.model_validate(t).memory_kind
    batch = min(t["batch_size"], len(x))
    if cfg["mode"] == "plain":
        batch = max_batch_size(model, int(cfg["budget"]), kind, cap=batch)
    opt = make_optimizer(t["optimizer"], model.parameters(), t["lr"], t["momentum"])
    loss = train_epochs(
        model, x, y, epochs=t["local_epochs"], batch_size=batch, optimizer=opt, generator=gen
    )
    return {
        "train-loss": loss,
        "batch-size": batch,
        "peak-memory": training_memory(model, batch, kind),
        "pruned": 0,
        "samples": len(x) * t["local_epochs"],
    }


class InjectedCrash(RuntimeError):
    """A crash injected by ``[faults]``."""


def injected_fault(spec: dict[str, Any], device_class: str, node: int, rnd: int) -> str:
    """ "crash", "drop", "corrupt" or "" for this node and round (``[faults]`` rates of
    its class), seeded by (seed, round, node) so a rerun injects the same faults."""
    rates = FaultsSection.model_validate(spec["faults"]).rates(device_class)
    u = np.random.default_rng([spec["run"]["seed"], rnd, node, 0xFA]).random()
    for kind in ("crash", "drop", "corrupt"):
        if u < getattr(rates, kind):
            return kind
        u -= getattr(rates, kind)
    return ""


def corrupt(model: FogNet) -> None:
    """Overwrite some weights with NaN and +Inf, as a faulty device might send."""
    with torch.no_grad():
        w = next(model.parameters()).view(-1)
        w[::7] = float("nan")
        w[1::11] = float("inf")


def train(spec: dict[str, Any], msg: Message) -> Message:
    start = time.perf_counter()
    cfg, node = msg.content["config"], int(msg.content["config"]["node"])
    rnd = int(cfg["server-round"])
    fault = injected_fault(spec, str(cfg["class"]), node, rnd)
    if fault == "drop":
        return _reply(msg, {"node": node, "dropped-out": 1})
    x, y, _, _ = local_data(spec, node)
    model = model_from_state(msg.content["arrays"].to_torch_state_dict())
    macs_in = macs_per_sample(model)
    gen = torch.Generator().manual_seed(spec["run"]["seed"] * 1_000_003 + rnd * 10_007 + node)
    if fault == "crash":
        raise InjectedCrash(f"injected crash of node {node} in round {rnd}")
    # a fixed sub-model keeps its neurons: echo their indices back with the weights
    records = {"kept": msg.content["kept"]} if "kept" in msg.content else {}
    try:
        if cfg["mode"] == "dynhp":
            metrics, records = train_dynhp_round(spec, msg, model, x, y, gen)
        else:
            metrics = train_fixed(spec, msg, model, x, y, gen)
    except BudgetError as e:  # refuse rather than train over budget
        needed = training_memory(model, 1, TrainSection.model_validate(spec["train"]).memory_kind)
        refusal = {"node": node, "over-budget": 1, "needed-memory": needed}
        return _reply(msg, refusal, {"error": ConfigRecord({"reason": str(e)})})
    if fault == "corrupt":
        corrupt(model)
    # FLOPs: the model shrinks while DynHP trains; average its start and end cost.
    macs = (macs_in + macs_per_sample(model)) / 2
    metrics.update(
        {
            "node": node,
            "num-examples": len(x),
            "params": num_params(model),
            "over-budget": int(metrics["peak-memory"] > int(cfg["budget"])),
            "train-flops": 6.0 * macs * metrics.pop("samples"),
            "time-s": time.perf_counter() - start,
        }
    )
    return _reply(msg, metrics, {"arrays": ArrayRecord(model.state_dict()), **records})


def evaluate_local(spec: dict[str, Any], msg: Message) -> Message:
    node = int(msg.content["config"]["node"])
    _, _, x, y = local_data(spec, node)
    model = model_from_state(msg.content["arrays"].to_torch_state_dict())
    acc, loss = evaluate(model, x, y)
    return _reply(msg, {"node": node, "num-examples": len(x), "accuracy": acc, "loss": loss})


def make_client_app(scenario: Scenario) -> ClientApp:
    """A ClientApp bound to ``scenario`` (as a plain dict, cheap to ship to workers)."""
    spec = scenario.model_dump()
    threads = scenario.simulation.torch_threads  # = the actor's Ray CPUs: no oversubscription
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
