"""Aggregation strategies, chosen by ``[strategy] name`` in a scenario.

A strategy is a Flower strategy class registered under a name with :func:`register`;
importing this package registers the built-in ones.
"""

from fogsim.strategies import fedavg, fedrolex, heterofl, mask_union  # noqa: F401  (register)
from fogsim.strategies.base import STRATEGIES, FogStrategy, register

__all__ = ["STRATEGIES", "FogStrategy", "register"]
