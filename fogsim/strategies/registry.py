"""Strategy names: ``[strategy] name`` in a scenario picks a class registered here.

Built-in strategies register when the ``fogsim.strategies`` package is imported (as
it is before this module); a user's own register when ``[strategy] module`` is
imported (:func:`strategy_class` does that).

A Flower strategy (``[strategy] flower = "module:Class"``, or a subclass of
``flwr.serverapp.strategy.Strategy`` registered under a name) is built with keyword
arguments only and run by ``fogsim.strategies.flower_plugin.FlowerStrategy``.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fogsim.fleet import Fleet
    from fogsim.scenario import Scenario
    from fogsim.strategies.base import FogStrategy

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


def strategy_class(scenario: Scenario) -> type:
    """The class ``[strategy]`` names (``name`` or ``flower``), after importing
    ``[strategy] module`` (from the current directory too, as a user's plug-in lives
    beside their scenario)."""
    section = scenario.strategy
    if section.module:
        if os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())
        try:
            importlib.import_module(section.module)
        except ImportError as e:
            raise StrategyError(f"strategy.module: {section.module!r}: {e}") from None
    if section.flower:
        from fogsim.strategies.flower_plugin import flower_class

        return flower_class(section.flower)
    if section.name not in STRATEGIES:
        raise StrategyError(
            f"strategy.name: {section.name!r} is unknown; allowed: {', '.join(sorted(STRATEGIES))}"
        )
    return STRATEGIES[section.name]


def build_strategy(scenario: Scenario, fleet: Fleet) -> FogStrategy:
    """The scenario's strategy over ``fleet``, with ``[strategy] params`` as its
    keyword arguments."""
    from fogsim.strategies.base import FogStrategy as Fog  # not at import: it imports this

    cls = strategy_class(scenario)
    params = scenario.strategy.params
    if not issubclass(cls, Fog):  # a Flower strategy: keyword arguments only
        from fogsim.strategies.flower_plugin import FlowerStrategy, build_flower

        label = scenario.strategy.label
        inner = build_flower(cls, params, label)
        try:
            return FlowerStrategy(scenario, fleet, inner, label)
        except StrategyError:
            raise
        except ValueError as e:  # e.g. no node's budget holds the dense model
            raise StrategyError(f"strategy: {label}: {e}") from None
    try:
        return cls(scenario, fleet, **params)
    except (TypeError, ValueError) as e:
        raise StrategyError(
            f"strategy.params: strategy {scenario.strategy.name!r} with params {params}: {e}"
        ) from None
