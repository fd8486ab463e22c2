"""Aggregation strategies, chosen by ``[strategy] name`` in a scenario.

A strategy is a Flower strategy class registered under a name with :func:`register`;
importing this package registers the built-in ones.
"""

from fogsim.strategies import fedavg  # noqa: F401  (registers "fedavg")
from fogsim.strategies.base import STRATEGIES, FogStrategy, register

__all__ = ["STRATEGIES", "FogStrategy", "register"]
