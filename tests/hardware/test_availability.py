"""Windows in time: trace windows per node or class, the diurnal model, batteries."""

import math
from pathlib import Path

import numpy as np
import pytest

from fogsim.hardware.availability import DAY_S, DiurnalModel, build_availability

H = 3600.0


def make(tmp_path: Path, trace: str | None, diurnal=None, min_battery=0.0, seed=0):
    """Six nodes: 0-2 of class "a", 3-5 of class "b"."""
    path = None
    if trace is not None:
        (tmp_path / "t.csv").write_text("node,class,start_s,end_s,battery\n" + trace)
        path = str(tmp_path / "t.csv")
    ids = [str(i) for i in range(6)]
    classes = np.array([0, 0, 0, 1, 1, 1])
    return build_availability(
        ids, classes, ["a", "b"], diurnal or [None, None], path, min_battery, seed
    )


def test_node_rows_override_class_rows_and_others_are_unlimited(tmp_path) -> None:
    av = make(tmp_path, "0,,100,200,\n,a,0,50,\n")
    assert av.up(150).tolist() == [True, False, False, True, True, True]
    assert av.up(10).tolist() == [False, True, True, True, True, True]
    assert av.until(0, 150) == 200 and av.until(1, 10) == 50 and math.isinf(av.until(3, 10))
    assert av.next_open(150, np.array([1, 2])) == math.inf  # class a has no later window
    assert av.next_open(10, np.array([0])) == 100


def test_a_window_below_min_battery_is_off(tmp_path) -> None:
    av = make(tmp_path, "0,,0,100,0.1\n1,,0,100,0.5\n2,,0,100,\n", min_battery=0.25)
    assert av.up(50).tolist()[:3] == [False, True, True]  # no level given: not limited
    # off by its battery is off for "how long is it still on?" too (a buffered round
    # once started a waiting device in such a window)
    assert av.until(0, 50) == 50 and av.until(1, 50) == 100 and av.until(2, 50) == 100
    assert av.battery(1, 50) == 0.5 and av.battery(2, 50) is None and av.battery(3, 50) is None


def test_touching_windows_that_are_on_are_one_stay(tmp_path) -> None:
    """A trace logging the battery in steps (windows that touch) keeps a node on across
    them: it leaves at the first end not followed at once by a window it is on in (a node
    once departed at every step); a touching window below min_battery ends the stay."""
    steps = "0,,0,10,0.9\n0,,10,20,0.8\n0,,20,30,0.7\n1,,0,10,0.9\n1,,10,20,0.1\n"
    av = make(tmp_path, steps + "2,,0,10,0.9\n2,,11,20,0.9\n", min_battery=0.25)
    assert av.until(0, 5) == 30 and av.until(0, 15) == 30
    assert av.until(1, 5) == 10  # then off: too little battery
    assert av.until(2, 5) == 10  # a gap, however short, is off


def test_diurnal_model_share_phase_and_seeded_jitter(tmp_path) -> None:
    model = DiurnalModel(share=0.25, from_h=20, jitter_h=1)
    av = make(tmp_path, None, [model, None], seed=5)
    opens = av.opens_s[:3] / H
    assert np.all((19 <= opens) & (opens <= 21)) and len(set(opens)) == 3  # per node
    assert np.isnan(av.opens_s[3:]).all()
    same = make(tmp_path, None, [model, None], seed=5)
    assert np.array_equal(same.opens_s, av.opens_s, equal_nan=True)  # seeded
    other = make(tmp_path, None, [model, None], seed=6)
    assert not np.array_equal(other.opens_s[:3], av.opens_s[:3])
    node, o = 0, float(av.opens_s[0])
    for day in (0, 1, 3):  # every day: on for 6 h from its opening, then off
        t = o + day * DAY_S
        assert av.up(t + 1)[node] and av.up(t + 5.9 * H)[node] and not av.up(t + 6.1 * H)[node]
        assert av.until(node, t + H) == pytest.approx(t + 6 * H)
    assert av.up(o + 7 * H)[3:].all()  # class b: no model, always on
    assert av.next_open(o + 7 * H, np.array([node])) == pytest.approx(o + DAY_S)


def test_a_trace_wins_over_the_diurnal_model(tmp_path) -> None:
    av = make(tmp_path, "0,,0,100,\n", [DiurnalModel(0.5, 0, 0), None])
    assert av.windows[0] is not None and math.isnan(av.opens_s[0])
    assert not math.isnan(av.opens_s[1])
