"""The simulated clock of synchronous rounds."""

import math

from fogsim.clock import RoundClock, cut_short


def test_rounds_follow_each_other_or_the_schedule() -> None:
    clock = RoundClock(now_s=100.0)
    clock.advance(30.0)
    assert clock.now_s == 130.0  # back to back
    scheduled = RoundClock(interval_s=60.0)
    scheduled.advance(30.0)
    assert scheduled.now_s == 60.0  # waits for the next slot
    scheduled.advance(90.0)
    assert scheduled.now_s == 150.0  # a long round pushes the next one
    scheduled.wait_until(400.0)
    assert scheduled.now_s == 400.0
    scheduled.wait_until(10.0)
    assert scheduled.now_s == 400.0  # the clock never runs back


def test_a_window_closing_before_the_node_finishes_cuts_it_short() -> None:
    assert cut_short(1000.0, 50.0, 1030.0) == 30.0  # 30 s into its round
    assert cut_short(1000.0, 50.0, 1050.0) is None  # finishes as it closes
    assert cut_short(1000.0, 50.0, math.inf) is None
    assert cut_short(1000.0, 50.0, 900.0) == 0.0
