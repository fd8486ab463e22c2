"""Partial aggregates: a cohort's good updates summed on the client, one reply record
whatever the cohort's size.

A sub-model strategy's aggregate is a sum (``fogsim.strategies.submodel``): per
global element, ``num = sum n_k m_k w_k`` and ``den = sum n_k m_k`` over the good
updates, then ``num / den``. Sums merge: the client of a cohort message adds its
nodes' good updates into one :class:`MaskedSum` and replies that (``partial``: ``num``
and ``den`` in float64: 4x the global model's float32 bytes) in place of the nodes'
weights; the server adds it into the round's sums. A reply then weighs
the same for 64 nodes as for 2, and the server's work per message does not grow with
its cohort.

**Which updates are good is decided as the server decides it**, with the same code
(``fogsim.flower.verdict``): finite weights, and on the simulated clock neither
departed (its availability window closed before its own finish) nor a straggler
(past ``deadline_s``). The server sends what that needs with each node (its bytes
down, link and compute figures, window end; the round's start and deadline) and, on
the reply, decides each node's status again from the metrics the client returns
(``bytes-up``, ``finite``): a node it counts ``ok`` that the client left out of the
sum, or the other way round, stops the run (it would mean the two sides' rules
differ, a bug). Every node's ``kept``, DynHP state and metrics still travel per
node: the fleet node stays the unit of everything users see.

The client replies the sum only when it is smaller than the weights it replaces
(one node of a small sub-model weighs less than a global-shaped sum); the server takes
either form. Sums in a different grouping change the model only by float summation
order (~1e-7 relative; ``tests/flower/test_partial.py`` compares cohort sizes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fogsim.device.pruning import Kept, scatter_add_submodel, submodel_index
from fogsim.flower import cohort, verdict, wire

NUM, DEN = "num", "den"  # partial record keys: "<num|den>:<parameter>"


class MaskedSum:
    """``num`` and ``den`` over the global model's shapes (the module doc); the
    output layer's rows of labels an update's node lacks get weight 0 when it says
    which it has (HeteroFL's label masking)."""

    def __init__(self, shapes: Mapping[str, Sequence[int]], output: tuple[str, str]) -> None:
        self.num = {k: np.zeros(s, dtype=np.float64) for k, s in shapes.items()}
        self.den = {k: np.zeros(s, dtype=np.float64) for k, s in shapes.items()}
        self.output = output  # the output layer's weight and bias names

    def add(
        self,
        sub: dict[str, np.ndarray],
        kept: Kept,
        n: float,
        labels: np.ndarray | None = None,
    ) -> None:
        """One update: sub-model ``sub`` holding the neurons ``kept``, ``n`` examples,
        ``labels`` (examples per label) to mask the output rows by."""
        num, den = self.num, self.den
        index = submodel_index({k: v.shape for k, v in num.items()}, kept)
        if labels is not None:
            has = (labels > 0).astype(np.float64)
            for name in self.output:
                weight = np.broadcast_to(
                    (n * has).reshape(-1, *[1] * (sub[name].ndim - 1)), sub[name].shape
                )
                num[name][index[name]] += weight * sub[name]
                den[name][index[name]] += weight
            sub = {k: v for k, v in sub.items() if k not in self.output}
        scatter_add_submodel(num, den, sub, kept, n, index)

    def add_whole(self, state: dict[str, np.ndarray], n: float) -> None:
        """One update of the whole model, ``n`` examples."""
        for name, value in state.items():
            self.num[name] += n * value.astype(np.float64)  # float32 * n would round
            self.den[name] += n

    def add_sums(self, record: Mapping[str, np.ndarray]) -> None:
        """Another sum, as :meth:`arrays` gives it."""
        for name in self.num:
            self.num[name] += record[f"{NUM}:{name}"]
            self.den[name] += record[f"{DEN}:{name}"]

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"{NUM}:{k}": v for k, v in self.num.items()} | {
            f"{DEN}:{k}": v for k, v in self.den.items()
        }

    @staticmethod
    def bytes_for(shapes: Mapping[str, Sequence[int]]) -> int:
        """Bytes of the sum over ``shapes``: ``num`` and ``den``, float64 each."""
        return 2 * 8 * sum(math.prod(s) for s in shapes.values())


def add_update(total: MaskedSum, content: RecordDict, label_mask: bool) -> None:
    """Add one node's good reply (``arrays``, ``kept``, ``metrics``; with ``label_mask``,
    its ``labels`` weigh the output rows)."""
    n = float(content[wire.METRICS][wire.NUM_EXAMPLES])
    sub = {k: wire.to_numpy(v) for k, v in content[wire.ARRAYS].items()}
    if wire.KEPT not in content:  # the whole model (FedAvg)
        total.add_whole(sub, n)
        return
    masked = label_mask and wire.LABELS in content
    labels = wire.unpack_labels(content[wire.LABELS]) if masked else None
    total.add(sub, wire.unpack_kept(content[wire.KEPT]), n, labels)


def fold(sent: RecordDict, replied: RecordDict, output: tuple[str, str]) -> RecordDict:
    """The cohort reply ``replied`` (to message content ``sent``) with its good updates
    summed: every trained node's weights replaced by its ``bytes-up`` and ``finite``
    metrics, and one ``partial`` record of the sum plus the nodes in it. Unchanged
    when the sum would weigh more than the weights it replaces."""
    shapes = {k: a.shape for k, a in sent[wire.ARRAYS].items()}
    trained: dict[int, tuple[bool, int]] = {}  # node -> (finite, bytes up)
    good: list[tuple[int, RecordDict, bool]] = []  # (node, reply, label mask) to sum
    by_node = cohort.parts(replied)
    for node, own in cohort.unpack(sent):
        content = RecordDict(by_node.get(node, {}))
        if wire.ARRAYS not in content:  # crashed, dropped out or refused
            continue
        status = verdict.reply_status(content)
        up = wire.array_bytes(content[wire.ARRAYS])
        trained[node] = (status == "ok", up)
        flops = float(content[wire.METRICS].get(wire.TRAIN_FLOPS, 0.0))
        window = verdict.Window.of_config(own[wire.CONFIG])
        if verdict.on_the_clock(status, window, up, flops)[0] == "ok":
            good.append((node, content, bool(own[wire.CONFIG].get(wire.LABEL_MASK))))
    if MaskedSum.bytes_for(shapes) >= sum(up for _, up in trained.values()):
        return replied
    total = MaskedSum(shapes, output)
    for _, content, label_mask in good:
        add_update(total, content, label_mask)
    out = RecordDict({k: r for k, r in replied.items() if not _is_weights(k)})
    for node, (finite, up) in trained.items():
        metrics = dict(out[cohort.key(node, wire.METRICS)])
        metrics.update({wire.BYTES_UP: up, wire.FINITE: int(finite)})
        out[cohort.key(node, wire.METRICS)] = MetricRecord(metrics)
    if good:
        out[wire.PARTIAL] = wire.numpy_record(total.arrays())
    out[wire.PARTIAL_NODES] = ConfigRecord({wire.PARTIAL_NODES: [n for n, _, _ in good]})
    return out


def summed_nodes(reply: Message) -> list[int] | None:
    """The nodes whose updates a reply's ``partial`` sums (None: a reply with each
    node's weights)."""
    if wire.PARTIAL_NODES not in reply.content:
        return None
    return [int(n) for n in reply.content[wire.PARTIAL_NODES][wire.PARTIAL_NODES]]


def _is_weights(name: str) -> bool:
    return name.partition(cohort.SEP)[2] == wire.ARRAYS
