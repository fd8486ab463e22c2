"""Who aggregates whose updates, and when: ``[topology]``.

:func:`round_driver` gives the round loop what trains each round: the scenario's
strategy itself (flat, lock-step: fogsim as it always was), a fog tier
(:mod:`~fogsim.topology.hierarchy`) or buffered asynchronous rounds
(:mod:`~fogsim.topology.buffered`). The last two run their own Flower exchanges
(``train_round``); all of them keep the strategy's accounting.
"""

from __future__ import annotations

from typing import Any

from fogsim.fleet import Fleet
from fogsim.scenario import Scenario
from fogsim.strategies import FogStrategy, build_strategy
from fogsim.topology.assign import TopologyError, fog_of
from fogsim.topology.hierarchy import Hierarchy

__all__ = ["Hierarchy", "TopologyError", "fog_of", "round_driver", "tier_columns"]


def round_driver(scenario: Scenario, fleet: Fleet) -> Any:
    """The scenario's strategy (flat), or the driver of its fog tier."""
    topo = scenario.topology
    if topo.kind == "hierarchical":
        return Hierarchy(scenario, fleet, fog_of(scenario, fleet))
    if topo.aggregation == "buffered":
        from fogsim.topology.buffered import Buffered

        return Buffered(scenario, fleet)
    strategy: FogStrategy = build_strategy(scenario, fleet)
    return strategy


def tier_columns(stats: dict[str, Any]) -> dict[str, Any]:
    """rounds.csv bytes per tier's links and stragglers per tier. Flat: every device
    talks to the cloud, so its bytes are the cloud link's; there is no fog tier."""
    if "tiers" in stats:
        return stats["tiers"]
    device = stats["bytes_up"] + stats.get("bytes_down_train", 0)
    return {
        "device_bytes": device,
        "cloud_bytes_up": stats["bytes_up"],
        "cloud_bytes_down": stats.get("bytes_down_train", 0),
        "cloud_bytes": device,
        "stragglers_device": stats.get("straggler", 0),
        "stragglers_fog": "",
    }
