"""A training reply's verdict: whether a node's update may be averaged, decided by one
piece of code wherever it is decided.

The server decides every node's status (``fogsim.strategies.intake``); a client that
sums its cohort's good updates (``fogsim.flower.partial``) must pick the very same
nodes, so both call these functions:

- :func:`reply_status`: what the reply itself says: ``ok``, ``dropped`` (the node went
  offline), ``over_budget`` (it refused: its model would not fit) or ``rejected``
  (non-finite or missing weights or metrics: never averaged). A reply whose weights
  were summed on the client says whether they were finite (``finite``);
- :func:`on_the_clock`: then, on the simulated clock, ``departed`` if the node's
  availability window closed before its own finish, a ``straggler`` if it finished
  after the round's deadline. :class:`Window` holds what that needs; the server sends
  it with each node of a message whose updates the client sums.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import RecordDict

from fogsim.clock import cut_short
from fogsim.flower import wire
from fogsim.hardware.energy import Speeds, Timeline, timeline


def reply_status(content: RecordDict) -> str:
    """``ok``, ``dropped``, ``over_budget`` or ``rejected`` (module doc) of the content
    of a (non-error) training reply."""
    metrics = content[wire.METRICS]
    if metrics.get(wire.DROPPED_OUT):
        return "dropped"
    if not all(np.isfinite(float(v)) for v in metrics.values()):
        return "rejected"
    if wire.FINITE in metrics:  # trained; its weights were summed on the client
        return "ok" if metrics[wire.FINITE] else "rejected"
    if metrics.get(wire.OVER_BUDGET) and wire.ARRAYS not in content:
        return "over_budget"
    if wire.ARRAYS not in content or not all(
        np.isfinite(wire.to_numpy(a)).all() for a in content[wire.ARRAYS].values()
    ):
        return "rejected"
    return "ok"


@dataclass(frozen=True)
class Link:
    """A device's speeds, as a message carries them (what :func:`timeline` reads)."""

    flops: float
    up_mbps: float
    down_mbps: float
    latency_ms: float


@dataclass(frozen=True)
class Window:
    """What decides a trained node's fate on the clock: its speeds and download, when
    the round started, when its availability window ends (inf: never) and the round's
    deadline (None: none)."""

    device: Speeds
    bytes_down: int
    start_s: float
    until_s: float
    deadline_s: float | None

    def config(self) -> dict[str, Any]:
        """The node's config keys that carry it (:meth:`of_config` reads them)."""
        d = self.device
        return {
            wire.CLOCK: [d.flops, d.up_mbps, d.down_mbps, d.latency_ms, self.start_s, self.until_s],
            wire.BYTES_DOWN: self.bytes_down,
            **({wire.DEADLINE: self.deadline_s} if self.deadline_s is not None else {}),
        }

    @classmethod
    def of_config(cls, config: Any) -> Window:
        flops, up, down, latency, start, until = (float(v) for v in config[wire.CLOCK])
        deadline = config.get(wire.DEADLINE)
        return cls(
            Link(flops, up, down, latency),
            int(config[wire.BYTES_DOWN]),
            start,
            until,
            None if deadline is None else float(deadline),
        )


def on_the_clock(
    status: str, window: Window, up: int, flops: float
) -> tuple[str, Timeline, float | None]:
    """(status, timeline, seconds into the round it departed at or None) of a node that
    trained, with reply status ``status``, uploads ``up`` bytes and trained ``flops``."""
    tl = timeline(window.device, window.bytes_down, up, flops)
    gone = cut_short(window.start_s, tl.total_s, window.until_s)
    if gone is not None:
        return "departed", tl, gone
    deadline = window.deadline_s
    if status == "ok" and deadline is not None and tl.total_s > deadline:
        return "straggler", tl, None
    return status, tl, None
