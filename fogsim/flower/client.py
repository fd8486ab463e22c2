"""The client side of ``fogsim.flower.strategies``, for a ``ClientApp`` of your own.

Three calls turn a FedAvg client into one that trains whatever sub-model it receives::

    app = ClientApp()

    @app.query()
    def query(msg, context):
        return budget_reply(msg, node_budget(context))

    @app.train()
    def train(msg, context):
        model = load_arrays(MyNet(), msg.content["arrays"])  # the sub-model's shapes
        ...                                                   # your own training loop
        return train_reply(msg, model, num_examples=len(data), metrics={"train-loss": loss})

- :func:`node_budget`: the node's training memory in bytes, from its ``Context``:
  ``node_config["budget-bytes"]`` (set per SuperNode with ``--node-config``) or,
  as a simulation's nodes share one config, ``run_config["budgets"]``, a
  comma-separated list of sizes ("8MiB,2MiB,512KiB") picked by ``partition-id``.
- :func:`load_arrays`: your model with every parameter and buffer replaced by the
  received array of the same name, whatever its shape: a sub-model is the same
  network with fewer neurons per layer. Nothing is randomly re-initialised.
- :func:`train_reply`: the reply FedAvg expects (``arrays``, ``metrics`` with
  ``num-examples``), from the trained model.
- :func:`dynhp_reply`: instead of your training loop, fogsim's DynHP on the received
  sub-model: it prunes further to DynHP's target, each step's batch the largest the
  budget holds by fogsim's memory model, and replies with the pruned model and its own
  ``kept``. It needs the model as a factory (``FactoryArch("mypkg.models:make", in_shape,
  num_classes)``, ``make(in_shape, num_classes) -> nn.Module``): the memory model
  replays its step at every width the pruning reaches (``fogsim.device.chain_replay``).
"""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from torch import nn

from fogsim.device.chain import assign
from fogsim.device.dynhp import DynHP, DynHPConfig
from fogsim.device.dynhp_train import train_dynhp
from fogsim.device.factory import FactoryArch
from fogsim.flower import wire
from fogsim.flower.strategies import BUDGET_KEY
from fogsim.units import parse_bytes


def node_budget(context: Context, budgets: str = "") -> int | None:
    """This node's budget in bytes (see the module doc; ``budgets`` stands in for a
    run config without ``budgets``, as ``run_simulation`` passes none); None if
    neither is set."""
    if BUDGET_KEY in context.node_config:
        return parse_bytes(context.node_config[BUDGET_KEY])
    sizes = str(context.run_config.get("budgets", budgets)).split(",")
    if sizes == [""] or "partition-id" not in context.node_config:
        return None
    return parse_bytes(sizes[int(context.node_config["partition-id"]) % len(sizes)].strip())


def budget_reply(msg: Message, budget_bytes: int | None) -> Message:
    """The answer to a strategy's budget query (no budget: the node trains everything)."""
    metrics = {} if budget_bytes is None else {BUDGET_KEY: int(budget_bytes)}
    return Message(RecordDict({wire.METRICS: MetricRecord(metrics)}), reply_to=msg)


def load_arrays(model: nn.Module, arrays: ArrayRecord) -> nn.Module:
    """``model`` holding ``arrays`` as its parameters and buffers, in place, each of
    the shape received (a layer's ``in_features``/``out_features`` are updated too,
    so the model prints as what it is)."""
    state = arrays.to_torch_state_dict()
    names = model.state_dict()  # a non-persistent buffer is never sent (it was required)
    missing = sorted(set(names) - set(state))
    extra = sorted(set(state) - set(names))
    if missing or extra:
        raise KeyError(f"received arrays do not match the model: missing {missing}, extra {extra}")
    return assign(model, {k: v.clone() for k, v in state.items()})


def train_reply(
    msg: Message, model: nn.Module, num_examples: int, metrics: dict[str, Any] | None = None
) -> Message:
    """The reply to a training message: the trained (sub-)model and its metrics."""
    record = MetricRecord({**(metrics or {}), "num-examples": int(num_examples)})
    state = {k: v.detach() for k, v in model.state_dict().items()}
    content = RecordDict({wire.ARRAYS: ArrayRecord(state), wire.METRICS: record})
    return Message(content, reply_to=msg)


def dynhp_reply(
    msg: Message,
    model: nn.Module,
    arch: FactoryArch,
    data: tuple[torch.Tensor, torch.Tensor],
    budget: int | None,
    cfg: DynHPConfig | None = None,
    *,
    progress: tuple[float, float] = (0.0, 1.0),
    epochs: float = 1.0,
    optimizer: str = "sgd-momentum",
    lr: float = 0.05,
) -> Message:
    """Train ``model`` (the received sub-model, :func:`load_arrays`) on ``data`` with
    DynHP within ``budget`` bytes and reply: the pruned sub-model, metrics
    (``num-examples``, ``train-loss``, ``peak-memory``: the largest modelled step,
    ``pruned``: neurons removed) and its own ``kept`` (global indices per group, which
    the strategy aggregates by). ``arch``: the dense model as a factory (module doc);
    ``progress``: where this round runs on DynHP's schedule (e.g. ``((r - 1) / R, r /
    R)`` in round ``r`` of ``R``); ``cfg``: DynHP's knobs (``DynHPConfig()``: 10x)."""
    kept = wire.unpack_kept(msg.content[wire.KEPT]) if wire.KEPT in msg.content else None
    dynhp = DynHP(cfg or DynHPConfig(), arch, kept)
    x, y = data
    stats = train_dynhp(
        model, x, y, dynhp, budget=budget, epochs=epochs, progress_range=progress,
        optimizer=optimizer, lr=lr, per_step=False,
    )  # fmt: skip
    metrics = {"train-loss": stats.mean_loss, "peak-memory": stats.max_memory}
    reply = train_reply(msg, model, len(x), {**metrics, "pruned": stats.pruned})
    reply.content[wire.KEPT] = wire.pack_kept(dynhp.kept)
    return reply


def shapes_of(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """The shapes of a model's arrays (what a strategy's ``memory_fn`` is given)."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}
