"""``fedrolex``: a rolling window of neurons (Alam et al., FedRolex, NeurIPS 2022).

A node of width fraction ``f`` holds ``k = ceil(f * width)`` neurons per group, the
window ``(arange(k) + round) mod width``: it rolls by one each round, so over time
every neuron of the global model is trained by small devices too.
"""

import numpy as np

from fogsim.device.pruning import Kept
from fogsim.strategies.registry import register
from fogsim.strategies.submodel import SubModelStrategy


@register("fedrolex")
class FedRolex(SubModelStrategy):
    def kept_at(self, fraction: float, server_round: int) -> Kept:
        sizes = self.arch.scaled(fraction).widths
        return [
            np.sort((np.arange(k) + server_round) % w)
            for k, w in zip(sizes, self.widths, strict=True)
        ]
