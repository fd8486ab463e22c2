"""Dense Federated Averaging (McMahan et al. 2017) over the fleet, two ways.

- ``fedavg`` / ``fedavg-dense``: every sampled node trains the full model whatever its
  memory budget: the unconstrained upper bound, infeasible on small devices (their
  rows show ``over_budget = 1``).
- ``fedavg-feasible``: only nodes whose budget holds the full model at the minimum
  batch take part; the others are never sampled.
"""

from typing import Any

from fogsim.strategies.base import FogStrategy, register


@register("fedavg")
class FedAvgDense(FogStrategy):
    """Flower's FedAvg, with fogsim's seeded fleet sampling and accounting."""


register("fedavg-dense")(type("FedAvgDenseAlias", (FedAvgDense,), {}))


@register("fedavg-feasible")
class FedAvgFeasible(FogStrategy):
    """FedAvg restricted to the nodes that can hold the full model."""

    def __init__(self, scenario, fleet, **params: Any) -> None:  # noqa: ANN001
        super().__init__(scenario, fleet, **params)
        self.takes_part = fleet.budgets >= self.budget_for(1.0)
        if not self.takes_part.any():
            raise ValueError("fedavg-feasible: no node's budget holds the full model")
