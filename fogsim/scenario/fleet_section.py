"""``[fleet]``: the device classes, and the fleet and availability files.

A device class may name a catalogue ``device`` and ``radio``
(``fogsim.hardware.catalogue``): their figures fill every field the class does not
give, so ``memory``, ``flops``, the link and the power figures are the catalogue's
unless overridden. A fleet may come from a file (``file``: the user's inventory, one
row per device, ``fogsim.hardware.inventory``): it then decides ``nodes`` and each
class's ``count``, and a row naming a catalogue device with no class of its own gets a
class named after the device. ``trace`` limits nodes to windows in time
(``fogsim.hardware.trace``); a class's ``diurnal`` model does so for nodes the trace
does not name. Both files are read (and re-read when they change) where they are
validated, so ``fogsim validate`` refuses a bad row before anything runs.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from pydantic import Field, model_validator

from fogsim.hardware.availability import DiurnalModel
from fogsim.hardware.catalogue import class_figures
from fogsim.hardware.inventory import Inventory, read_inventory
from fogsim.hardware.tables import TableError
from fogsim.hardware.trace import read_trace, resolve
from fogsim.scenario.base import ByteSize, Section
from fogsim.units import format_bytes


class Diurnal(Section):
    """On for ``share`` of each day from hour ``from_h``, shifted per node (seeded)."""

    share: float = Field(gt=0, le=1, description="share of each 24 h the node is on")
    from_h: float = Field(0.0, ge=0, lt=24, description="hour its window opens (t = 0: midnight)")
    jitter_h: float = Field(
        0.0, ge=0, le=12, description="each node's opening shifted by uniform ±jitter_h"
    )

    @property
    def model(self) -> DiurnalModel:
        return DiurnalModel(self.share, self.from_h, self.jitter_h)


class DeviceClass(Section):
    name: str = Field(min_length=1)
    share: float | None = Field(None, gt=0)
    count: int | None = Field(None, ge=0)
    device: str | None = Field(None, description="a catalogue device: its figures by default")
    radio: str | None = Field(None, description="a catalogue radio (default: the device's)")
    memory: ByteSize
    memory_max: ByteSize | None = Field(
        None, description="if set, budgets are drawn log-uniform in [memory, memory_max]"
    )
    flops: float = Field(1e9, gt=0, description="compute speed, FLOP/s")
    up_mbps: float = Field(10.0, gt=0, description="uplink bandwidth, Mbit/s")
    down_mbps: float = Field(50.0, gt=0, description="downlink bandwidth, Mbit/s")
    latency_ms: float = Field(0.0, ge=0, description="fixed time added to each transfer")
    active_w: float | None = Field(None, gt=0, description="power while training, W")
    idle_w: float | None = Field(None, ge=0, description="power while waiting, W")
    tx_j_per_byte: float | None = Field(None, ge=0, description="radio energy per byte sent")
    rx_j_per_byte: float | None = Field(None, ge=0, description="radio energy per byte received")
    connect_j: float | None = Field(None, ge=0, description="radio energy per transfer set up")
    availability: float = Field(1.0, gt=0, le=1)
    diurnal: Diurnal | None = None

    @model_validator(mode="before")
    @classmethod
    def _catalogue(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        # "none" unsets device or radio (as any field that may be unset) before the
        # catalogue is asked for a device or radio of that name
        unset = {
            k: None
            for k in ("device", "radio")
            if isinstance(data.get(k), str) and data[k].lower() == "none"
        }
        return class_figures({**data, **unset})

    @model_validator(mode="after")
    def _share_or_count(self) -> DeviceClass:
        if (self.share is None) == (self.count is None):
            raise ValueError("give exactly one of share or count")
        if self.memory_max is not None and self.memory_max < self.memory:
            raise ValueError(
                f"memory_max: {format_bytes(self.memory_max)} is below memory "
                f"{format_bytes(self.memory)}"
            )
        return self


class FleetSection(Section):
    nodes: int = Field(10, ge=1, le=1_000_000)
    classes: list[DeviceClass] = Field(min_length=1)
    file: str | None = Field(None, description="a CSV inventory, one row per device")
    trace: str | None = Field(None, description="a CSV availability trace")
    min_battery: float = Field(
        0.0, ge=0, le=1, description="a trace window with less battery than this is off"
    )

    @model_validator(mode="before")
    @classmethod
    def _inventory(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("file"), str):
            return expand_inventory(data)
        return data

    @model_validator(mode="after")
    def _counts_fit(self) -> FleetSection:
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"device class names must be unique, got {names}")
        if not math.isfinite(self.nodes * sum(c.share or 0.0 for c in self.classes)):
            raise ValueError("class shares are too large; give relative shares such as 0.25")
        counts = [c.count for c in self.classes]
        if all(c is not None for c in counts) and sum(counts) != self.nodes:
            raise ValueError(f"class counts sum to {sum(counts)} but nodes = {self.nodes}")
        if any(c is not None for c in counts) and any(c is None for c in counts):
            fixed = sum(c for c in counts if c is not None)
            if fixed > self.nodes:
                raise ValueError(f"class counts sum to {fixed} > nodes = {self.nodes}")
        if self.trace is not None:
            try:
                resolve(read_trace(self.trace), self.node_ids, names)
            except TableError as e:
                raise ValueError(f"trace: {e}") from None
        return self

    @property
    def inventory(self) -> Inventory | None:
        """The fleet file's devices (read once per file version), if there is a file."""
        return read_inventory(self.file) if self.file is not None else None

    @property
    def node_ids(self) -> list[str]:
        """Each node's id: its fleet file id, or its index."""
        inv = self.inventory
        return inv.ids if inv is not None else [str(i) for i in range(self.nodes)]

    @property
    def data_shares(self) -> list[float] | None:
        """Each node's relative share of the training data (fleet file ``data_share``,
        blank = 1); None when no row gives one (the data are split evenly)."""
        inv = self.inventory
        if inv is None or all(m.data_share is None for m in inv.members):
            return None
        return [m.data_share or 1.0 for m in inv.members]


def expand_inventory(data: dict[str, Any]) -> dict[str, Any]:
    """``[fleet]`` as written, with what its file says: ``nodes``, each class's
    ``count``, and a class per catalogue device named by rows without a class. Raises
    ValueError ``"<field>: ..."`` naming the file's line and column where it can."""
    try:
        inv = read_inventory(data["file"])
    except TableError as e:
        raise ValueError(f"file: {e}") from None
    classes = data.get("classes", [])
    if not isinstance(classes, list):
        return data  # the schema says what is wrong with it
    named = [c for c in classes if isinstance(c, dict) and isinstance(c.get("name"), str)]
    declared = {c["name"]: c for c in named}
    counts = Counter(m.class_name for m in inv.members)
    implicit = []
    for m in inv.members:
        if m.cls is not None and m.cls not in declared:
            allowed = ", ".join(map(str, declared)) or "none declared"
            raise ValueError(
                f"file: {inv.where(m, 'class')}: {m.cls!r} is not in fleet.classes; "
                f"allowed: {allowed} (or give a catalogue device in the device column)"
            )
        if m.device is not None and m.device in declared:
            if declared[m.device].get("device") != m.device:
                raise ValueError(
                    f"file: {inv.where(m, 'device')}: fleet.classes has a class named "
                    f"{m.device!r} of another device; rename that class"
                )
        elif m.device is not None and m.device not in implicit:
            implicit.append(m.device)
    expanded = []
    for i, c in enumerate(classes):
        if isinstance(c, dict) and isinstance(c.get("name"), str):
            c = {**c, "count": _file_count(i, c, counts[c["name"]])}
        expanded.append(c)
    expanded += [{"name": d, "device": d, "count": counts[d]} for d in implicit]
    n = len(inv.members)
    if data.get("nodes") is not None and data["nodes"] != n:
        raise ValueError(f"nodes: {data['nodes']!r}, but fleet.file lists {n}; leave nodes out")
    return {**data, "classes": expanded, "nodes": n}


def _file_count(i: int, cls: dict[str, Any], rows: int) -> int:
    """A declared class's count in a fleet from a file: the rows naming it."""
    if cls.get("share") is not None:
        raise ValueError(
            f"classes.{i}.share: with fleet.file, the file says how many devices each "
            "class has; leave out share and count"
        )
    if cls.get("count") is not None and cls["count"] != rows:
        raise ValueError(
            f"classes.{i}.count: {cls['count']!r}, but fleet.file names the class on "
            f"{rows} rows; leave count out"
        )
    return rows
