"""From a scenario's ``[strategy]`` to a strategy object: fogsim's own by name (the
registry), or a Flower strategy class by reference (``fogsim.strategies.flower_plugin``).

Its own module so that the registry, which every strategy module imports, imports none
of them: no import cycle, not even a deferred one.
"""

from __future__ import annotations

import importlib
import os
import sys

from fogsim.device.memory import training_memory
from fogsim.fleet import Fleet
from fogsim.scenario import Scenario
from fogsim.strategies.base import FogStrategy
from fogsim.strategies.flower_plugin import (
    FlowerStrategy,
    build_flower,
    flower_class,
    proximal_bytes,
)
from fogsim.strategies.registry import STRATEGIES, StrategyError


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
        return flower_class(section.flower)
    if section.name not in STRATEGIES:
        raise StrategyError(
            f"strategy.name: {section.name!r} is unknown; allowed: {', '.join(sorted(STRATEGIES))}"
        )
    return STRATEGIES[section.name]


def runs_dynhp(scenario: Scenario) -> bool:
    """Whether the scenario's strategy's clients hold DynHP's arrays beside training
    (``memory.dynhp_bytes``): they run DynHP and it may prune. (mask-union's wider start
    for the capped devices only: those alone hold them, at their smaller start batch.)"""
    cls = strategy_class(scenario)
    if issubclass(cls, FogStrategy):
        return cls.holds_dynhp_arrays(scenario.strategy.params)
    return FlowerStrategy.mode == "dynhp"


def build_strategy(scenario: Scenario, fleet: Fleet) -> FogStrategy:
    """The scenario's strategy over ``fleet``, with ``[strategy] params`` as its
    keyword arguments."""
    cls = strategy_class(scenario)
    params = scenario.strategy.params
    if not issubclass(cls, FogStrategy):  # a Flower strategy: keyword arguments only
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


def dense_notice(sc: Scenario, fleet: Fleet) -> str | None:
    """What a Flower strategy leaves out on ``fleet``: it trains the dense model, so
    (as ``fedavg-feasible``) nodes whose budget cannot hold it sit out; None if the
    scenario's strategy is fogsim's own or every node holds the dense model."""
    cls = strategy_class(sc)
    if issubclass(cls, FogStrategy):
        return None
    inner = build_flower(cls, sc.strategy.params, sc.strategy.label)
    need = training_memory(sc.arch, sc.dynhp.min_batch, sc.train.memory_kind)
    need += proximal_bytes(inner, sc.arch)  # FedProx's copy of the received model
    out = {
        c.name: int((fleet.budgets[fleet.node_class == i] < need).sum())
        for i, c in enumerate(fleet.classes)
    }
    if not any(out.values()):
        return None
    listed = ", ".join(f"{n} of {name!r}" for name, n in out.items() if n)
    return (
        f"note: {sc.strategy.label} is a Flower strategy: it trains the dense model, so "
        f"only nodes whose budget holds it take part, as in fedavg-feasible; "
        f"{sum(out.values())} node(s) sit out ({listed})"
    )
