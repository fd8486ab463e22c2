"""The Flower ``ClientApp`` every simulated fog node runs: ``clients.fog_client:app``.

A message carries a cohort of fleet nodes (``fogsim.flower.cohort``): for each, which
node it is and that node's model, with the scenario's client spec once
(``fogsim.flower.wire``: every key and record is defined there); the client trains or
evaluates each node's model on the node's data partition, one after another, and
replies with each node's compact weights and metrics. The app holds no state and closes over
nothing: the data set is loaded once per worker process, a node's partition is an
index array into it, and the spec is validated once per process.

A client never trains over its budget: if the model it gets cannot train even at
batch 1 within the budget (``BudgetError``), it refuses and says so in its reply
(``over-budget = 1``, no weights), and the server counts it. Only the dense reference
strategy (``mode = "dense"``) trains regardless, and flags every such round.

Injected faults (``[faults]``) are drawn on the client from (seed, round, node), so
the server learns of them only the way it would of real ones: a crash is an
exception (reported as that node's ``crash``, as Flower would report an error reply
to a message of its own; the rest of its cohort is unharmed), corrupt weights are NaN/Inf arrays,
and a dropped node sends no update (its reply carries only ``dropped-out = 1``:
in simulated time nothing arrives before the deadline).
"""

from __future__ import annotations

import functools
import time
from typing import Any, Literal

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from fogsim.data import draw, load_dataset
from fogsim.device.arch import Arch
from fogsim.device.chain import widths_of
from fogsim.device.dynhp import DynHP
from fogsim.device.dynhp_train import lr_scale, train_dynhp
from fogsim.device.factory import FactoryArch, load_model, macs_per_sample
from fogsim.device.memory import (
    BudgetError,
    max_batch_size,
    proximal_anchor_bytes,
    training_memory,
)
from fogsim.device.models import num_params, set_scaler, train_flops
from fogsim.device.training import evaluate, make_optimizer, present_labels, train_epochs
from fogsim.flower import cohort, partial, wire
from fogsim.flower.wire import ClientSpec
from fogsim.scenario import DataSection


@functools.lru_cache(maxsize=2)
def _partitions(
    data_json: str, num_nodes: int, seed: int, shares: tuple[float, ...] | None
) -> list[np.ndarray]:
    """Every node's sample indices, computed once per worker process (keyed by the
    ``[data]`` section as JSON: sections are not hashable)."""
    data = DataSection.model_validate_json(data_json)
    labels = load_dataset(data.dataset, data.path).train_y
    return data.split(labels, num_nodes, seed, list(shares) if shares is not None else None)


def local_data(
    spec: ClientSpec, node: int, part: Literal["train", "held-out"] = "train"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of fleet node ``node``'s ``part`` of its data: only the part a
    call uses is built (a training call once built the held-out split too, and threw
    it away, while it loaded)."""
    data = spec.data
    if data.partitioning == "draws":  # per node, on demand: nothing for the others
        num_samples = len(load_dataset(data.dataset, data.path).train_y)
        indices = draw(num_samples, data.samples_per_node, [spec.seed, node])
    else:
        indices = _partitions(data.model_dump_json(), spec.nodes, spec.seed, spec.shares)[node]
    train_idx, test_idx = data.local_split(indices, spec.seed, node)
    ds = load_dataset(data.dataset, data.path)
    idx = train_idx if part == "train" else test_idx
    return ds.tensors(ds.train_x[idx], ds.train_y[idx])


def stream_seed(*key: int) -> int:
    """A 64-bit seed for torch from (seed, round, node): numpy's SeedSequence hashes
    the whole key, so no two keys share a stream (``seed*a + round*b + node`` would:
    node 10,007 in round r is node 0 in round r+1)."""
    return int(np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0])


def train_dynhp_round(
    spec: ClientSpec,
    content: RecordDict,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    gen: torch.Generator,
    care: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, ArrayRecord]]:
    """DynHP on this node's sub-model, resuming the node's scores and schedule;
    ``care``: :func:`training_care`."""
    cfg, train = content[wire.CONFIG], spec.train
    global_arch = spec.arch
    kept = wire.unpack_kept(content[wire.KEPT])
    device = {"target_compression": float(cfg[wire.TARGET])}
    if wire.MIN_BATCH in cfg:  # a sub-model wider than min_batch trains: start smaller
        device["min_batch"] = int(cfg[wire.MIN_BATCH])
    device_cfg = spec.dynhp.model_copy(update=device)
    prunes = bool(int(cfg.get(wire.PRUNES, 1)))
    dynhp = DynHP(device_cfg, global_arch, kept, prunes=prunes)
    if wire.DYNHP in content:
        state = wire.unpack_dynhp_state(content[wire.DYNHP])
        dynhp.load_state_dict({**state, "dense_params": global_arch.num_params()}, kept)
        # DynHP keeps its own copy of the held neurons' entries: the unpacked global
        # arrays (~8 KB) once lived through training, over the budget (masks = "own")
        del state
    if wire.ORDER in content:  # prune the tail of the server's order, not by own scores
        dynhp.fix_scores(wire.unpack_groups(content[wire.ORDER], wire.ORDER))
    stats = train_dynhp(
        model,
        x,
        y,
        dynhp,
        budget=int(cfg[wire.BUDGET]),
        epochs=train.local_epochs,
        progress_range=(float(cfg[wire.PROGRESS_START]), float(cfg[wire.PROGRESS_END])),
        optimizer=train.memory_kind,
        lr=train.lr,
        momentum=train.momentum,
        lr_batch=train.batch_size,
        generator=gen,
        per_step=False,
        **care,
    )
    records = {wire.KEPT: wire.pack_kept(dynhp.kept)}
    if prunes:  # its state, for a strategy that sends it back (masks = "own")
        records[wire.DYNHP] = wire.pack_dynhp_state(dynhp.state_dict())
    metrics = {
        wire.TRAIN_LOSS: stats.mean_loss,
        wire.BATCH_SIZE: stats.max_batch,  # the batch grows as the model shrinks
        wire.PEAK_MEMORY: stats.max_memory,
        wire.PRUNED: stats.pruned,
        "samples": stats.samples,
    }
    return metrics, records


def received_model(spec: ClientSpec, content: RecordDict) -> nn.Module:
    """The model a node's message gives it, at the received widths: a FogNet, or the
    scenario's factory model (``[model] factory``) holding the received arrays."""
    return load_model(spec.arch, wire.received_state(content))


def memory_shape(spec: ClientSpec, model: nn.Module) -> Arch | FactoryArch:
    """What the memory model is asked about ``model``: the scenario's model at the
    widths ``model`` has now."""
    return spec.arch.with_widths(widths_of(model))


def train_fixed(
    spec: ClientSpec,
    content: RecordDict,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    gen: torch.Generator,
    care: dict[str, Any],
) -> dict[str, Any]:
    """Plain local SGD on a fixed (sub-)model. Budget-aware strategies ("plain") shrink
    the batch to fit the node's budget; "dense" ignores the budget (and reports it).
    ``care``: :func:`training_care`."""
    cfg, train = content[wire.CONFIG], spec.train
    kind, shape = train.memory_kind, memory_shape(spec, model)
    mu = float(cfg.get(wire.PROXIMAL_MU, 0.0))  # FedProx (a Flower strategy)
    anchor = proximal_anchor_bytes(shape) if mu else 0  # its copy of the received model
    batch = min(train.batch_size, len(x))
    if cfg[wire.MODE] == "plain":
        batch = max_batch_size(shape, int(cfg[wire.BUDGET]) - anchor, kind, cap=batch)
    lr = train.lr
    if int(cfg.get(wire.BATCH_LR, 0)):  # the LR follows the batch, as DynHP's does
        lr *= lr_scale(spec.dynhp.lr_scaling, batch, train.batch_size)
    opt = make_optimizer(train.optimizer, model.parameters(), lr, train.momentum)
    loss = train_epochs(
        model,
        x,
        y,
        epochs=train.local_epochs,
        batch_size=batch,
        optimizer=opt,
        generator=gen,
        proximal_mu=mu,
        **care,
    )
    # the gradients are spent: freed now, the reply's copy of the model (wire.model_record)
    # fits where they and the optimizer state were
    model.zero_grad(set_to_none=True)
    return {
        wire.TRAIN_LOSS: loss,
        wire.BATCH_SIZE: batch,
        wire.PEAK_MEMORY: training_memory(shape, batch, kind) + anchor,
        wire.PRUNED: 0,
        "samples": len(x) * train.local_epochs,
    }


def training_care(spec: ClientSpec, cfg: ConfigRecord, model: nn.Module, y: torch.Tensor) -> dict:
    """What the message asks of local training besides the model (HeteroFL's care for
    sub-models, see ``fogsim.strategies.submodel``): the Scaler (set on ``model``),
    gradient clipping and label masking; returns the keyword arguments of the
    training loop (``clip``, ``label_mask``)."""
    if int(cfg.get(wire.SCALER, 0)):
        set_scaler(model, spec.arch.widths)
    clip = float(cfg.get(wire.CLIP, 0.0))
    mask = present_labels(y, spec.arch.num_classes) if int(cfg.get(wire.LABEL_MASK, 0)) else None
    return {"clip": clip if clip > 0 else None, "label_mask": mask}


class InjectedCrash(RuntimeError):
    """A crash injected by ``[faults]``."""


def injected_fault(spec: ClientSpec, device_class: str, node: int, rnd: int) -> str:
    """ "crash", "drop", "corrupt" or "" for this node and round (``[faults]`` rates of
    its class), seeded by (seed, round, node) so a rerun injects the same faults."""
    rates = spec.faults.rates(device_class)
    u = np.random.default_rng([spec.seed, rnd, node, 0xFA]).random()
    for kind in ("crash", "drop", "corrupt"):
        if u < getattr(rates, kind):
            return kind
        u -= getattr(rates, kind)
    return ""


def corrupt(model: nn.Module) -> None:
    """Overwrite some weights with NaN and +Inf, as a faulty device might send."""
    with torch.no_grad():
        w = next(model.parameters()).view(-1)
        w[::7] = float("nan")
        w[1::11] = float("inf")


def train(content: RecordDict) -> RecordDict:
    """One fleet node's round of training (see the module doc): the reply content to
    the content of its message (its part of a cohort message, ``fogsim.flower.cohort``)."""
    start = time.perf_counter()
    spec, cfg = wire.spec_of(content), content[wire.CONFIG]
    node, rnd = int(cfg[wire.NODE]), int(cfg[wire.ROUND])
    fault = injected_fault(spec, str(cfg[wire.CLASS]), node, rnd)
    if fault == "drop":
        return wire.reply({wire.NODE: node, wire.DROPPED_OUT: 1})
    x, y = local_data(spec, node)
    model = received_model(spec, content)
    macs_in = macs_per_sample(model, spec.arch.in_shape)
    gen = torch.Generator().manual_seed(stream_seed(spec.seed, rnd, node))
    if fault == "crash":
        raise InjectedCrash(f"injected crash of node {node} in round {rnd}")
    # a fixed sub-model keeps its neurons: echo their indices back with the weights
    records = {wire.KEPT: content[wire.KEPT]} if wire.KEPT in content else {}
    care = training_care(spec, cfg, model, y)
    try:
        if cfg[wire.MODE] == "dynhp":
            metrics, records = train_dynhp_round(spec, content, model, x, y, gen, care)
        else:
            metrics = train_fixed(spec, content, model, x, y, gen, care)
    except BudgetError as e:  # refuse rather than train over budget
        needed = training_memory(memory_shape(spec, model), 1, spec.train.memory_kind)
        refusal = {wire.NODE: node, wire.OVER_BUDGET: 1, wire.NEEDED_MEMORY: needed}
        return wire.reply(refusal, {wire.ERROR: ConfigRecord({"reason": str(e)})})
    if care["label_mask"] is not None:
        k = spec.arch.num_classes
        counts = torch.bincount(y, minlength=k)[:k]
        records[wire.LABELS] = wire.pack_labels(counts.numpy())
    if fault == "corrupt":
        corrupt(model)
    # FLOPs: the model shrinks while DynHP trains; average its start and end cost.
    macs = (macs_in + macs_per_sample(model, spec.arch.in_shape)) / 2
    metrics.update(
        {
            wire.NODE: node,
            wire.NUM_EXAMPLES: len(x),
            wire.PARAMS: num_params(model),
            wire.OVER_BUDGET: int(metrics[wire.PEAK_MEMORY] > int(cfg[wire.BUDGET])),
            wire.TRAIN_FLOPS: train_flops(macs, metrics.pop("samples")),
            wire.TIME_S: time.perf_counter() - start,
        }
    )
    return wire.reply(metrics, {wire.ARRAYS: wire.model_record(model), **records})


def evaluate_local(content: RecordDict) -> RecordDict:
    """The received model's accuracy and loss on the node's held-out samples."""
    spec, node = wire.spec_of(content), int(content[wire.CONFIG][wire.NODE])
    x, y = local_data(spec, node, "held-out")
    model = received_model(spec, content)
    acc, loss = evaluate(model, x, y)
    metrics = {wire.NODE: node, wire.NUM_EXAMPLES: len(x), wire.ACCURACY: acc, wire.LOSS: loss}
    return wire.reply(metrics)


def reply_train(msg: Message) -> Message:
    """The reply to a training message: each node of its cohort trained in turn, their
    good updates summed where the strategy's aggregate is a sum (``fogsim.flower.partial``)."""
    content = cohort.handle(msg.content, train)
    if msg.content[wire.CONFIG].get(wire.SUM):
        content = partial.fold(msg.content, content, wire.spec_of(msg.content).arch.output_names)
    return Message(content, reply_to=msg)


def reply_evaluate(msg: Message) -> Message:
    """The reply to an evaluation message: each node of its cohort evaluated."""
    return Message(cohort.handle(msg.content, evaluate_local), reply_to=msg)


app = ClientApp()


@app.train()
def _train(msg: Message, context: Context) -> Message:
    torch.set_num_threads(wire.spec_of(msg.content).threads)  # = the actor's Ray CPUs
    return reply_train(msg)


@app.evaluate()
def _evaluate(msg: Message, context: Context) -> Message:
    torch.set_num_threads(wire.spec_of(msg.content).threads)
    return reply_evaluate(msg)
