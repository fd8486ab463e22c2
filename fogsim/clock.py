"""The simulated clock of synchronous rounds: when a round starts, and whether a node's
window lets it finish.

Every sampled node starts its round when the round starts (the server's message goes
out at once) and runs its own timeline (``fogsim.hardware.energy.Timeline``); the
round ends when the slowest node has finished (or at the deadline). The next round
starts then, or ``interval_s`` after this one started if that is later (rounds
scheduled, say, every 30 minutes), or, when no node is on then, when the first one's
window opens. A node is available for a round if its window
covers the round's start, and drops out mid-round if its window ends before its own
finish.

Kept in one small place so that other round disciplines (a fog tier, asynchronous
rounds) can reuse it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class RoundClock:
    """Simulated seconds (t = 0: midnight of day 1; a run starts at ``[simulation]
    start_h``); ``now_s`` is the current round's start."""

    interval_s: float | None = None
    now_s: float = 0.0

    def advance(self, round_s: float) -> None:
        """The round that started at :attr:`now_s` took ``round_s``: start the next."""
        self.now_s += max(round_s, self.interval_s or 0.0)

    def wait_until(self, t: float) -> None:
        """No node is on yet: the round starts when one is (at ``t``)."""
        self.now_s = max(self.now_s, t)


def cut_short(round_start_s: float, own_s: float, window_end_s: float) -> float | None:
    """Seconds into its round at which a node's window closes, if that comes before its
    own finish (``own_s`` after the round's start); None if it finishes in time."""
    if math.isinf(window_end_s) or window_end_s >= round_start_s + own_s:
        return None
    return max(0.0, window_end_s - round_start_s)
