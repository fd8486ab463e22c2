"""fogsim's sub-model strategies as plain Flower strategies, for a Flower app of your own.

``MaskUnion``, ``HeteroFL`` and ``FedRolex`` here need no fogsim scenario, fleet or
``FogNet``: they subclass Flower's ``FedAvg``, take its keyword arguments
(``fraction_train``, ``min_available_nodes``, ...) plus their own, and run under
``strategy.start(grid=..., initial_arrays=ArrayRecord(model.state_dict()), ...)`` in a
stock ``ServerApp``. What they add to FedAvg:

- **Per-node sub-models.** The model's neuron groups are read from its arrays
  (``fogsim.device.chain``: any chain of ``Linear``/``Conv2d`` layers, batch norm
  included). Each sampled node gets only the neurons it holds: the arrays of its
  sub-model (``arrays``), the global indices per group (``kept``, an ``ArrayRecord``
  of int64 arrays ``kept.0``, ``kept.1``, ...) and its ``width-fraction`` in the
  config. A client that loads whatever shapes it receives (``fogsim.flower.client``)
  trains it and replies as to FedAvg: ``arrays`` and ``metrics`` with
  ``num-examples``. A client that pruned further (DynHP) adds its own ``kept``.
- **Budgets from the nodes.** The first time a node is sampled the strategy asks it
  (a Flower ``query`` message, config ``{"query": "budget"}``); the node replies
  ``metrics = {"budget-bytes": n}`` (``fogsim.flower.client.budget_reply``, from its
  ``Context``). The widest width fraction ``f`` whose training memory
  (``memory_fn(sub-model shapes)``; default: ``bytes_per_param`` per parameter for
  weights, gradients and one optimizer buffer, no activations, as the server does
  not know your input size; :func:`replayed_memory`: fogsim's memory model of your
  model, given as a factory) fits the budget sets its share: ``ceil(f * width)``
  neurons per group. A node that does not answer the query trains the whole model;
  one whose budget holds not even one neuron per group is not sent anything.
- **Masked averaging.** Each global element becomes the ``num-examples``-weighted
  mean over the replies holding it; elements nobody held keep their value. Train
  metrics are averaged as by FedAvg.

Which neurons: ``HeteroFL`` the first ``k`` of each group (nested), ``FedRolex`` a
window rolling by one each round, ``MaskUnion`` the first ``k`` of one fixed order,
the initial model's incoming-weight norms, largest first (nested masks: fogsim's
``mask-union`` with ``masks = "nested"``). fogsim's own strategies
(``fogsim.strategies``) add what needs a simulated fleet: seeded sampling, memory
modelled per device class, DynHP on the clients, accounting of bytes, time and energy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from fogsim.device.chain import ChainLayout, Kept, layout_of
from fogsim.device.factory import FactoryArch
from fogsim.device.memory import largest_fraction, training_memory
from fogsim.device.pruning import masked_mean, scatter_add_submodel
from fogsim.flower import wire

BUDGET_KEY = "budget-bytes"  # query reply metric: the node's training memory, bytes
FRACTION_KEY = "width-fraction"  # train config: the node's share of every group
QUERY_KEY = "query"  # query config: what is asked ("budget")

MemoryFn = Callable[[Mapping[str, Sequence[int]]], int]


def replayed_memory(arch: FactoryArch, batch: int, optimizer: str = "sgd") -> MemoryFn:
    """A ``memory_fn`` from fogsim's memory model: the bytes of one training step at
    ``batch`` with ``optimizer`` of ``arch``'s model (a ``[model] factory``,
    ``fogsim.device.factory``) narrowed to the sub-model's shapes, activations and
    oneDNN's buffers included (``fogsim.device.chain_replay``, checked against the
    process heap), rather than ``bytes_per_param`` per parameter."""

    def memory(shapes: Mapping[str, Sequence[int]]) -> int:
        return training_memory(arch.with_widths(layout_of(shapes).widths), batch, optimizer)

    return memory


class SubModelFedAvg(FedAvg):
    """FedAvg over per-node sub-models (see the module doc); subclasses choose
    :meth:`kept_at`."""

    def __init__(  # noqa: PLR0913 (Flower's FedAvg arguments, then ours)
        self,
        *,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        train_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
        evaluate_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
        memory_fn: MemoryFn | None = None,
        bytes_per_param: int = 12,
        query_timeout: float = 60.0,
    ) -> None:
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            weighted_by_key=weighted_by_key,
            arrayrecord_key=arrayrecord_key,
            configrecord_key=configrecord_key,
            train_metrics_aggr_fn=train_metrics_aggr_fn,
            evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
        )
        self.bytes_per_param = int(bytes_per_param)
        self.memory_fn = memory_fn or self.param_memory
        self.query_timeout = float(query_timeout)
        self.budgets: dict[int, int | None] = {}  # Flower node id -> budget (None: unknown)
        self.sent: dict[int, Kept] = {}  # this round: node id -> the neurons it was sent
        self.layout: ChainLayout | None = None
        self.global_state: dict[str, np.ndarray] = {}

    def param_memory(self, shapes: Mapping[str, Sequence[int]]) -> int:
        """Default training memory: ``bytes_per_param`` per parameter."""
        return self.bytes_per_param * sum(math.prod(s) for s in shapes.values())

    def kept_at(self, fraction: float, server_round: int) -> Kept:
        """The neurons of every group a node of width ``fraction`` holds."""
        raise NotImplementedError

    def summary(self) -> None:
        log(INFO, "\t├──> Sub-models: %s, memory per node from its budget", type(self).__name__)
        super().summary()

    # --- budgets ---------------------------------------------------------------
    def ask_budgets(self, node_ids: list[int], grid: Grid) -> None:
        """Query the nodes whose budget is not known yet (once per node)."""
        new = [n for n in node_ids if n not in self.budgets]
        if not new:
            return
        ask = ConfigRecord({QUERY_KEY: "budget"})
        messages = [
            Message(RecordDict({wire.CONFIG: ask}), dst_node_id=n, message_type=MessageType.QUERY)
            for n in new
        ]
        for reply in grid.send_and_receive(messages, timeout=self.query_timeout):
            node = reply.metadata.src_node_id
            metrics = None if reply.has_error() else reply.content.metric_records.get("metrics")
            if metrics is not None and BUDGET_KEY in metrics:
                self.budgets[node] = int(metrics[BUDGET_KEY])
        for n in new:
            if self.budgets.setdefault(n, None) is None:
                log(WARNING, "node %s gave no %s: it trains the whole model", n, BUDGET_KEY)

    def fraction_for(self, node: int) -> float:
        """The widest fraction whose sub-model's memory fits the node's budget."""
        assert self.layout is not None
        budget = self.budgets.get(node)
        if budget is None:
            return 1.0
        shapes = {k: v.shape for k, v in self.global_state.items()}
        layout = self.layout

        def fits(f: float) -> bool:
            kept = [np.arange(k) for k in layout.scaled(f)]
            return self.memory_fn(layout.sub_shapes(shapes, kept)) <= budget

        return largest_fraction(fits)

    # --- rounds ----------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.fraction_train == 0.0:
            return []
        self.global_state = {k: v.numpy() for k, v in arrays.items()}
        if self.layout is None:
            self.layout = ChainLayout.of({k: v.shape for k, v in self.global_state.items()})
        size = max(int(len(list(grid.get_node_ids())) * self.fraction_train), self.min_train_nodes)
        node_ids, _ = sample_nodes(grid, self.min_available_nodes, size)
        self.ask_budgets(node_ids, grid)
        config[wire.ROUND] = server_round
        messages, self.sent = [], {}
        for node in node_ids:
            f = self.fraction_for(node)
            if f == 0.0:
                log(WARNING, "node %s: its budget holds no sub-model; not sent", node)
                continue
            kept = self.kept_at(f, server_round)
            self.sent[node] = kept
            content = RecordDict(
                {
                    self.arrayrecord_key: wire.numpy_record(
                        self.layout.extract(self.global_state, kept)
                    ),
                    wire.KEPT: wire.pack_kept(kept),
                    self.configrecord_key: ConfigRecord({**config, FRACTION_KEY: f}),
                }
            )
            messages.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
        log(INFO, "configure_train: %s sub-models sent", len(messages))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True, validate=False)
        assert self.layout is not None
        shapes = {k: v.shape for k, v in self.global_state.items()}
        num = {k: np.zeros(s) for k, s in shapes.items()}
        den = {k: np.zeros(s) for k, s in shapes.items()}
        used = []
        for msg in valid:
            kept = self.reply_kept(msg)
            sub = msg.content.array_records.get(self.arrayrecord_key)
            metrics = msg.content.metric_records.get("metrics")
            if kept is None or sub is None or metrics is None:
                node = msg.metadata.src_node_id
                log(WARNING, "reply from node %s lacks arrays, metrics or a mask: left out", node)
                continue
            got = {k: v.numpy() for k, v in sub.items()}
            expected = self.layout.sub_shapes(shapes, kept)
            if (replied := {k: v.shape for k, v in got.items()}) != expected:
                wrong = {k: (replied.get(k), expected.get(k)) for k in {*replied, *expected}}
                wrong = {k: v for k, v in sorted(wrong.items()) if v[0] != v[1]}
                log(WARNING, "node %s replied arrays of other shapes than its mask, left out "
                    "(replied, expected: %s): train the model load_arrays() made of the "
                    "sub-model it was sent", msg.metadata.src_node_id, wrong)  # fmt: skip
                continue
            n = float(metrics[self.weighted_by_key])
            scatter_add_submodel(num, den, got, kept, n, self.layout.index(shapes, kept))
            used.append(msg)
        if not used:
            return None, None
        self.global_state = masked_mean(num, den, self.global_state)
        metrics = self.train_metrics_aggr_fn([m.content for m in used], self.weighted_by_key)
        return wire.numpy_record(self.global_state), metrics

    def reply_kept(self, msg: Message) -> Kept | None:
        """The neurons a reply holds: its own ``kept`` (it pruned), or those sent."""
        if wire.KEPT in msg.content.array_records:
            return wire.unpack_kept(msg.content.array_records[wire.KEPT])
        return self.sent.get(msg.metadata.src_node_id)


class HeteroFL(SubModelFedAvg):
    """HeteroFL (Diao et al., ICLR 2021): the first ``ceil(f * width)`` neurons of every
    group, nested across nodes."""

    def kept_at(self, fraction: float, server_round: int) -> Kept:
        assert self.layout is not None
        return [np.arange(k) for k in self.layout.scaled(fraction)]


class FedRolex(SubModelFedAvg):
    """FedRolex (Alam et al., NeurIPS 2022): a window of ``ceil(f * width)`` neurons
    rolling by one each round."""

    def kept_at(self, fraction: float, server_round: int) -> Kept:
        assert self.layout is not None
        return [
            np.sort((np.arange(k) + server_round) % w)
            for k, w in zip(self.layout.scaled(fraction), self.layout.widths, strict=True)
        ]


class MaskUnion(SubModelFedAvg):
    """fogsim's mask-union with nested masks: the first ``ceil(f * width)`` neurons of
    one fixed order per group, the initial model's incoming-weight L2 norms, largest
    first (see ``fogsim.strategies.mask_union``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.order: list[np.ndarray] | None = None

    def kept_at(self, fraction: float, server_round: int) -> Kept:
        assert self.layout is not None
        if self.order is None:
            self.order = self.weight_order()
        sizes = self.layout.scaled(fraction)
        return [np.sort(o[:k]) for k, o in zip(sizes, self.order, strict=True)]

    def weight_order(self) -> list[np.ndarray]:
        """Per group, its neurons by the L2 norm of their producer's rows (ties: lower
        index first)."""
        assert self.layout is not None
        out = []
        for g, width in enumerate(self.layout.widths):
            name = next(
                k
                for k, r in self.layout.roles.items()
                if r.out == g and self.global_state[k].ndim > 1
            )
            norms = np.linalg.norm(self.global_state[name].reshape(width, -1), axis=1)
            out.append(np.argsort(-norms, kind="stable"))
        return out
