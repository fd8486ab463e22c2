"""A fleet from a file: the user's own inventory, one row per device.

``[fleet] file = "fleet.csv"`` with columns ``id`` (required, unique), ``device`` (a
catalogue device) or ``class`` (a ``[[fleet.classes]]`` name), and optionally
``memory`` (this device's budget, e.g. ``2MiB``; blank: its class's), ``fog`` (the id
of the device it reports to: its fog node), ``region`` (a label) and ``data_share``
(its relative share of the training data; blank: 1). Node ``k`` of the run is the
file's ``k``-th row; its ``id`` is kept in the results' ``fleet.csv``.
"""

from __future__ import annotations

from dataclasses import dataclass

from fogsim.hardware.catalogue import catalogue
from fogsim.hardware.tables import Table, TableError, cached_by_stat, read_table
from fogsim.units import parse_bytes

COLUMNS = ("id", "device", "class", "memory", "fog", "region", "data_share")


@dataclass(frozen=True)
class Member:
    """One device of an inventory (one row)."""

    line: int
    id: str
    device: str | None
    cls: str | None
    memory: int | None
    fog: str | None
    region: str | None
    data_share: float | None

    @property
    def class_name(self) -> str:
        """Its device class: the ``class`` named, or the class of its catalogue device."""
        return self.cls or self.device or ""


@dataclass(frozen=True)
class Inventory:
    table: Table
    members: list[Member]

    @property
    def ids(self) -> list[str]:
        return [m.id for m in self.members]

    def where(self, member: Member, column: str | None = None) -> str:
        return self.table.where(member.line, column)


def _member(table: Table, line: int, cells: dict[str, str]) -> Member:
    """One row, checked on its own (ids and fog nodes are checked across rows)."""
    if "id" not in cells:
        raise table.error(line, "id", "blank; every device needs an id")
    device, cls = cells.get("device"), cells.get("class")
    if (device is None) == (cls is None):
        got = "both" if device else "neither"
        raise table.error(line, "class" if device else None, f"give device or class ({got} given)")
    if device is not None and device not in catalogue().devices:
        try:
            catalogue().device(device)
        except ValueError as e:
            raise table.error(line, "device", str(e)) from None
    memory = None
    if (text := cells.get("memory")) is not None:
        try:
            memory = parse_bytes(text)
        except ValueError as e:
            raise table.error(line, "memory", f"{text!r}: {e}") from None
    return Member(
        line=line,
        id=cells["id"],
        device=device,
        cls=cls,
        memory=memory,
        fog=cells.get("fog"),
        region=cells.get("region"),
        data_share=table.number(line, cells, "data_share", low=0, above=True),
    )


@cached_by_stat
def read_inventory(path: str) -> Inventory:
    """Read and check a fleet file; :class:`TableError` names the line and column."""
    table = read_table(path, COLUMNS, required=("id",))
    if "device" not in table.columns and "class" not in table.columns:
        raise TableError(f"{path}: no column 'device' or 'class'; each row needs one of them")
    members, first = [], {}
    for line, cells in table.rows:
        m = _member(table, line, cells)
        if m.id in first:
            raise table.error(
                line, "id", f"{m.id!r} already names the device on line {first[m.id]}"
            )
        first[m.id] = line
        members.append(m)
    for m in members:
        if m.fog is not None and (m.fog not in first or m.fog == m.id):
            why = "is the device itself" if m.fog == m.id else "is no device's id in this file"
            raise table.error(m.line, "fog", f"{m.fog!r} {why}; give the id of its fog node")
    return Inventory(table, members)
