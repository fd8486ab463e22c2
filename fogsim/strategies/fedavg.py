"""Dense Federated Averaging (McMahan et al. 2017) over the fleet, two ways.

- ``fedavg`` / ``fedavg-dense``: every sampled node trains the full model whatever its
  memory budget: the unconstrained upper bound, infeasible on small devices (their
  rows show ``over_budget = 1``).
- ``fedavg-feasible``: only nodes whose budget holds the full model at the minimum
  batch take part; the others are never sampled.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ArrayRecord

from fogsim.fleet import Fleet
from fogsim.flower import wire
from fogsim.scenario import Scenario
from fogsim.strategies.base import FogStrategy
from fogsim.strategies.registry import register
from fogsim.strategies.summed import SummedAggregate


@register("fedavg", "fedavg-dense")
class FedAvgDense(SummedAggregate, FogStrategy):
    """FedAvg (``fogsim.strategies.summed``: the example-weighted mean, as Flower's
    ``FedAvg`` computes it), with fogsim's seeded fleet sampling and accounting; every
    node trains the global model as it is."""

    mode = "dense"  # the client trains regardless of its budget (and flags it)

    def node_payload(
        self, node: int, arrays: ArrayRecord, server_round: int
    ) -> tuple[dict[str, ArrayRecord], dict[str, Any]]:
        return {wire.ARRAYS: arrays}, {wire.MODE: self.mode}

    def held_model(self, node: int, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The whole global model."""
        return state


@register("fedavg-feasible")
class FedAvgFeasible(FedAvgDense):
    """FedAvg restricted to the nodes that can hold the full model; each trains it at
    the largest batch (up to the scenario's) that fits its budget."""

    mode = "plain"  # the client sizes its batch to its budget

    def __init__(self, scenario: Scenario, fleet: Fleet) -> None:
        super().__init__(scenario, fleet)
        need, extra = self.budget_for(1.0), self.extra_bytes()
        self.takes_part = fleet.budgets >= need + extra
        if not self.takes_part.any():
            copy = f" plus {extra} B, the copy of the received model FedProx keeps" if extra else ""
            raise ValueError(
                f"fedavg-feasible: no node's budget holds the full model ({need} B at batch "
                f"{self.min_batch}{copy}); the largest is {int(fleet.budgets.max())} B"
            )

    def extra_bytes(self) -> int:
        """Bytes a node keeps through local training besides the step itself (none
        here; a Flower plug-in's FedProx keeps a copy of the received model)."""
        return 0
