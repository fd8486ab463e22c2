"""Availability in time on the server: only nodes inside their windows are sampled,
the round waits for the first window to open, and a node whose window closes during
its training departs (update lost, energy spent)."""

from pathlib import Path

import numpy as np
import pytest

from fogsim.device.models import FogNet
from fogsim.fleet import build_fleet
from fogsim.hardware.energy import node_energy, timeline
from fogsim.scenario import load_scenario
from fogsim.strategies import STRATEGIES
from tests.strategies.test_strategies import cohort_reply, reply, task_identity  # noqa: F401

TRACE = """node,class,start_s,end_s,battery
{a},,0,1000,0.9
{b},,0,0.5,
{c},,0,1000,0.1
,small,5000,6000,
"""
DEVICES = [
    "fleet.classes.0.device='raspberry-pi-4'",
    "fleet.classes.0.memory='8MiB'",
    "fleet.classes.1.device='esp32-s3'",
    "fleet.classes.1.memory='512KiB'",
]


class Grid:
    def __init__(self, n: int) -> None:
        self.n = n

    def get_node_ids(self) -> list[int]:
        return list(range(self.n))


def strategy(tiny_scenario: Path, *sets: str):
    """fedavg on the tiny fleet with a trace naming three "big" nodes: A (on until
    1000 s, battery 0.9), B (on until 0.5 s) and C (battery 0.1, below min_battery);
    the "small" class is on from 5000 to 6000 s. Returns it and (A, B, C)."""
    plain = load_scenario(tiny_scenario, list(sets))
    big = np.flatnonzero(build_fleet(plain.fleet, plain.run.seed).node_class == 0)
    a, b, c = (int(n) for n in big[:3])
    (tiny_scenario.parent / "trace.csv").write_text(TRACE.format(a=a, b=b, c=c))
    sc = load_scenario(tiny_scenario, ["fleet.trace='trace.csv'", "fleet.min_battery=0.2", *sets])
    return STRATEGIES["fedavg"](sc, build_fleet(sc.fleet, sc.run.seed)), (a, b, c)


def test_a_node_outside_its_window_is_never_sampled(tiny_scenario, monkeypatch) -> None:
    monkeypatch.chdir(tiny_scenario.parent)
    s, (a, b, c) = strategy(tiny_scenario)
    fleet, grid = s.fleet, Grid(s.scenario.simulation.flower_nodes)
    small = set(np.flatnonzero(fleet.node_class == 1).tolist())
    seen: set[int] = set()
    for rnd in range(1, 60):
        s.clock.now_s = 100.0 * (rnd % 3)  # 0, 100, 200 s: inside A's window, B's ends
        nodes = s.sample(4, grid, rnd)
        assert set(nodes) <= set(np.flatnonzero(fleet.availability.up(s.clock.now_s)).tolist())
        seen |= set(nodes)
    assert not seen & small, "the small class is off until 5000 s"
    assert c not in seen, "C's battery (0.1) is below min_battery (0.2)"
    assert b in seen, "B is on at 0 s"
    assert s.clock.now_s == 200.0, "someone was on: the round did not wait"
    for rnd in range(1, 20):  # at 100 or 200 s B is off
        s.clock.now_s = 100.0 * (1 + rnd % 2)
        assert b not in s.sample(4, grid, rnd)
    assert a in seen and seen - {a, b}, "A and the big nodes the trace leaves alone take part"


def test_the_round_waits_for_the_first_window_to_open(tiny_scenario, monkeypatch) -> None:
    """Only the small class can take part (big nodes are left out): at t = 2000 none is
    on, so the round starts at 5000 s, when their window opens."""
    monkeypatch.chdir(tiny_scenario.parent)
    s, _ = strategy(tiny_scenario)
    s.takes_part = s.fleet.node_class == 1
    s.clock.now_s = 2000.0
    nodes = s.sample(4, Grid(s.scenario.simulation.flower_nodes), 1)
    assert s.clock.now_s == 5000.0 and len(nodes) == 4
    assert all(s.fleet.node_class[n] == 1 for n in nodes)


def test_a_node_whose_window_closes_mid_round_departs(tiny_scenario, monkeypatch) -> None:
    monkeypatch.chdir(tiny_scenario.parent)
    s, (a, b, _) = strategy(tiny_scenario, *DEVICES)
    state = {k: v.numpy() for k, v in FogNet((), (64, 32)).state_dict().items()}
    stays = reply(state, None, 10, node=a, with_kept=False)
    leaves = reply({k: v + 1.0 for k, v in state.items()}, None, 10, node=b, with_kept=False)
    for msg in (stays, leaves):
        msg.content["metrics"]["train-flops"] = 5e9  # 1 s on a 5 GFLOP/s Pi 4
    s.bytes_down = {a: 1000, b: 1000}
    s.clock.now_s = 0.0
    new, _ = s.aggregate_train(1, [cohort_reply(leaves, stays)])
    rows = {r["node"]: r for r in s.node_rows}
    stay, gone = rows[a], rows[b]
    assert stay["status"] == "ok" and gone["status"] == "departed"
    assert gone["departed_s"] == 0.5 and s.round_stats["departed"] == 1
    assert s.round_stats["aggregated"] == 1 and b not in s.holders and a in s.holders
    for k, v in new.items():  # only the node that stayed was averaged
        assert np.allclose(v.numpy(), state[k])
    up = stay["bytes_up"]
    assert s.round_stats["bytes_up"] == up, "the departed node's upload never arrived"
    dev = s.fleet.device(b)
    tl = timeline(dev, 1000, up, 5e9)
    assert gone["sim_time_s"] == pytest.approx(tl.total_s)
    spent = node_energy(dev, tl, 1000, up, stop_s=0.5)
    assert spent is not None and gone["energy_j"] == pytest.approx(spent.total_j)
    assert 0 < gone["energy_j"] < stay["energy_j"]
    assert gone["energy_compute_j"] == pytest.approx(6.4 * (0.5 - tl.down_s))
    # the round ran until the node that stayed finished; it waited for nobody
    assert s.round_stats["sim_time_s"] == pytest.approx(timeline(dev, 1000, up, 5e9).total_s)
    assert stay["energy_idle_j"] == pytest.approx(2.7 * (tl.down_s + tl.up_s))
    assert stay["battery"] == 0.9 and gone["battery"] == ""
    energy = s.energy_columns()
    assert energy["energy_j"] == pytest.approx(stay["energy_j"] + gone["energy_j"])
    assert energy["energy_j_big"] == pytest.approx(energy["energy_j"])
    assert energy["energy_j_small"] == 0.0
    assert s.clock.now_s == pytest.approx(tl.total_s), "the next round starts when this ends"


def test_no_energy_columns_for_classes_without_figures(tiny_scenario, monkeypatch) -> None:
    monkeypatch.chdir(tiny_scenario.parent)
    s, (a, _, _) = strategy(tiny_scenario, *DEVICES[:2])  # "small" has no power figures
    state = {k: v.numpy() for k, v in FogNet((), (64, 32)).state_dict().items()}
    msg = reply(state, None, 10, node=a, with_kept=False)
    msg.content["metrics"]["train-flops"] = 1e6
    s.bytes_down = {a: 0}
    s.aggregate_train(1, [cohort_reply(msg)])
    assert s.node_rows[0]["energy_j"] > 0
    assert set(s.energy_columns()) == {"energy_j_big"}, "no fleet total from a partial fleet"
