"""Strategies whose clients hold sub-models of different sizes, merged element-wise.

Every such strategy decides, per node and round, which neurons of the global model the
node holds (``kept``: global indices per neuron group, ``fogsim.device.pruning``). The
server sends the global model (once per cohort message) and those indices, the
client trains only those weights (``fogsim.flower.wire``); a reply is added in place with
``scatter_add_submodel`` and each global parameter becomes the example-weighted average
over the clients that hold it, ``sum n_k m_k w_k / sum n_k m_k``; parameters no client
holds this round keep their value. With every mask full this is FedAvg exactly.

**Training care for sub-models** (HeteroFL's reference code, which FedRolex's reuses;
each a keyword parameter, sent to the client in the message config):

- ``scaler``: in training, a sub-model multiplies each hidden group's pre-activation
  by global width / its width (HeteroFL's ``Scaler``, ``1/rate``; identity in a
  deployed model: ``fogsim.device.models``), so narrow and wide models train weights
  of the same magnitude;
- ``clip_grad``: clip each step's gradient norm to this (both reference codes clip
  to 1; 0 or None: no clipping);
- ``label_mask``: the client zeroes the logits of labels absent from its data while
  training and replies its examples per label; the output layer's row of label ``c``
  is then averaged only over the clients that hold label ``c`` (HeteroFL's
  ``label_split`` masking, its ``mask = 1``).

HeteroFL's static batch norm has no counterpart: FogNet has no normalisation layers.

One more option, for fair comparisons with ``mask-union`` rather than from any
reference code: ``batch_lr`` scales a fixed sub-model's LR with its batch the way
DynHP scales its own (``[dynhp] lr_scaling`` of ``batch / [train] batch_size``), so a
small device training at batch 18 uses ``lr * sqrt(18/32)`` as DynHP's clients do.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from fogsim.device.pruning import Kept, extract_submodel
from fogsim.fleet import Fleet
from fogsim.flower import wire
from fogsim.scenario import Scenario
from fogsim.strategies.base import FogStrategy
from fogsim.strategies.summed import SummedAggregate


class SubModelStrategy(SummedAggregate, FogStrategy):
    """Base of sub-model strategies: subclasses choose :meth:`kept_at`, the neurons a
    device of a given width fraction holds (and may override :meth:`kept_for`)."""

    mode = "plain"  # client training mode: "plain" (fixed sub-model) or "dynhp"

    def __init__(
        self,
        scenario: Scenario,
        fleet: Fleet,
        *,
        scaler: bool = False,
        clip_grad: float | None = None,
        label_mask: bool = False,
        batch_lr: bool = False,
        dynhp: bool | None = None,
    ) -> None:
        super().__init__(scenario, fleet, dynhp=dynhp)
        self.batch_lr = bool(batch_lr)
        if clip_grad is not None and not clip_grad >= 0:
            raise ValueError(f"clip_grad must be >= 0 (0: no clipping), not {clip_grad}")
        self.scaler, self.label_mask = bool(scaler), bool(label_mask)
        self.clip_grad = float(clip_grad) if clip_grad else None
        self.widths = self.arch.widths
        self.takes_part = fleet.budgets >= self.budget_for(0.0)  # width 1 fits
        self.global_state: dict[str, np.ndarray] = {}
        self.kept: dict[int, Kept] = {}  # node -> the neurons it held when it last trained
        # per parameter, the weight behind the last aggregate (sum n_k m_k): what a fog
        # tier's model is merged with at the cloud (fogsim.topology.merge)
        self.merge_weights: dict[str, np.ndarray] | None = None

    @abstractmethod
    def kept_at(self, fraction: float, server_round: int) -> Kept:
        """The sub-model of width ``fraction`` this strategy hands out."""

    def kept_for(self, node: int, server_round: int) -> Kept:
        """The neurons ``node`` holds this round."""
        return self.kept_at(self.width_fraction(node), server_round)

    def node_payload(
        self, node: int, arrays: ArrayRecord, server_round: int
    ) -> tuple[dict[str, ArrayRecord], dict[str, Any]]:
        # the global model (sent once per cohort) and the neurons: the client slices
        kept = self.kept_for(node, server_round)
        records = {wire.ARRAYS: arrays, wire.KEPT: wire.pack_kept(kept)}
        return records, {wire.MODE: self.mode, **self.care()}

    def care(self) -> dict[str, Any]:
        """The training care config keys sent with every message (module doc)."""
        out: dict[str, Any] = {}
        if self.scaler:
            out[wire.SCALER] = 1
        if self.clip_grad is not None:
            out[wire.CLIP] = float(self.clip_grad)
        if self.label_mask:
            out[wire.LABEL_MASK] = 1
        if self.batch_lr and self.mode == "plain":
            out[wire.BATCH_LR] = 1
        return out

    def merged(self, server_round: int) -> tuple[ArrayRecord | None, MetricRecord | None]:
        new = super().merged(server_round)
        self.merge_weights = self.last_den  # what a fog tier merges this model with
        self.round_stats["union_params"] = sum(int((d > 0).sum()) for d in self.last_den.values())
        return new

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


class ReferenceCare(SubModelStrategy):
    """A sub-model strategy trained as HeteroFL's and FedRolex's reference code trains:
    gradient-norm clipping to 1 and label masking by default (their modules' docs
    say where); the Scaler stays off. Each default is a ``[strategy] params`` key."""

    def __init__(
        self,
        scenario: Scenario,
        fleet: Fleet,
        *,
        scaler: bool = False,
        clip_grad: float | None = 1.0,
        label_mask: bool = True,
        batch_lr: bool = False,
    ) -> None:
        super().__init__(
            scenario,
            fleet,
            scaler=scaler,
            clip_grad=clip_grad,
            label_mask=label_mask,
            batch_lr=batch_lr,
        )
