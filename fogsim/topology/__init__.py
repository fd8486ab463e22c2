"""Who aggregates whose updates, and when: ``[topology]``.

:func:`round_driver` gives the round loop what trains each round: the scenario's
strategy itself (flat, lock-step: fogsim as it always was), a fog tier
(:mod:`~fogsim.topology.hierarchy`), buffered asynchronous rounds
(:mod:`~fogsim.topology.buffered`) or both, FedBuff at every fog
(:mod:`~fogsim.topology.fog_buffered`). The last three run their own Flower exchanges
(``train_round``); all of them keep the strategy's accounting.
"""

from __future__ import annotations

import dataclasses
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
    if topo.kind == "hierarchical" and topo.aggregation == "buffered":
        from fogsim.topology.fog_buffered import BufferedHierarchy

        return BufferedHierarchy(scenario, fleet, fog_of(scenario, fleet))
    if topo.kind == "hierarchical":
        return Hierarchy(scenario, fleet, fog_of(scenario, fleet))
    fleet = through_cloud_link(scenario, fleet)
    if topo.aggregation == "buffered":
        from fogsim.topology.buffered import Buffered

        return Buffered(scenario, fleet)
    strategy: FogStrategy = build_strategy(scenario, fleet)
    return strategy


def through_cloud_link(scenario: Scenario, fleet: Fleet) -> Fleet:
    """A flat fleet whose devices reach the cloud across ``[topology] cloud_link`` when
    the scenario gives one (the same wide-area link a fog tier would use): its latency
    added to every transfer, throughput at most the link's. Not given: unchanged."""
    link = scenario.topology.cloud_link
    if link is None:
        return fleet
    classes = [
        c.model_copy(
            update={
                "latency_ms": c.latency_ms + link.latency_ms,
                "up_mbps": min(c.up_mbps, link.up_mbps),
                "down_mbps": min(c.down_mbps, link.down_mbps),
            }
        )
        for c in fleet.classes
    ]
    return dataclasses.replace(fleet, classes=classes)


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
