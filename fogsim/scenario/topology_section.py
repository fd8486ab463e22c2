"""``[topology]``: who aggregates whose updates, over which links, and when.

``kind = "flat"`` (the default) is fogsim as it always was: every sampled device talks
to the one server over its own class's link, in lock-step rounds. ``"hierarchical"``
puts a tier of fog aggregators between the devices and the cloud (HierFAVG: Liu et
al., ICC 2020): each fog runs ``fog_rounds`` rounds with its own devices, over the
device→fog link, before the cloud merges the fog models, over the fog→cloud link.

``aggregation = "buffered"`` replaces lock-step rounds by FedBuff's (Nguyen et al.,
AISTATS 2022): ``concurrency`` devices are always busy and the server merges every
``buffer_size`` updates in the order they arrive on the simulated clock; with
``kind = "hierarchical"`` every fog does so over its own devices (its share of both,
by its size) and the cloud merges the fog models once per cloud round.

Assignment of devices to fogs (``assign``): ``"seeded"`` (a seeded shuffle, fog sizes
differing by at most one), ``"class"`` (one fog per device class), ``"file"`` (the
fleet file's ``fog`` column: one fog per fog id named there) or ``"lists"`` (``lists``:
per fog, the fleet node indices it serves; every node exactly once).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fogsim.scenario.base import Section
from fogsim.scenario.fleet_section import FleetSection

ASSIGNMENTS = ("seeded", "class", "file", "lists")


class Link(Section):
    """A network link: application throughput each way and a latency per transfer."""

    up_mbps: float = Field(100.0, gt=0, description="towards the cloud, Mbit/s")
    down_mbps: float = Field(100.0, gt=0, description="from the cloud, Mbit/s")
    latency_ms: float = Field(0.0, ge=0, description="added to every transfer")

    def seconds(self, nbytes: int, up: bool) -> float:
        """Time to move ``nbytes`` one way (latency included; nothing to move: 0)."""
        if nbytes <= 0:
            return 0.0
        rate = self.up_mbps if up else self.down_mbps
        return self.latency_ms / 1000.0 + nbytes * 8 / (rate * 1e6)


class DeviceLink(Section):
    """A device's hop to its fog: each field left out stays its class's own."""

    up_mbps: float | None = Field(None, gt=0)
    down_mbps: float | None = Field(None, gt=0)
    latency_ms: float | None = Field(None, ge=0)


class TopologySection(Section):
    kind: Literal["flat", "hierarchical"] = "flat"
    fogs: int | None = Field(
        None, ge=1, description="fog aggregators (hierarchical; 'class', 'file', 'lists' imply it)"
    )
    assign: Literal["seeded", "class", "file", "lists"] = "seeded"
    lists: list[list[int]] | None = Field(
        None, description="assign = 'lists': per fog, the fleet node indices it serves"
    )
    fog_rounds: int = Field(1, ge=1, le=1000, description="fog rounds per cloud round")
    device_link: DeviceLink = Field(
        DeviceLink(), description="device ↔ fog (hierarchical); a field left out: the class's"
    )
    cloud_link: Link | None = Field(
        None,
        description="fog ↔ cloud (hierarchical; none: 100 Mbit/s each way, no latency); "
        "given on a flat topology, every device transfer crosses it too (its latency "
        "added, throughput at most its)",
    )

    @property
    def wan(self) -> Link:
        """The fog ↔ cloud link (its defaults when none is given)."""
        return self.cloud_link or Link()

    cloud_deadline_s: float | None = Field(
        None, gt=0, description="simulated s; a fog model arriving later is a fog straggler"
    )
    aggregation: Literal["sync", "buffered"] = "sync"
    buffer_size: int = Field(10, ge=1, description="buffered: updates merged per aggregation")
    concurrency: int = Field(100, ge=1, description="buffered: devices training at once")
    server_lr: float | None = Field(
        None,
        gt=0,
        le=10,
        description="buffered: the server's step on each merged update (FedBuff's eta_g); none = 1",
    )

    @model_validator(mode="after")
    def _consistent(self) -> TopologySection:
        """Fields that only make sense together, named with what is allowed."""
        hier = self.kind == "hierarchical"
        problems = []
        if hier and self.assign == "seeded" and self.fogs is None:
            problems.append("topology.fogs: required with kind = 'hierarchical', assign = 'seeded'")
        if self.assign == "lists" and self.lists is None:
            problems.append("topology.lists: required with assign = 'lists'")
        if self.lists is not None and self.assign != "lists":
            problems.append(
                f"topology.lists: given with assign = {self.assign!r}; allowed only "
                "with assign = 'lists'"
            )
        if self.lists is not None and self.fogs is not None and self.fogs != len(self.lists):
            problems.append(
                f"topology.fogs: {self.fogs} disagrees with the {len(self.lists)} "
                "lists given; leave it out"
            )
        problems += self._ignored()
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _ignored(self) -> list[str]:
        """Fields set away from their defaults that this kind or aggregation never
        reads (a flat run once took ``cloud_deadline_s = 1`` and ran on, exit 0)."""
        unread = []
        if self.kind == "flat":
            names = ("fogs", "assign", "fog_rounds", "device_link", "cloud_deadline_s")
            unread += [(name, "kind = 'hierarchical'") for name in names]
        if self.aggregation == "sync":
            names = ("buffer_size", "concurrency", "server_lr")
            unread += [(name, "aggregation = 'buffered'") for name in names]

        def shown(value: object) -> object:  # a link as the fields set, not its repr
            return value.model_dump(exclude_none=True) if isinstance(value, Section) else value

        return [
            f"topology.{name}: {shown(getattr(self, name))!r}, but this topology never reads it; "
            f"allowed only with {needs}"
            for name, needs in unread
            if getattr(self, name) != type(self).model_fields[name].default
        ]


def topology_problems(topology: TopologySection, fleet: FleetSection) -> list[str]:
    """What ``[topology]`` asks that the fleet cannot give, one ``field: reason`` each."""
    nodes, problems = fleet.nodes, []
    if topology.fogs is not None and topology.fogs > nodes:
        problems.append(f"topology.fogs: {topology.fogs} exceeds fleet.nodes = {nodes}")
    if topology.assign == "class" and topology.fogs not in (None, len(fleet.classes)):
        problems.append(
            f"topology.fogs: {topology.fogs}, but assign = 'class' makes one fog "
            f"per class ({len(fleet.classes)}); leave it out"
        )
    if topology.assign == "file" and fleet.file is None:
        problems.append(
            "topology.assign: 'file' needs a fleet file ([fleet] file) with a "
            "'fog' column; allowed without one: 'seeded', 'class', 'lists'"
        )
    if topology.lists is not None:
        listed = sorted(n for group in topology.lists for n in group)
        if listed != list(range(nodes)) or any(not group for group in topology.lists):
            problems.append(
                f"topology.lists: must name every node 0..{nodes - 1} exactly once, "
                "each list non-empty"
            )
    if topology.aggregation == "buffered":
        if topology.concurrency > nodes:
            problems.append(
                f"topology.concurrency: {topology.concurrency} exceeds fleet.nodes = {nodes}"
            )
        if topology.buffer_size > topology.concurrency:
            problems.append(
                f"topology.buffer_size: {topology.buffer_size} exceeds "
                f"topology.concurrency = {topology.concurrency}"
            )
    return problems
