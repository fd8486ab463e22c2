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
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message

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
    ) -> None:
        super().__init__(scenario, fleet, scaler=scaler, clip_grad=clip_grad, label_mask=label_mask)
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
        f = widest_fraction(self.arch, budget, self.optimizer, dynhp.max_batch)
        ratio = self.arch.num_params() / self.arch.scaled(f).num_params()
        return min(dynhp.target_compression, max(1.0, ratio))

    def kept_at(self, fraction: float, server_round: int) -> Kept:
        """Per group, the ``ceil(fraction * width)`` neurons of largest incoming-weight
        norm in the current global model."""
        out = []
        n_conv = len(self.arch.channels)
        sizes = self.arch.scaled(fraction).widths
        for g, (k, w) in enumerate(zip(sizes, self.widths, strict=True)):
            name = f"convs.{g}.weight" if g < n_conv else f"fcs.{g - n_conv}.weight"
            weight = self.global_state[name].reshape(w, -1)
            out.append(np.sort(np.argsort(-np.linalg.norm(weight, axis=1), kind="stable")[:k]))
        return out

    def kept_for(self, node: int, server_round: int) -> Kept:
        return self.kept.get(node) or super().kept_for(node, server_round)

    def node_payload(
        self, node: int, arrays: ArrayRecord, server_round: int
    ) -> tuple[dict[str, ArrayRecord], dict[str, Any]]:
        records, config = super().node_payload(node, arrays, server_round)
        if node in self.dynhp_state:
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

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "dynhp": {n: {k: a.numpy() for k, a in r.items()} for n, r in self.dynhp_state.items()},
            "participations": self.participations,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.dynhp_state = {n: wire.numpy_record(r) for n, r in state["dynhp"].items()}
        self.participations = state["participations"]
