"""Strategies whose clients hold sub-models of different sizes, merged element-wise.

Every such strategy decides, per node and round, which neurons of the global model the
node holds (``kept``: global indices per neuron group, ``fogsim.device.pruning``). The
server sends only those weights and their indices; a reply is added in place with
``scatter_add_submodel`` and each global parameter becomes the example-weighted average
over the clients that hold it, ``sum n_k m_k w_k / sum n_k m_k``; parameters no client
holds this round keep their value. With every mask full this is FedAvg exactly.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fogsim.device.pruning import Kept, extract_submodel, scatter_add_submodel
from fogsim.fleet import Fleet
from fogsim.flower import wire
from fogsim.scenario import Scenario
from fogsim.strategies.base import FogStrategy


class SubModelStrategy(FogStrategy):
    """Base of sub-model strategies: subclasses choose :meth:`kept_at`, the neurons a
    device of a given width fraction holds (and may override :meth:`kept_for`)."""

    mode = "plain"  # client training mode: "plain" (fixed sub-model) or "dynhp"

    def __init__(self, scenario: Scenario, fleet: Fleet) -> None:
        super().__init__(scenario, fleet)
        self.widths = self.arch.widths
        self.takes_part = fleet.budgets >= self.budget_for(0.0)  # width 1 fits
        self.global_state: dict[str, np.ndarray] = {}
        self.kept: dict[int, Kept] = {}  # node -> the neurons it held when it last trained

    @abstractmethod
    def kept_at(self, fraction: float, server_round: int) -> Kept:
        """The sub-model of width ``fraction`` this strategy hands out."""

    def kept_for(self, node: int, server_round: int) -> Kept:
        """The neurons ``node`` holds this round."""
        return self.kept_at(self.width_fraction(node), server_round)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.global_state = {k: v.numpy() for k, v in arrays.items()}
        return super().configure_train(server_round, arrays, config, grid)

    def node_payload(
        self, node: int, arrays: ArrayRecord, server_round: int
    ) -> tuple[dict[str, ArrayRecord], dict[str, Any]]:
        kept = self.kept_for(node, server_round)
        sub = extract_submodel(self.global_state, kept)  # torch tensors
        records = {wire.ARRAYS: ArrayRecord(sub), wire.KEPT: wire.pack_kept(kept)}
        return records, {wire.MODE: self.mode}

    def aggregate(
        self, server_round: int, replies: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        shapes = {k: v.shape for k, v in self.global_state.items()}
        num = {k: np.zeros(s, dtype=np.float64) for k, s in shapes.items()}
        den = {k: np.zeros(s, dtype=np.float64) for k, s in shapes.items()}
        for msg in replies:
            n = float(msg.content[wire.METRICS][wire.NUM_EXAMPLES])
            sub = {k: v.numpy() for k, v in msg.content[wire.ARRAYS].items()}
            scatter_add_submodel(num, den, sub, wire.unpack_kept(msg.content[wire.KEPT]), n)
        self.global_state = {
            k: np.where(den[k] > 0, num[k] / np.maximum(den[k], 1e-300), old).astype(old.dtype)
            for k, old in self.global_state.items()
        }
        held = sum(int((d > 0).sum()) for d in den.values())
        self.round_stats["union_params"] = held
        return wire.numpy_record(self.global_state), None

    def on_reply(self, node: int, msg: Message, straggler: bool) -> None:
        self.kept[node] = wire.unpack_kept(msg.content[wire.KEPT])

    def held_model(self, node: int, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The global weights of the neurons the node held when it last trained."""
        return {k: v.numpy() for k, v in extract_submodel(state, self.kept[node]).items()}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "kept": self.kept}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.kept = state.get("kept", {})

    def nested(self, fraction: float) -> Kept:
        """The first ``ceil(fraction * width)`` neurons of each group (HeteroFL slices)."""
        return [np.arange(k) for k in self.arch.scaled(fraction).widths]
