"""``mask-union`` (default for pruning fleets): DynHP on every client, union of masks.

- **Sub-model extraction.** A node that has trained before gets back exactly the
  neurons it kept (its DynHP mask). A new node gets, per group, the ``k`` neurons of
  largest incoming-weight L2 norm in the current global model (weight-norm is the
  importance the server can compute without data), ``k = ceil(f * width)`` for the
  largest fraction ``f`` its budget trains at the minimum batch (memory model).
- **Local training.** The client runs DynHP under its budget: it prunes further on the
  schedule and grows its batch into the memory freed. The schedule runs across rounds:
  a node's progress is its participations so far over ``[dynhp] participations``.
- **Per-device target.** A device prunes only as far as its budget asks: its target
  compression is ``min([dynhp] target_compression, dense / the widest model it trains
  at max_batch)``, at least 1. A cloudlet that trains the dense model at the largest
  batch keeps it; a sensor goes to the full target. (A fleet-wide 10x would shrink
  every device, and the federation with it, to a tenth of the model.)
- **Client state lives on the server.** The node's mask (``kept``) and DynHP state
  (scores, gate streaks) come back in the reply and are sent with its next message,
  so clients are stateless (Flower's ``context.state`` is not needed, and a
  checkpoint of the server is a checkpoint of the whole fleet).
- **Aggregation.** Element-wise ``sum n_k m_k w_k / sum n_k m_k`` over the clients
  holding each parameter (``SubModelStrategy``); the global model is the union of
  the client masks.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from fogsim.device.memory import widest_fraction
from fogsim.device.pruning import Kept
from fogsim.fleet import Fleet
from fogsim.flower import wire
from fogsim.scenario import Scenario
from fogsim.strategies.registry import register
from fogsim.strategies.submodel import SubModelStrategy


@register("mask-union")
class MaskUnion(SubModelStrategy):
    mode = "dynhp"

    def __init__(
        self,
        scenario: Scenario,
        fleet: Fleet,
        *,
        scaler: bool = False,
        clip_grad: float | None = None,
        label_mask: bool = False,
        steer: bool = False,
        fixed_order: bool = False,
        stickiness: float = 0.0,
        regrow: bool = False,
        target_batch: Literal["max", "min"] = "max",
        importance_ema: float = 0.5,
        importance_prior: Literal["weight-norm", "rank"] = "weight-norm",
    ) -> None:
        super().__init__(scenario, fleet, scaler=scaler, clip_grad=clip_grad, label_mask=label_mask)
        if target_batch not in ("max", "min"):
            raise ValueError(f"target_batch must be 'max' or 'min', not {target_batch!r}")
        if not 0 <= importance_ema < 1:
            raise ValueError(f"importance_ema must be in [0, 1), not {importance_ema}")
        self.steer, self.regrow = bool(steer), bool(regrow)
        self.fixed_order = bool(fixed_order)
        self.order: list[np.ndarray] | None = None
        self.stickiness = float(stickiness)
        self.last_top: dict[tuple[int, ...], Kept] = {}
        self.target_batch, self.importance_ema = target_batch, float(importance_ema)
        self.importance_prior = importance_prior
        # per group, the server's importance of every global neuron (steer)
        self.importance: list[np.ndarray] | None = None
        self.sent_kept: dict[int, Kept] = {}  # this round: node -> the neurons it was sent
        self.dynhp_state: dict[int, ArrayRecord] = {}
        self.participations: dict[int, int] = {}
        sc = scenario
        expected = sc.run.rounds * sc.simulation.clients_per_round / sc.fleet.nodes
        self.planned = sc.dynhp.participations or max(1, math.ceil(expected))

    def target(self, node: int) -> float:
        """The node's target compression: ``min(target_compression, dense / widest model
        it trains at max_batch)``, at least 1 (computed when the node is sampled)."""
        dynhp = self.scenario.dynhp
        budget = self.fleet.budget(node)
        batch = dynhp.max_batch if self.target_batch == "max" else dynhp.min_batch
        f = widest_fraction(self.arch, budget, self.optimizer, batch)
        ratio = self.arch.num_params() / self.arch.scaled(f).num_params()
        return min(dynhp.target_compression, max(1.0, ratio))

    def weight_norms(self) -> list[np.ndarray]:
        """Per group, each neuron's incoming-weight L2 norm in the current global model."""
        out = []
        n_conv = len(self.arch.channels)
        for g, w in enumerate(self.widths):
            name = f"convs.{g}.weight" if g < n_conv else f"fcs.{g - n_conv}.weight"
            out.append(np.linalg.norm(self.global_state[name].reshape(w, -1), axis=1))
        return out

    def kept_at(self, fraction: float, server_round: int) -> Kept:
        """Per group, the ``ceil(fraction * width)`` most important neurons: by the
        server's aggregated importance (``steer``, once it has one), else by
        incoming-weight norm in the current global model."""
        rank = self.importance if self.steer and self.importance is not None else None
        if self.fixed_order:
            self.order = self.order or self.weight_norms()
            rank = self.order
        rank = rank or self.weight_norms()
        sizes = self.arch.scaled(fraction).widths
        out = [np.sort(np.argsort(-r, kind="stable")[:k]) for k, r in zip(sizes, rank, strict=True)]
        prev = self.last_top.get(tuple(sizes))
        if self.stickiness > 0 and prev is not None:
            out = [self._sticky(p, r) for p, r in zip(prev, rank, strict=True)]
        self.last_top[tuple(sizes)] = out
        return out

    def _sticky(self, prev: np.ndarray, rank: np.ndarray) -> np.ndarray:
        inside = np.zeros(len(rank), dtype=bool)
        inside[prev] = True
        while inside.any() and not inside.all():
            i = np.flatnonzero(inside)[np.argmin(rank[inside])]
            o = np.flatnonzero(~inside)[np.argmax(rank[~inside])]
            if rank[o] <= (1 + self.stickiness) * rank[i]:
                break
            inside[i], inside[o] = False, True
        return np.flatnonzero(inside)

    def kept_for(self, node: int, server_round: int) -> Kept:
        if self.regrow or node not in self.kept:
            return super().kept_for(node, server_round)
        return self.kept[node]

    def node_payload(
        self, node: int, arrays: ArrayRecord, server_round: int
    ) -> tuple[dict[str, ArrayRecord], dict[str, Any]]:
        records, config = super().node_payload(node, arrays, server_round)
        self.sent_kept[node] = wire.unpack_kept(records[wire.KEPT])
        if node in self.dynhp_state and not self.regrow:
            records[wire.DYNHP] = self.dynhp_state[node]
        config[wire.TARGET] = self.target(node)
        p = self.participations.get(node, 0)
        config[wire.PROGRESS_START] = min(1.0, p / self.planned)
        config[wire.PROGRESS_END] = min(1.0, (p + 1) / self.planned)
        return records, config

    def on_reply(self, node: int, msg: Message, straggler: bool) -> None:
        # A straggler still pruned on its device: its mask and state are real.
        super().on_reply(node, msg, straggler)
        self.dynhp_state[node] = msg.content[wire.DYNHP]
        self.participations[node] = self.participations.get(node, 0) + 1

    def aggregate(
        self, server_round: int, replies: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        before = self.weight_norms() if self.importance is None else None
        out = super().aggregate(server_round, replies)
        if self.steer:
            self.update_importance(replies, before)
        return out

    def update_importance(self, replies: list[Message], initial: list[np.ndarray] | None) -> None:
        """Fold this round's DynHP scores into the server's importance (``steer``).

        Per client, its scores of the neurons it kept, divided by their mean (units
        differ between devices and rounds), and 0 for neurons it was sent but pruned;
        per neuron, the example-weighted mean over the clients that held it, folded
        into an EMA (``importance_ema``); neurons nobody held keep their importance.
        The first importance is the global model's weight norms (divided by their
        mean), the ranking new nodes got until then."""
        if self.importance is None and self.importance_prior == "rank":
            # the initial order, as a spread 2 (first) .. 0 (last): a strong prior
            self.importance = []
            for w in initial or []:
                rank = np.empty(len(w))
                rank[np.argsort(-w, kind="stable")] = np.arange(len(w))
                self.importance.append(2.0 * (1.0 - rank / len(w)))
        if self.importance is None:
            self.importance = [w / max(float(w.mean()), 1e-12) for w in initial or []]
        num = [np.zeros(w) for w in self.widths]
        den = [np.zeros(w) for w in self.widths]
        for msg in replies:
            node = int(msg.content[wire.METRICS][wire.NODE])
            n = float(msg.content[wire.METRICS][wire.NUM_EXAMPLES])
            kept = wire.unpack_kept(msg.content[wire.KEPT])
            state = wire.unpack_dynhp_state(msg.content[wire.DYNHP])
            sent = self.sent_kept.get(node, kept)
            for g, k in enumerate(kept):
                s = state["score"][g][k]
                if not state["seen"][g][k].all() or len(s) == 0:
                    continue  # scored nothing (no gradient step)
                num[g][k] += n * s / max(float(s.mean()), 1e-12)
                den[g][sent[g]] += n  # pruned this round: importance 0
        a = self.importance_ema
        self.importance = [
            np.where(d > 0, a * old + (1 - a) * nu / np.maximum(d, 1e-300), old)
            for old, nu, d in zip(self.importance, num, den, strict=True)
        ]

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "importance": self.importance,
            "dynhp": {n: {k: a.numpy() for k, a in r.items()} for n, r in self.dynhp_state.items()},
            "participations": self.participations,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.dynhp_state = {n: wire.numpy_record(r) for n, r in state["dynhp"].items()}
        self.participations = state["participations"]
        self.importance = state.get("importance")
