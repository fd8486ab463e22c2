"""``fedrolex``: a rolling window of neurons (Alam et al., FedRolex, NeurIPS 2022).

A node of width fraction ``f`` holds ``k = ceil(f * width)`` neurons per group, the
window ``(arange(k) + round) mod width``: it rolls by one each round, so over time
every neuron of the global model is trained by small devices too.

**As the reference code trains** (``AIoT-MLSys-Lab/FedRolex``, built on HeteroFL's:
``resnet_client.py`` clips gradient norms to 1 and masks absent labels, the
server's ``combine`` averages output rows over the clients holding each label):
``clip_grad = 1.0`` and ``label_mask = True`` by default; its ``Scaler`` is off
(``scaler = False``) for the reason given in ``fogsim.strategies.heterofl``: it
relies on batch norm, which FogNet lacks.
"""

import numpy as np

from fogsim.device.pruning import Kept
from fogsim.strategies.registry import register
from fogsim.strategies.submodel import ReferenceCare


@register("fedrolex")
class FedRolex(ReferenceCare):
    def kept_at(self, fraction: float, server_round: int) -> Kept:
        sizes = self.arch.scaled(fraction).widths
        return [
            np.sort((np.arange(k) + server_round) % w)
            for k, w in zip(sizes, self.widths, strict=True)
        ]
