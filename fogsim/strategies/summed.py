"""Strategies whose aggregate is a sum: FedAvg and the sub-model strategies.

Both average each global element over the updates that hold it, weighted by their
examples: ``sum n_k m_k w_k / sum n_k m_k`` (``m_k`` = 1 where update ``k`` holds the
element; for FedAvg every update holds every element). Sums merge, so
:class:`SummedAggregate` keeps a round's aggregate as running sums
(``fogsim.flower.partial.MaskedSum``): each good update is added as it arrives and
dropped, and the message asks the client (``wire.SUM``) to add its cohort's good
updates up itself and reply one sum, which is added in the same way. Elements no
update holds keep their value. With every mask full this is FedAvg exactly (to float
summation order: ``tests/strategies/test_strategies.py`` compares with Flower's).

A strategy built on these whose aggregation is someone else's (a Flower strategy run
as a plug-in) sets :attr:`sums_on_client` False and keeps the list hooks of
``FogStrategy``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fogsim.device.pruning import masked_mean
from fogsim.flower import wire
from fogsim.flower.partial import MaskedSum, add_update


class SummedAggregate:
    """The round's aggregate as running sums (module doc); mixed in before
    ``FogStrategy``, whose :attr:`arch` and hooks it uses."""

    sums_on_client = True
    label_mask = False  # sub-model strategies may weigh output rows by labels
    arch: Any
    global_state: dict[str, np.ndarray]
    total: MaskedSum | None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.global_state = {k: v.numpy() for k, v in arrays.items()}
        if self.sums_on_client:
            config[wire.SUM] = 1
        return super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc]

    def aggregate(
        self, server_round: int, replies: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.begin_aggregate()
        for msg in replies:
            self.absorb(server_round, msg)
        return self.merged(server_round)

    def begin_aggregate(self) -> None:
        """Zero the running sums ``num = sum n_k m_k w_k`` and ``den = sum n_k m_k``
        over the global model sent this round."""
        self.total = None
        if getattr(self, "global_state", None):
            shapes = {k: v.shape for k, v in self.global_state.items()}
            self.total = MaskedSum(shapes, self.arch.output_names)

    def absorb(self, server_round: int, msg: Message) -> None:
        """Add one update, or a client's sum of several (``fogsim.flower.partial``),
        into the running sums, where the nodes hold each element."""
        if self.total is None:  # replies aggregated without configure_train: whole models
            first = {k: wire.to_numpy(v) for k, v in msg.content[wire.ARRAYS].items()}
            self.global_state = {k: np.zeros_like(v) for k, v in first.items()}
            self.begin_aggregate()
        if wire.PARTIAL in msg.content:
            self.total.add_sums({k: wire.to_numpy(v) for k, v in msg.content[wire.PARTIAL].items()})
        else:
            add_update(self.total, msg.content, self.label_mask)

    def merged(self, server_round: int) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Each element's average over the updates holding it; elements none held keep
        their value (:attr:`last_den`: the weight behind each)."""
        if self.total is None:  # nothing absorbed
            return None, None
        self.global_state = masked_mean(self.total.num, self.total.den, self.global_state)
        self.last_den, self.total = self.total.den, None
        return wire.numpy_record(self.global_state), None
