"""The fleet: which device class (budget, speed, links, power) each node belongs to,
and when each node is on.

Class sizes come from ``count`` or ``share`` (shares rounded by largest remainder so
counts add up to ``fleet.nodes``); which node gets which class is a seeded shuffle,
and a class with ``memory_max`` draws each node's budget log-uniformly between
``memory`` and ``memory_max`` (whole bytes, within both); a class without it gives
every node exactly ``memory``. A fleet from a file (``[fleet] file``) takes each
node's class and budget from its row instead: node ``k`` is the file's ``k``-th
device. The same scenario and seed always build the same fleet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fogsim.hardware.availability import NodeAvailability, build_availability
from fogsim.scenario import DeviceClass, FleetSection, Scenario
from fogsim.units import format_bytes


@dataclass(frozen=True)
class Fleet:
    classes: list[DeviceClass]
    node_class: np.ndarray  # class index per node
    budgets: np.ndarray  # memory budget in bytes per node
    ids: list[str]  # per node: its fleet file id, or its index
    availability: NodeAvailability  # windows in time (none: always on)
    file_rows: list[dict[str, Any]] | None = None  # per node: its fleet file fog, region, share

    @property
    def num_nodes(self) -> int:
        return len(self.node_class)

    def device(self, node: int) -> DeviceClass:
        return self.classes[int(self.node_class[node])]

    def budget(self, node: int) -> int:
        return int(self.budgets[node])

    def counts(self) -> dict[str, int]:
        tally = np.bincount(self.node_class, minlength=len(self.classes))
        return {c.name: int(n) for c, n in zip(self.classes, tally, strict=True)}

    def available(self, rng: np.random.Generator, t: float = 0.0) -> np.ndarray:
        """Nodes that are up for a round starting at simulated time ``t``: each with its
        class's availability, and only inside its windows in time."""
        p = np.array([c.availability for c in self.classes])[self.node_class]
        drawn = rng.random(self.num_nodes) < p
        if self.availability.limited:
            drawn &= self.availability.up(t)
        return np.flatnonzero(drawn)


def class_counts(section: FleetSection) -> list[int]:
    """Nodes per class: fixed counts first, shares split the rest by largest remainder."""
    fixed = sum(c.count for c in section.classes if c.count is not None)
    rest = section.nodes - fixed
    shares = np.array([c.share or 0.0 for c in section.classes])
    exact = rest * shares / shares.sum() if shares.sum() > 0 else np.zeros_like(shares)
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: rest - counts.sum()]:
        counts[i] += 1
    pairs = zip(section.classes, counts, strict=True)
    return [c.count if c.count is not None else int(n) for c, n in pairs]


def build_fleet(section: FleetSection, seed: int) -> Fleet:
    rng = np.random.default_rng([seed, 0xF1EE7])
    names = [c.name for c in section.classes]
    inv = section.inventory
    if inv is None:
        labels = np.repeat(np.arange(len(section.classes)), class_counts(section))
        rng.shuffle(labels)
    else:
        labels = np.array([names.index(m.class_name) for m in inv.members], dtype=np.int64)
    low = np.array([c.memory for c in section.classes], dtype=np.int64)[labels]
    high = np.array([c.memory_max or c.memory for c in section.classes], dtype=np.int64)[labels]
    drawn = np.floor(np.exp(rng.uniform(np.log(low), np.log(high))))  # float: may round
    budgets = np.where(high > low, np.clip(drawn.astype(np.int64), low, high), low)
    file_rows = None
    if inv is not None:
        own = np.array([m.memory or 0 for m in inv.members], dtype=np.int64)
        budgets = np.where(own > 0, own, budgets)
        file_rows = [
            {"fog": m.fog or "", "region": m.region or "", "data_share": m.data_share or 1.0}
            for m in inv.members
        ]
    ids = section.node_ids
    availability = build_availability(
        ids,
        labels,
        names,
        [c.diurnal.model if c.diurnal else None for c in section.classes],
        section.trace,
        section.min_battery,
        seed,
    )
    return Fleet(list(section.classes), labels, budgets, ids, availability, file_rows)


def check_trainable(scenario: Scenario, fleet: Fleet, dynhp: bool = False) -> None:
    """Refuse a fleet where no node's budget trains even width 1 of every neuron group
    at ``[dynhp] min_batch``, beside DynHP's arrays if ``dynhp`` (the strategy's clients
    hold them: ``strategies.build.runs_dynhp``). A fleet where only some cannot is
    fine: the strategies leave those nodes out. Raises ValueError naming each class's
    largest budget."""
    need = scenario.narrowest_need(dynhp)
    if fleet.budgets.max() >= need:
        return
    budgets = ", ".join(
        f"{c.name!r} {format_bytes(c.memory_max or c.memory)}" for c in scenario.fleet.classes
    )
    raise ValueError(
        "no node can train even the smallest model (one neuron per layer), which needs "
        f"{scenario.narrowest_need_said(dynhp)}; largest budget per class: {budgets}; "
        f"raise fleet.classes.N.memory to at least {format_bytes(need)}"
    )
