"""``fedrolex``: a rolling window of neurons (Alam et al., FedRolex, NeurIPS 2022).

A node of width fraction ``f`` holds ``k = ceil(f * width)`` neurons per group, the
window ``(arange(k) + round) mod width``: it rolls by one each round, so over time
every neuron of the global model is trained by small devices too.
"""

import math

import numpy as np

from fogsim.pruning import Kept
from fogsim.strategies.base import register
from fogsim.strategies.submodel import SubModelStrategy


@register("fedrolex")
class FedRolex(SubModelStrategy):
    def kept_at(self, fraction: float, server_round: int) -> Kept:
        out = []
        for w in self.widths:
            k = max(1, math.ceil(fraction * w))
            out.append(np.sort((np.arange(k) + server_round) % w))
        return out
