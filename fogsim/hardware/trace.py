"""Availability traces: when each device is on, from a plain CSV file.

``[fleet] trace = "trace.csv"`` with columns ``node`` or ``class`` (one per row: a
node id, as in the fleet file or ``0..nodes-1``, or a device class name), ``start_s``
and ``end_s`` (a window ``[start_s, end_s)`` on the simulated clock: seconds from
midnight of day 1; a run starts at ``[simulation] start_h``) and optionally
``battery`` (its state of charge in that window, 0..1).
A node with rows of its own is on only in those windows; else its class's rows
decide; a node with neither is not limited by the trace. Windows of one node (or one
class) must not overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fogsim.hardware.tables import Table, TableError, cached_by_stat, read_table

COLUMNS = ("node", "class", "start_s", "end_s", "battery")
Key = tuple[str, str]  # ("node", id) or ("class", name)


@dataclass(frozen=True)
class Window:
    """One row of a trace."""

    line: int
    key: Key
    start: float
    end: float
    battery: float | None


@dataclass(frozen=True)
class Trace:
    table: Table
    windows: list[Window]


@dataclass(frozen=True)
class Windows:
    """One node's (or class's) windows, sorted and disjoint."""

    start: np.ndarray
    end: np.ndarray
    battery: np.ndarray  # NaN where the trace gives none

    def at(self, t: float) -> int | None:
        """The window covering time ``t``, if any."""
        i = int(np.searchsorted(self.start, t, side="right")) - 1
        return i if i >= 0 and t < self.end[i] else None


def _window(table: Table, line: int, cells: dict[str, str]) -> Window:
    node, cls = cells.get("node"), cells.get("class")
    if (node is None) == (cls is None):
        got = "both" if node else "neither"
        raise table.error(line, "class" if node else None, f"give node or class ({got} given)")
    start = table.number(line, cells, "start_s", low=0)
    end = table.number(line, cells, "end_s", low=0)
    for name, value in (("start_s", start), ("end_s", end)):
        if value is None:
            raise table.error(line, name, "blank; every window needs start_s and end_s")
    assert start is not None and end is not None
    if end <= start:
        raise table.error(line, "end_s", f"{end:g} is not after start_s {start:g}")
    key: Key = ("node", node) if node is not None else ("class", cls or "")
    battery = table.number(line, cells, "battery", low=0, high=1)
    return Window(line, key, start, end, battery)


@cached_by_stat
def read_trace(path: str) -> Trace:
    """Read a trace and check each row; :class:`TableError` names the line and column."""
    table = read_table(path, COLUMNS, required=("start_s", "end_s"))
    if "node" not in table.columns and "class" not in table.columns:
        raise TableError(f"{path}: no column 'node' or 'class'; each row needs one of them")
    return Trace(table, [_window(table, line, cells) for line, cells in table.rows])


def resolve(trace: Trace, node_ids: list[str], classes: list[str]) -> dict[Key, Windows]:
    """Each node's and class's windows; unknown nodes or classes and overlapping windows
    are :class:`TableError`\\ s naming the line and column."""
    known = {"node": set(node_ids), "class": set(classes)}
    by_key: dict[Key, list[Window]] = {}
    for w in trace.windows:
        kind, name = w.key
        if name not in known[kind]:
            listed = ", ".join(classes) if kind == "class" else _ids(node_ids)
            raise trace.table.error(
                w.line, kind, f"{name!r} is no {kind} of the fleet; allowed: {listed}"
            )
        by_key.setdefault(w.key, []).append(w)
    out = {}
    for key, ws in by_key.items():
        ws.sort(key=lambda w: w.start)
        for before, after in zip(ws, ws[1:], strict=False):
            if after.start < before.end:
                raise trace.table.error(
                    after.line,
                    "start_s",
                    f"window [{after.start:g}, {after.end:g}) of {key[0]} {key[1]!r} overlaps "
                    f"[{before.start:g}, {before.end:g}) on line {before.line}",
                )
        out[key] = Windows(
            np.array([w.start for w in ws]),
            np.array([w.end for w in ws]),
            np.array([np.nan if w.battery is None else w.battery for w in ws]),
        )
    return out


def _ids(node_ids: list[str]) -> str:
    """The fleet's node ids, as an error lists them: ``0..99``, or the first few."""
    if node_ids == [str(i) for i in range(len(node_ids))]:
        return f"0..{len(node_ids) - 1}"
    return ", ".join(node_ids[:3]) + (", ..." if len(node_ids) > 3 else "") + " (fleet.file's ids)"
