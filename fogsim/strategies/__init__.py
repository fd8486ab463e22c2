"""Aggregation strategies, chosen by ``[strategy] name`` in a scenario.

A strategy is a Flower strategy class registered under a name with :func:`register`;
importing this package registers the built-in ones.
"""

from fogsim.strategies import fedavg, fedrolex, heterofl, mask_union  # noqa: F401  (register)
from fogsim.strategies.base import FogStrategy
from fogsim.strategies.build import build_strategy, strategy_class
from fogsim.strategies.registry import STRATEGIES, register
from fogsim.strategies.submodel import SubModelStrategy

__all__ = [
    "STRATEGIES",
    "FogStrategy",
    "SubModelStrategy",
    "build_strategy",
    "register",
    "strategy_class",
]
