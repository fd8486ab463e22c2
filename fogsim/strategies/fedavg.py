"""``fedavg``: dense Federated Averaging (McMahan et al. 2017) over the fleet.

Every sampled node trains the full model, whatever its memory budget: the
unconstrained reference that budget-aware strategies are compared with.
"""

from fogsim.strategies.base import FogStrategy, register


@register("fedavg")
class FedAvgDense(FogStrategy):
    """Flower's FedAvg, with fogsim's seeded fleet sampling and accounting."""
