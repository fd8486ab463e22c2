"""When each node is on, on the simulated clock.

Besides a class's per-round ``availability`` probability, a node can be limited to
windows in time: the windows of an availability trace (``fogsim.hardware.trace``), or
else its class's built-in diurnal model, or else none (always on). A window whose
battery level is below ``[fleet] min_battery`` counts as off.

The diurnal model: each node is on for ``share`` of every 24 h, from hour ``from_h``
(t = 0 is midnight of day 1 on the simulated clock) shifted by a per-node offset drawn
uniformly in ``[-jitter_h, +jitter_h]``, seeded by the scenario's seed: the same
seed, the same schedule.

The round loop asks two things (``fogsim.clock`` says when): which nodes are up when
a round starts (:meth:`NodeAvailability.up`), and when a node's window ends
(:meth:`NodeAvailability.until`): a node whose window ends before its own finish
drops out mid-round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fogsim.hardware.trace import Key, Windows, read_trace, resolve

DAY_S = 86_400.0


@dataclass(frozen=True)
class DiurnalModel:
    """On for ``share`` of each day from hour ``from_h``, per-node offset ±``jitter_h``."""

    share: float
    from_h: float
    jitter_h: float


class NodeAvailability:
    """Each node's windows in time: its trace windows, else its diurnal schedule, else
    none (up whenever its per-round probability says so)."""

    def __init__(
        self,
        windows: list[Windows | None],
        opens_s: np.ndarray,
        on_s: np.ndarray,
        min_battery: float = 0.0,
    ) -> None:
        self.windows = windows  # per node: trace windows (shared by a class's nodes)
        self.opens_s = opens_s  # per node: when its daily window opens (NaN: no model)
        self.on_s = on_s  # per node: how long it stays on each day
        self.min_battery = min_battery
        groups: dict[int, list[int]] = {}
        for node, w in enumerate(windows):
            if w is not None:
                groups.setdefault(id(w), []).append(node)
        self._groups = [(windows[nodes[0]], np.array(nodes)) for nodes in groups.values()]
        self._diurnal = np.flatnonzero(~np.isnan(opens_s))

    @property
    def limited(self) -> bool:
        """Whether any node is limited in time at all."""
        return bool(self._groups) or len(self._diurnal) > 0

    def on_window(self, w: Windows, t: float) -> int | None:
        """The window of ``w`` covering ``t`` if a node with these windows is on then
        (battery not below ``min_battery``; a window giving no level counts as on)."""
        i = w.at(t)
        return i if i is not None and not (w.battery[i] < self.min_battery) else None

    def up(self, t: float) -> np.ndarray:
        """Per node: inside a window at time ``t`` (with enough battery)."""
        up = np.ones(len(self.windows), dtype=bool)
        for w, nodes in self._groups:
            assert w is not None
            up[nodes] = self.on_window(w, t) is not None
        d = self._diurnal
        up[d] = np.mod(t - self.opens_s[d], DAY_S) < self.on_s[d]
        return up

    def until(self, node: int, t: float) -> float:
        """When the window covering ``t`` ends for ``node`` (inf: not limited; ``t``
        itself: off at ``t``, as :meth:`up` says, a window below ``min_battery``
        included, so that a caller asking "is it still on?" gets the same answer)."""
        w = self.windows[node]
        if w is not None:
            i = self.on_window(w, t)
            if i is None:
                return t
            end = float(w.end[i])  # a window that starts as this one ends, on, goes on
            while (j := self.on_window(w, end)) is not None:
                end = float(w.end[j])
            return end
        opens = self.opens_s[node]
        if math.isnan(opens) or self.on_s[node] >= DAY_S:
            return math.inf
        start = opens + math.floor((t - opens) / DAY_S) * DAY_S
        return start + float(self.on_s[node]) if t < start + self.on_s[node] else t

    def next_open(self, t: float, nodes: np.ndarray) -> float:
        """The first time after ``t`` that a window of one of ``nodes`` opens (inf: none
        will; a node not limited in time is on already)."""
        mine = np.zeros(len(self.windows), dtype=bool)
        mine[nodes] = True
        best = math.inf
        for w, members in self._groups:
            assert w is not None
            i = int(np.searchsorted(w.start, t, side="right"))
            if mine[members].any() and i < len(w.start):
                best = min(best, float(w.start[i]))
        d = self._diurnal[mine[self._diurnal]]
        if len(d):
            days = np.floor((t - self.opens_s[d]) / DAY_S) + 1
            best = min(best, float((self.opens_s[d] + days * DAY_S).min()))
        return best

    def battery(self, node: int, t: float) -> float | None:
        """The trace's battery level of ``node`` at ``t``, if it gives one."""
        w = self.windows[node]
        i = w.at(t) if w is not None else None
        if w is None or i is None or math.isnan(w.battery[i]):
            return None
        return float(w.battery[i])


def build_availability(
    node_ids: list[str],
    node_class: np.ndarray,
    class_names: list[str],
    diurnal: list[DiurnalModel | None],
    trace: str | None,
    min_battery: float,
    seed: int,
) -> NodeAvailability:
    """Each node's windows from the trace file (if any) and its class's diurnal model."""
    n = len(node_ids)
    by_key: dict[Key, Windows] = {}
    if trace is not None:
        by_key = resolve(read_trace(trace), node_ids, class_names)
    windows = [
        by_key.get(("node", node_ids[i]), by_key.get(("class", class_names[node_class[i]])))
        for i in range(n)
    ]
    jitter = np.random.default_rng([seed, 0xD1A1]).uniform(-1.0, 1.0, size=n)
    opens, on = np.full(n, np.nan), np.zeros(n)
    for k, model in enumerate(diurnal):
        mine = np.flatnonzero((node_class == k) & np.array([w is None for w in windows]))
        if model is not None and len(mine):
            opens[mine] = (model.from_h + model.jitter_h * jitter[mine]) * 3600.0
            on[mine] = model.share * DAY_S
    return NodeAvailability(windows, opens, on, min_battery)
