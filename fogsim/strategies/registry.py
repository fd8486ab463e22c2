"""Strategy names: ``[strategy] name`` in a scenario picks a class registered here.

Built-in strategies register when the ``fogsim.strategies`` package is imported (as
it is before this module); a user's own register when ``[strategy] module`` is
imported (``fogsim.strategies.build.strategy_class`` does that).

A Flower strategy (``[strategy] flower = "module:Class"``, or a subclass of
``flwr.serverapp.strategy.Strategy`` registered under a name) is built with keyword
arguments only and run by ``fogsim.strategies.flower_plugin.FlowerStrategy``.
"""

from __future__ import annotations

from collections.abc import Callable

STRATEGIES: dict[str, type] = {}  # FogStrategy subclasses, or Flower strategies


class StrategyError(ValueError):
    """``[strategy]`` names no usable strategy; the message names the field."""


def register(*names: str) -> Callable[[type], type]:
    """Class decorator: make a strategy (a :class:`FogStrategy` or a Flower strategy)
    selectable as ``[strategy] name = "<name>"`` under each of ``names`` (the first is
    its own name, the rest are aliases)."""

    def deco(cls: type) -> type:
        cls.name = names[0]
        for name in names:
            STRATEGIES[name] = cls
        return cls

    return deco
