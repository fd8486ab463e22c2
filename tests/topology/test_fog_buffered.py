"""FedBuff at every fog (``kind = "hierarchical"``, ``aggregation = "buffered"``): one
fog is the flat buffered run, devices stay in their fog and keep training across cloud
rounds on the clock, shares of the buffer and the concurrency, clear errors."""

from pathlib import Path

import numpy as np
import pytest

from fogsim.checks import problems
from fogsim.fleet import build_fleet
from fogsim.hardware.energy import Timeline, node_energy
from fogsim.scenario import ScenarioError, load_scenario
from fogsim.topology import fog_of
from fogsim.topology.buffered import planned
from fogsim.topology.fog_buffered import buffered_fog_scenario
from tests.topology.local import SCENARIO, run_local

SPEEDS = ["fleet.classes.1.flops=2e7"]  # small devices 100x slower than big ones
# no time on the fog→cloud link, to the last bit (the flat run has no such link)
IDEAL = "topology.cloud_link={up_mbps=1e300, down_mbps=1e300}"
HIER_BUFFERED = ["topology.kind='hierarchical'", "topology.aggregation='buffered'"]


@pytest.fixture
def scenario_file(tmp_path: Path) -> Path:
    path = tmp_path / "fog.toml"
    path.write_text(SCENARIO)
    return path


@pytest.mark.parametrize("name", ["mask-union", "fedavg"])
def test_one_fog_holding_every_device_is_the_flat_buffered_run(name, scenario_file, tmp_path):
    """Two fog merges per cloud round: the cloud's model is the fog's, devices in flight
    across a cloud round go on as in the flat run, the same nodes on the same model
    versions at the same times; the model after cloud round r is flat merge 2r's."""
    common = [f"strategy.name='{name}'", *SPEEDS, IDEAL]
    common += ["topology.aggregation='buffered'", "topology.buffer_size=3"]
    common += ["topology.concurrency=5"]
    flat = load_scenario(scenario_file, [*common, "run.rounds=6"])
    flat_rounds, flat_nodes, _ = run_local(flat, tmp_path / "flat")
    hier = [*common, "topology.kind='hierarchical'", "topology.fogs=1", "topology.fog_rounds=2"]
    hier_sc = load_scenario(scenario_file, hier)
    fog_rounds, fog_nodes, _ = run_local(hier_sc, tmp_path / "fog")
    planned_fog = buffered_fog_scenario(hier_sc, 3, 5).dynhp.participations
    assert planned_fog == planned(flat).dynhp.participations, "DynHP plans the same"
    assert len(fog_rounds) == 3 and len(fog_nodes) == len(flat_nodes)
    assert sum(n["status"] != "unfinished" for n in flat_nodes) == 18, "6 merges of 3"
    assert any(n["status"] == "unfinished" for n in flat_nodes), "booked at the end alike"
    assert len({r["accuracy"] for r in flat_rounds}) > 1, "the model trains"
    assert any(n["staleness"] > 0 for n in flat_nodes), "stale updates are in the comparison"
    for r in fog_rounds:
        want = flat_rounds[2 * r["round"] - 1]
        assert r["accuracy"] == pytest.approx(want["accuracy"], abs=1e-6)
        assert r["loss"] == pytest.approx(want["loss"], rel=1e-6, abs=1e-6)
        ends = [x["sim_clock_s"] + x["sim_time_s"] for x in (r, want)]
        assert ends[0] == pytest.approx(ends[1], rel=1e-12)
    same = ("node", "status", "staleness", "bytes_down", "bytes_up")
    for a, b in zip(flat_nodes, fog_nodes, strict=True):
        assert {k: b[k] for k in same} == {k: a[k] for k in same}
        for k in ("sim_start_s", "sim_time_s"):
            assert b[k] == pytest.approx(a[k], rel=1e-12), k
        assert b["fog"] == 0 and b["round"] == (a["round"] + 1) // 2
        assert b["fog_round"] == (a["round"] - 1) % 2 + 1


def test_fogs_run_fedbuff_on_their_own_devices_and_clocks(scenario_file, tmp_path) -> None:
    """Two fogs of 6, buffer 4 and concurrency 6 split to 2 and 3 each, over a slow
    cloud link: every fog merge takes its 2 replies from its own devices; staleness
    counts its own merges; no device starts while its fog waits for the cloud's model;
    a cloud round lasts down + its slowest fog's merges + up. Seeded."""
    link = "topology.cloud_link={up_mbps=1, down_mbps=2, latency_ms=100}"
    sets = [*HIER_BUFFERED, "topology.fogs=2", "topology.fog_rounds=2", link, *SPEEDS]
    sets += ["topology.buffer_size=4", "topology.concurrency=6", "run.rounds=3"]
    sc = load_scenario(scenario_file, sets)
    rounds, nodes, grid = run_local(sc, tmp_path / "a")
    assignment = fog_of(sc, build_fleet(sc.fleet, sc.run.seed))
    assert sorted(np.bincount(assignment).tolist()) == [6, 6]
    assert all(assignment[n["node"]] == n["fog"] for n in nodes), "devices stay in their fog"
    assert len(nodes) == grid.sent - sc.simulation.evaluate_clients * 3, "a row per training"
    unfinished = [n for n in nodes if n["status"] == "unfinished"]
    # each fog's 3 places less the one its last merge's reply freed, booked in the last
    # round: here each replied to its fog after the fog's last merge, before the cloud's
    # (the run's end), so its upload arrived and counts, unmerged, in device_bytes
    assert [n["fog"] for n in unfinished] == [0, 0, 1, 1] and rounds[-1]["unfinished"] == 4
    end = rounds[-1]["sim_clock_s"] + rounds[-1]["sim_time_s"]
    for n in unfinished:
        assert n["round"] == 3 and n["sim_end_s"] == n["sim_start_s"] + n["sim_time_s"] < end
    for r in rounds:
        assert r["device_bytes"] == sum(
            n["bytes_down"] + (n["bytes_up"] if n["status"] in ("ok", "unfinished") else 0)
            for n in nodes
            if n["round"] == r["round"]
        )
    for r in rounds:
        mine = [n for n in nodes if n["round"] == r["round"] and n["status"] != "unfinished"]
        assert r["sampled"] == len(mine) == 2 * 2 * 2  # fogs x fog merges x buffer share
        for f in (0, 1):
            for j in (1, 2):
                assert sum(n["fog"] == f and n["fog_round"] == j for n in mine) == 2
        start, end = r["sim_clock_s"], r["sim_clock_s"] + r["sim_time_s"]
        down = 0.1 + r["cloud_bytes_down"] / 2 * 8 / 2e6  # one fog's copy of the model
        assert max(n["sim_start_s"] + n["sim_time_s"] for n in mine) + 0.1 < end, "then up"
        starts = [n["sim_start_s"] for n in nodes]
        assert not any(start < t < start + down - 1e-9 for t in starts), "none while waiting"
        if r["round"] > 1:  # the slot its fog's last reply freed starts on the model's arrival
            assert any(t == pytest.approx(start + down, abs=1e-9) for t in starts)
    assert any(n["staleness"] > 0 for n in nodes)
    arrived = {
        r["round"]: r["sim_clock_s"] + 0.1 + r["cloud_bytes_down"] / 2 * 8 / 2e6 for r in rounds
    }
    for n in nodes:  # no device trains on a cloud model before it reached its fog
        version = (n["round"] - 1) * 2 + n["fog_round"] - 1 - n["staleness"]
        if version % 2 == 0:  # the first of a cloud round: the cloud's model
            assert n["sim_start_s"] >= arrived[version // 2 + 1] - 1e-9, n
    assert grid.sent == 2 * (3 + 1) + 2 * 2 * 5 + sc.simulation.evaluate_clients * 3
    again, nodes_again, _ = run_local(sc, tmp_path / "b")
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in rounds], "seeded"
    assert [(n["node"], n["staleness"], n["sim_start_s"]) for n in nodes_again] == [
        (n["node"], n["staleness"], n["sim_start_s"]) for n in nodes
    ]


def test_a_device_that_leaves_after_its_fogs_last_merge_is_booked_until_it_left(
    scenario_file, tmp_path
) -> None:
    """Node 7's window closes at 18.23 s, after its fog's last merge and before the
    cloud's (a slow cloud link): it is booked ``unfinished`` with ``departed_s``, its
    energy its timeline's until it left (it was once charged to its finish), and its
    upload, which never arrived, is not in ``device_bytes`` (an audit's case)."""
    trace = tmp_path / "trace.csv"
    windows = "".join(f"{n},,0,{18.23 if n == 7 else 100000},\n" for n in range(12))
    trace.write_text("node,class,start_s,end_s,battery\n" + windows)
    power = ["active_w=2.0", "idle_w=0.5", "tx_j_per_byte=1e-6", "rx_j_per_byte=1e-6"]
    power = [f"fleet.classes.{c}.{f}" for c in (0, 1) for f in [*power, "connect_j=0.1"]]
    link = "topology.cloud_link={up_mbps=0.1, down_mbps=2, latency_ms=100}"
    sets = [*HIER_BUFFERED, "topology.fogs=2", "topology.fog_rounds=2", link, *SPEEDS, *power]
    sets += ["topology.buffer_size=4", "topology.concurrency=6", "run.rounds=3"]
    sc = load_scenario(scenario_file, [*sets, f"fleet.trace='{trace}'"])
    rounds, nodes, _ = run_local(sc, tmp_path / "run")
    (n,) = [n for n in nodes if n["status"] == "unfinished" and n["departed_s"] not in ("", None)]
    end = rounds[-1]["sim_clock_s"] + rounds[-1]["sim_time_s"]
    assert n["node"] == 7 and n["sim_start_s"] + n["departed_s"] == pytest.approx(18.23)
    assert n["sim_end_s"] == pytest.approx(18.23) and 18.23 < end
    dev = build_fleet(sc.fleet, sc.run.seed).device(7)
    down_s = dev.latency_ms / 1e3 + n["bytes_down"] * 8 / (dev.down_mbps * 1e6)
    up_s = dev.latency_ms / 1e3 + n["bytes_up"] * 8 / (dev.up_mbps * 1e6)
    tl = Timeline(down_s, n["sim_time_s"] - down_s - up_s, up_s)
    spent = node_energy(dev, tl, n["bytes_down"], n["bytes_up"], stop_s=n["departed_s"])
    assert spent is not None and n["energy_j"] == pytest.approx(spent.total_j)
    assert n["energy_j"] < node_energy(dev, tl, n["bytes_down"], n["bytes_up"]).total_j
    last = [m for m in nodes if m["round"] == 3]
    arrived = [
        m for m in last if m["status"] == "ok" or (m["status"] == "unfinished" and m is not n)
    ]
    assert rounds[-1]["device_bytes"] == sum(m["bytes_down"] for m in last) + sum(
        m["bytes_up"] for m in arrived
    )


LISTS = ["topology.assign='lists'", "topology.lists=[[0], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]"]


@pytest.mark.parametrize(
    ("sets", "says"),
    [
        (
            ["topology.fogs=4", "topology.buffer_size=3", "topology.concurrency=4"],
            "topology.buffer_size: 3 split over 4 fogs by size gives fog",
        ),
        (
            ["topology.fogs=4", "topology.buffer_size=4", "topology.concurrency=3"],
            "topology.buffer_size: 4 exceeds topology.concurrency = 3",
        ),
        (
            [*LISTS, "topology.buffer_size=2", "topology.concurrency=4"],
            "topology.buffer_size: 2 split over 2 fogs by size gives fog 0 (1 devices) none",
        ),
    ],
)
def test_shares_no_fog_can_take_are_clear_errors(scenario_file, sets, says) -> None:
    try:
        sc = load_scenario(scenario_file, [*HIER_BUFFERED, *sets])
    except ScenarioError as e:
        assert says in str(e)
        return
    assert any(says in p for p in problems(sc)), problems(sc)
