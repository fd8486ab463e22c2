"""A user-defined strategy: Federated Dropout (Caldas et al. 2018).

Each round every node trains a *random* subset of neurons, as many as its budget
allows. Use it from a scenario with::

    [strategy]
    name = "random-slices"
    module = "examples.random_slices"   # imported from the current directory

Everything else (sending compact sub-models, masked averaging, accounting, results)
comes from :class:`fogsim.strategies.submodel.SubModelStrategy`.
"""

import numpy as np

from fogsim.device.pruning import Kept
from fogsim.strategies import register
from fogsim.strategies.submodel import SubModelStrategy


@register("random-slices")
class RandomSlices(SubModelStrategy):
    def kept_at(self, fraction: float, server_round: int) -> Kept:
        rng = np.random.default_rng([self.scenario.run.seed, server_round])
        sizes = self.arch.scaled(fraction).widths
        return [
            np.sort(rng.choice(w, size=k, replace=False))
            for k, w in zip(sizes, self.widths, strict=True)
        ]
