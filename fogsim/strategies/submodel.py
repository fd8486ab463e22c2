"""Strategies whose clients hold sub-models of different sizes, merged element-wise.

Every such strategy decides, per node and round, which neurons of the global model the
node holds (``kept``: global indices per neuron group, ``fogsim.pruning``). The server
sends only those weights and their indices; a reply is added in place with
``scatter_add_submodel`` and each global parameter becomes the example-weighted average
over the clients that hold it, ``sum n_k m_k w_k / sum n_k m_k``; parameters no client
holds this round keep their value. With every mask full this is FedAvg exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from fogsim.pruning import Kept, extract_submodel, scatter_add_submodel
from fogsim.strategies.base import FogStrategy, numpy_record


def pack_groups(arrays: list[np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """Per-group arrays as ``{"<prefix>.<group>": array}`` (ArrayRecord keys)."""
    return {f"{prefix}.{g}": np.asarray(a) for g, a in enumerate(arrays)}


def unpack_groups(record: ArrayRecord, prefix: str) -> list[np.ndarray]:
    n = sum(1 for k in record if k.startswith(prefix + "."))
    return [record[f"{prefix}.{g}"].numpy() for g in range(n)]


def pack_kept(kept: Kept) -> ArrayRecord:
    return numpy_record(pack_groups([np.asarray(k, dtype=np.int64) for k in kept], "kept"))


def unpack_kept(record: ArrayRecord) -> Kept:
    return unpack_groups(record, "kept")


class SubModelStrategy(FogStrategy):
    """Base of sub-model strategies: subclasses choose :meth:`kept_for` each node."""

    mode = "plain"  # client training mode: "plain" (fixed sub-model) or "dynhp"

    def __init__(self, scenario, fleet, **params: Any) -> None:  # noqa: ANN001
        super().__init__(scenario, fleet, **params)
        self.widths = self.arch.widths
        self.takes_part = fleet.budgets >= self.budget_for(0.0)  # width 1 fits
        self.global_state: dict[str, np.ndarray] = {}

    def kept_for(self, node: int, server_round: int) -> Kept:
        """The neurons ``node`` holds this round."""
        return self.kept_at(self.fraction(node), server_round)

    def kept_at(self, fraction: float, server_round: int) -> Kept:
        """The sub-model of width ``fraction`` this strategy hands out."""
        raise NotImplementedError

    def configure_train(self, server_round, arrays, config, grid):  # noqa: ANN001
        self.global_state = {k: v.numpy() for k, v in arrays.items()}
        return super().configure_train(server_round, arrays, config, grid)

    def node_payload(self, node, arrays, server_round):  # noqa: ANN001
        kept = self.kept_for(node, server_round)
        sub = extract_submodel(self.global_state, kept)
        records = {"arrays": ArrayRecord(sub), "kept": pack_kept(kept)}  # sub: torch tensors
        return records, {"mode": self.mode}

    def aggregate(
        self, server_round: int, replies: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        shapes = {k: v.shape for k, v in self.global_state.items()}
        num = {k: np.zeros(s, dtype=np.float64) for k, s in shapes.items()}
        den = {k: np.zeros(s, dtype=np.float64) for k, s in shapes.items()}
        for msg in replies:
            n = float(msg.content["metrics"]["num-examples"])
            sub = {k: v.numpy() for k, v in msg.content["arrays"].items()}
            scatter_add_submodel(num, den, sub, unpack_kept(msg.content["kept"]), n)
        self.global_state = {
            k: np.where(den[k] > 0, num[k] / np.maximum(den[k], 1e-300), old).astype(old.dtype)
            for k, old in self.global_state.items()
        }
        held = sum(int((d > 0).sum()) for d in den.values())
        self.round_stats["union_params"] = held
        return numpy_record(self.global_state), None

    def deployable(
        self, state: dict[str, np.ndarray], budget: int, server_round: int
    ) -> dict[str, np.ndarray] | None:
        f = self.fitting_fraction(budget)
        return extract_submodel(state, self.kept_at(f, server_round)) if f > 0 else None

    def nested(self, fraction: float) -> Kept:
        """The first ``ceil(fraction * width)`` neurons of each group (HeteroFL slices)."""
        return [np.arange(k) for k in self.arch.scaled(fraction).widths]
