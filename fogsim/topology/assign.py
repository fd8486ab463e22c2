"""Which fog aggregator serves each device (``[topology] assign``).

Kept apart from the round logic: an assignment is plain data (a fog index per fleet
node), fixed for the run, and ``fleet.csv`` can show it.
"""

from __future__ import annotations

import math

import numpy as np

from fogsim.fleet import Fleet
from fogsim.scenario import Scenario


class TopologyError(ValueError):
    """The assignment asked for cannot be made on this fleet; names the field."""


def fog_of(scenario: Scenario, fleet: Fleet) -> np.ndarray:
    """Per fleet node, the index of its fog (0..fogs-1); all zero on a flat topology
    (the cloud is then its only aggregator)."""
    topo = scenario.topology
    n = fleet.num_nodes
    if topo.kind == "flat":
        return np.zeros(n, dtype=np.int64)
    if topo.assign == "seeded":
        rng = np.random.default_rng([scenario.run.seed, 0xF06])
        fogs = int(topo.fogs or 1)
        out = np.arange(n) % fogs  # sizes differ by at most one
        rng.shuffle(out)
        return out.astype(np.int64)
    if topo.assign == "class":
        return fleet.node_class.astype(np.int64).copy()
    if topo.assign == "lists":
        out = np.empty(n, dtype=np.int64)
        for f, group in enumerate(topo.lists or []):
            out[np.asarray(group, dtype=np.int64)] = f
        return out
    return _from_file(fleet)


def _from_file(fleet: Fleet) -> np.ndarray:
    """One fog per fog id in the fleet file's ``fog`` column (in order of first
    appearance); a fog node itself, with a blank ``fog``, is served by its own fog."""
    rows = fleet.file_rows or []
    named = [r["fog"] for r in rows]
    fogs = list(dict.fromkeys(f for f in named if f))
    if not fogs:
        raise TopologyError("topology.assign: 'file', but the fleet file's 'fog' column is empty")
    out = np.empty(fleet.num_nodes, dtype=np.int64)
    for node, (fog, own_id) in enumerate(zip(named, fleet.ids, strict=True)):
        key = fog or own_id
        if key not in fogs:
            raise TopologyError(
                f"topology.assign: 'file': fleet file row {own_id!r} has no fog and is "
                "no device's fog; give it one in the 'fog' column"
            )
        out[node] = fogs.index(key)
    return out


def num_fogs(assignment: np.ndarray) -> int:
    return int(assignment.max()) + 1 if len(assignment) else 0


def split(total: int, sizes: np.ndarray) -> np.ndarray:
    """``total`` split in proportion to ``sizes`` by largest remainder (sums to it)."""
    exact = total * sizes / max(1, sizes.sum())
    out = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - out), kind="stable")[: total - out.sum()]:
        out[i] += 1
    return out


def fog_shares(total: int, sizes: np.ndarray, field: str) -> np.ndarray:
    """``total`` (the scenario's ``field``, a per-round figure of the whole fleet) split
    over the fogs by :func:`split`; an error naming the field if a fog would get none:
    its devices would never train (no silent rounding up)."""
    got = split(total, sizes)
    if (got < 1).any():
        f = int(np.argmin(got))
        raise TopologyError(
            f"{field}: {total} split over {len(sizes)} fogs by size gives fog {f} "
            f"({sizes[f]} devices) none; allowed: at least one per fog (about "
            f"{math.ceil(sizes.sum() / sizes.min())} here)"
        )
    return got
