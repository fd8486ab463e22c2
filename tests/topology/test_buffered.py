"""Buffered asynchronous rounds (FedBuff): the staleness-weighted merge, the event
order on the simulated clock, model versions as of each device's start, seeding."""

import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from fogsim.device.models import FogNet
from fogsim.fleet import build_fleet
from fogsim.scenario import ScenarioError, load_scenario
from fogsim.study.report import class_table
from fogsim.study.results import RunFailed, load, read_csv
from fogsim.topology.buffered import Buffered, staleness_weight
from fogsim.topology.jobs import Job
from tests.strategies.test_strategies import const_sub, reply, task_identity  # noqa: F401
from tests.topology.local import SCENARIO, LocalGrid, run_local

BUFFERED = ["topology.aggregation='buffered'", "topology.buffer_size=3", "topology.concurrency=5"]
SPEEDS = ["fleet.classes.1.flops=2e7"]  # small devices 100x slower than big ones


@pytest.fixture
def scenario_file(tmp_path: Path) -> Path:
    path = tmp_path / "fog.toml"
    path.write_text(SCENARIO)
    return path


def arrived(n: dict) -> bool:
    """Whether a nodes.csv row's upload arrived: an unfinished one's did if it finished
    (a tie with the merge's last reply) before the run ended, without leaving."""
    if n["status"] != "unfinished":
        return True
    whole = n["sim_start_s"] + n["sim_time_s"]
    return n["departed_s"] in ("", None) and n["sim_end_s"] >= whole - 1e-12


def test_staleness_weight_is_fedbuffs_polynomial() -> None:
    assert staleness_weight(0) == 1.0
    assert staleness_weight(3) == pytest.approx(0.5)
    assert [staleness_weight(s) for s in range(5)] == sorted(
        (staleness_weight(s) for s in range(5)), reverse=True
    )


@pytest.mark.parametrize("name", ["mask-union", "fedavg"])
def test_merge_adds_staleness_weighted_updates(name, scenario_file) -> None:
    """Fresh updates merge to the strategy's own average; an update s versions stale
    counts a(s) times as much (per parameter, over the devices holding it)."""
    sc = load_scenario(scenario_file, [*BUFFERED, "model.hidden=[6, 4]", f"strategy.name='{name}'"])
    torch.manual_seed(0)
    v0 = {k: v.numpy().copy() for k, v in FogNet((), (6, 4)).state_dict().items()}
    v2 = {k: v + 0.5 for k, v in v0.items()}
    full = [np.arange(6), np.arange(4)]
    a = [np.array([0, 1, 2]), np.array([0, 1])] if name == "mask-union" else full
    b = [np.array([1, 2, 3]), np.array([1, 2])] if name == "mask-union" else full
    kept = name == "mask-union"

    def job(node, start, kept_, value, n, version):
        msg = reply(const_sub(start, kept_, value), kept_, n=n, node=node, with_kept=kept)
        return Job(node, version, 0, msg, reply=msg)

    buf = Buffered(sc, build_fleet(sc.fleet, 0))
    buf.versions = {0: v0, 2: v2}
    fresh = [job(0, v2, a, 1.0, 100, 2), job(1, v2, b, 3.0, 300, 2)]
    strategy = buf.strategy
    strategy.global_state = {k: v.copy() for k, v in v2.items()}
    expected, _ = strategy.aggregate(3, [j.reply for j in fresh])
    got = buf.apply(3, 2, fresh)
    for k, v in expected.items():
        np.testing.assert_allclose(got[k].numpy(), v.numpy(), rtol=1e-6, atol=1e-6, err_msg=k)
    stale = [job(0, v0, a, 1.0, 100, 0)]  # started at version 0, merged into version 2
    got = buf.apply(3, 2, stale)
    row = 0  # held by the stale update: v2 + a(2) * (1.0 - v0)
    want = v2["fcs.0.weight"][row] + staleness_weight(2) * (1.0 - v0["fcs.0.weight"][row])
    np.testing.assert_allclose(got["fcs.0.weight"].numpy()[row], want, rtol=1e-5)
    if name == "mask-union":  # a row nobody held keeps version 2's value
        np.testing.assert_array_equal(got["fcs.0.weight"].numpy()[5], v2["fcs.0.weight"][5])
    buf.topology = buf.topology.model_copy(update={"server_lr": 0.25})  # a quarter step
    got = buf.apply(3, 2, stale)
    want = v2["fcs.0.weight"][row] + 0.25 * staleness_weight(2) * (1.0 - v0["fcs.0.weight"][row])
    np.testing.assert_allclose(got["fcs.0.weight"].numpy()[row], want, rtol=1e-5)


def test_replies_merge_in_clock_order_on_the_model_of_their_start(scenario_file, tmp_path) -> None:
    sc = load_scenario(scenario_file, [*BUFFERED, *SPEEDS, "run.rounds=6"])
    rounds, nodes, grid = run_local(sc, tmp_path / "a")
    ends = [r["sim_clock_s"] + r["sim_time_s"] for r in rounds]
    assert ends == sorted(ends) and len(set(ends)) > 1
    assert all(r["sampled"] == 3 for r in rounds), "every merge takes buffer_size replies"
    for n in (n for n in nodes if n["status"] != "unfinished"):  # those replied
        arrival = n["sim_start_s"] + n["sim_time_s"]
        r = n["round"]
        assert (ends[r - 2] if r > 1 else 0.0) <= arrival + 1e-12 <= ends[r - 1] + 1e-12
        # the version it trained on: the merges done by its start (one at the very
        # instant it starts may come before or after it: equal durations tie)
        before = sum(1 for e in ends if e < n["sim_start_s"])
        upto = sum(1 for e in ends if e <= n["sim_start_s"])
        assert before <= (r - 1) - n["staleness"] <= upto, n
    assert any(n["staleness"] > 0 for n in nodes) and any(n["staleness"] == 0 for n in nodes)
    dense = sum(p.numel() for p in FogNet((), tuple(sc.model.hidden)).parameters())
    for r in rounds:  # the merged sub-models' union: their biggest one up to dense
        held = [n["params"] for n in nodes if n["round"] == r["round"] and n["status"] == "ok"]
        assert max(held) <= r["union_params"] <= dense, r
    # real training in batches: the first window's 5 + 2 devices, then 3 per merge
    assert grid.sent == 5 + 2 + 3 * 5 + sc.simulation.evaluate_clients * 6
    again, nodes_again, _ = run_local(sc, tmp_path / "b")
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in rounds], "seeded"
    assert [(n["node"], n["staleness"]) for n in nodes_again] == [
        (n["node"], n["staleness"]) for n in nodes
    ]


def test_a_departing_device_frees_its_place_when_it_leaves(scenario_file, tmp_path) -> None:
    """Slow small devices whose day window closes 0.1 s into the run depart mid-training:
    each frees its place when it leaves, so a merge ends at its buffer's last reply or
    departure, whichever each was, as by hand (a departed device once held its place
    until its own finish, delaying the merge and its replacement's start); each row's
    ``sim_end_s`` is that arrival or departure."""
    leave = ["fleet.classes.1.diurnal={share=0.5, from_h=0}", "simulation.start_h=11.99997222"]
    sets = [*BUFFERED, *SPEEDS, *leave, "run.rounds=3", "simulation.max_failed_rounds=0"]
    rounds, nodes, _ = run_local(load_scenario(scenario_file, sets), tmp_path)
    assert any(n["status"] == "departed" for n in nodes)
    for r in rounds:
        mine = [n for n in nodes if n["round"] == r["round"] and n["status"] != "unfinished"]
        ends = [
            n["sim_start_s"] + (n["departed_s"] if n["status"] == "departed" else n["sim_time_s"])
            for n in mine
        ]
        end = r["sim_clock_s"] + r["sim_time_s"]
        assert end == pytest.approx(max(r["sim_clock_s"], *ends), abs=1e-9), (r, mine)
        assert [n["sim_end_s"] for n in mine] == pytest.approx(ends, abs=1e-9), mine


def test_devices_off_are_not_started_counted_or_waited_for(scenario_file, tmp_path) -> None:
    """Every device on in [0, 0.2) s and from 20 s (an independent audit's case): a
    device waiting for a place that frees after its window closed is not started (it
    was, and departed at once with its transfers booked); a departed device's upload is
    not in the merge's bytes_up (as in lock-step rounds); and once nobody is on, the
    next window opens when the first device comes back on (the clock stood at 0.2 s,
    every device sampled left at once, and the run failed for want of replies)."""
    trace = tmp_path / "trace.csv"
    windows = "".join(f"{n},,0,0.2,\n{n},,20,100000,\n" for n in range(12))
    trace.write_text("node,class,start_s,end_s,battery\n" + windows)
    sets = [*BUFFERED, *SPEEDS, f"fleet.trace='{trace}'", "run.rounds=5"]
    rounds, nodes, _ = run_local(load_scenario(scenario_file, sets), tmp_path / "run")
    assert any(n["status"] == "departed" for n in nodes), "the case must have departures"
    assert all(n["sim_start_s"] < 0.2 or n["sim_start_s"] >= 20 for n in nodes), nodes
    for r in rounds:
        mine = [n for n in nodes if n["round"] == r["round"]]
        sent = [n["bytes_up"] for n in mine]
        unsent = [n["bytes_up"] for n in mine if n["status"] == "departed" or not arrived(n)]
        assert r["bytes_up"] == sum(sent) - sum(unsent), r
    assert rounds[-1]["sim_clock_s"] >= 20 and rounds[-1]["aggregated"] > 0, rounds


def test_concurrency_devices_stay_in_flight_when_no_device_waits(scenario_file, tmp_path) -> None:
    """A fleet of exactly ``concurrency`` nodes: at every opening all of them are busy,
    so no device waits for this window's replies; the places the two fast devices free
    must still be filled (by themselves, on the next model), so every merge takes the
    two fast replies one fast duration apart (by hand; the audit's case: a reply that
    found no device waiting once lost its place for good, and merge 2 took 2x as
    long)."""
    fleet = ["fleet.nodes=4", "fleet.classes.0.count=2", "simulation.clients_per_round=2"]
    fleet += ["topology.concurrency=4"]
    slow = "fleet.classes.1.flops=2e5"  # 10,000x slower: busy through all 4 merges
    sets = [*BUFFERED, slow, *fleet, "topology.buffer_size=2", "run.rounds=4"]
    rounds, nodes, _ = run_local(load_scenario(scenario_file, sets), tmp_path / "a")
    fast = rounds[0]["sim_time_s"]
    for r, row in enumerate(rounds):
        assert row["sampled"] == 2 and row["sim_clock_s"] == pytest.approx(r * fast), row
        assert row["sim_time_s"] == pytest.approx(fast), row
    merged = [n for n in nodes if n["status"] != "unfinished"]  # the slow ones never reply
    assert {n["class"] for n in merged} == {"big"} and all(n["staleness"] == 0 for n in merged)


def test_devices_still_training_when_the_run_ends_are_booked(scenario_file, tmp_path) -> None:
    """Every device sent the model is in one nodes.csv row: those still training when
    the run ends as ``unfinished`` in the last merge's row, with their download in its
    ``bytes_down`` and the energy they spent until the end, by hand (a device drawing
    2 W while computing, nothing else); not sampled by a merge, so not ``failed``.
    (They were in no row: an audit's 20-node run left out 5 of 17 downloads.)"""
    power = ["active_w=2.0", "idle_w=0.0", "tx_j_per_byte=0.0", "rx_j_per_byte=0.0"]
    power = [f"fleet.classes.{c}.{f}" for c in (0, 1) for f in [*power, "connect_j=0.0"]]
    sc = load_scenario(scenario_file, [*BUFFERED, *SPEEDS, *power, "run.rounds=4"])
    rounds, nodes, grid = run_local(sc, tmp_path)
    assert len(nodes) == grid.sent - sc.simulation.evaluate_clients * 4, "a row per training"
    unfinished = [n for n in nodes if n["status"] == "unfinished"]
    last, end = rounds[-1], rounds[-1]["sim_clock_s"] + rounds[-1]["sim_time_s"]
    # concurrency 5, less the place the merge's last reply freed for the next window
    assert len(unfinished) == last["unfinished"] == 4
    assert last["sampled"] == 3 and all(r["unfinished"] == 0 for r in rounds[:-1])
    assert sum(r["bytes_down"] for r in rounds) == sum(n["bytes_down"] for n in nodes)
    assert last["energy_j"] == pytest.approx(sum(n["energy_j"] for n in nodes if n["round"] == 4))
    fleet, computing = build_fleet(sc.fleet, sc.run.seed), 0
    for n in unfinished:
        assert n["round"] == 4 and n["sim_start_s"] < end == n["sim_end_s"], n
        dev = fleet.device(n["node"])
        down_s = dev.latency_ms / 1e3 + n["bytes_down"] * 8 / (dev.down_mbps * 1e6)
        up_s = dev.latency_ms / 1e3 + n["bytes_up"] * 8 / (dev.up_mbps * 1e6)
        compute_s, ran_s = n["sim_time_s"] - down_s - up_s, end - n["sim_start_s"]
        assert n["energy_j"] == pytest.approx(2.0 * min(max(0.0, ran_s - down_s), compute_s))
        computing += down_s < ran_s < down_s + compute_s
    assert computing, "the case must stop a device mid-computation"
    table = class_table(load(tmp_path))  # the report counts none of them as failed
    for row in table.rows:
        failed = sum(
            n["class"] == row[0] and n["status"] not in ("ok", "unfinished") for n in nodes
        )
        assert row[table.headers.index("failed")] == str(failed), row


def test_a_device_started_as_the_run_ends_is_booked(scenario_file, tmp_path) -> None:
    """With a deadline every late job ends at its start + deadline, so replies tie, and
    a device started by a reply tied with the merge's last one starts at the run's very
    end: it was sent the model, and has its row (an audit found it in none)."""
    sets = [*BUFFERED, *SPEEDS, "run.rounds=4", "simulation.deadline_s=0.03"]
    sc = load_scenario(scenario_file, [*sets, "simulation.max_failed_rounds=0"])
    rounds, nodes, grid = run_local(sc, tmp_path)
    end = rounds[-1]["sim_clock_s"] + rounds[-1]["sim_time_s"]
    assert any(n["status"] == "unfinished" and n["sim_start_s"] == end for n in nodes)
    assert len(nodes) == grid.sent - sc.simulation.evaluate_clients * 4, "a row per training"
    assert len({(n["node"], n["sim_start_s"]) for n in nodes}) == len(nodes), "each once"


def same_rows(a: list[dict], b: list[dict]) -> bool:
    """Whether two runs' rows agree but for real (wall-clock) seconds."""
    real = {"wall_s", "time_s"}
    return [{k: v for k, v in r.items() if k not in real} for r in a] == [
        {k: v for k, v in r.items() if k not in real} for r in b
    ]


FOG_TIER = ["topology.kind='hierarchical'", "topology.fogs=2", "topology.fog_rounds=2"]


@pytest.mark.parametrize("tier", [[], FOG_TIER], ids=["flat", "fog-tier"])
def test_devices_in_flight_when_a_run_is_stopped_are_booked(tier, scenario_file, tmp_path) -> None:
    """A stop asked between rounds 1 and 2 ends a buffered run with round 2 (rounds
    3-4 not run), and its devices still training are booked in it as when the run is
    planned to end there: every row is that of a 2-round run. A lock-step run, with
    nothing in flight, stops as it did, at once."""
    # DynHP's schedule fixed: by default it spreads over the rounds the run plans
    sets = [*BUFFERED, *SPEEDS, *tier, "dynhp.participations=2"]
    sc = load_scenario(scenario_file, [*sets, "run.rounds=4"])
    stop = threading.Event()

    def stop_in_round_2(row: dict) -> None:
        stop.set()  # after round 1's rows are saved, before round 2 starts

    rounds, nodes, _ = run_local(sc, tmp_path / "stopped", stop=stop, progress=stop_in_round_2)
    planned = load_scenario(scenario_file, [*sets, "run.rounds=2"])
    two_rounds, two_nodes, grid = run_local(planned, tmp_path / "two")
    assert rounds[-1]["round"] == 2 and rounds[-1]["unfinished"] > 0
    assert len(nodes) == grid.sent - sc.simulation.evaluate_clients * 2, "a row per training"
    assert same_rows(rounds, two_rounds) and same_rows(nodes, two_nodes)
    lock_step = load_scenario(scenario_file, ["run.rounds=4"])
    stop.clear()
    rounds, _, _ = run_local(lock_step, tmp_path / "lock", stop=stop, progress=stop_in_round_2)
    assert [r["round"] for r in rounds] == [1]


@pytest.mark.parametrize("stopped", [False, True], ids=["", "stop-asked-too"])
def test_devices_in_flight_when_a_failing_run_stops_are_booked(
    stopped, scenario_file, tmp_path
) -> None:
    """Every device drops out: the run stops after ``max_failed_rounds`` (2) rounds with
    devices still in flight, booked in its last round as ``unfinished``, each of them
    charged its download (they were in no row). A stop asked meanwhile does not hide
    the failure (the run must not end as merely interrupted)."""
    sets = [*BUFFERED, *SPEEDS, "run.rounds=4", "faults.drop=1.0"]
    sc = load_scenario(scenario_file, [*sets, "simulation.max_failed_rounds=2"])
    grid, stop = LocalGrid(sc.simulation.flower_nodes), threading.Event()
    with pytest.raises(RunFailed, match="2 rounds in a row"):
        run_local(sc, tmp_path, grid, stop=stop, progress=lambda row: stopped and stop.set())
    rounds, nodes = read_csv(tmp_path / "rounds.csv"), read_csv(tmp_path / "nodes.csv")
    assert [r["round"] for r in rounds] == [1, 2] and rounds[-1]["unfinished"] > 0
    assert len(nodes) == grid.sent - sc.simulation.evaluate_clients * 2, "a row per training"
    assert sum(r["bytes_down"] for r in rounds) == sum(n["bytes_down"] for n in nodes)


def test_buffered_beats_lock_step_in_simulated_time_when_speeds_differ(scenario_file, tmp_path):
    """The same number of updates merged: lock-step rounds wait for their slowest
    device, buffered merges take the first replies."""
    sync = load_scenario(scenario_file, [*SPEEDS, "simulation.clients_per_round=3", "run.rounds=4"])
    buf = load_scenario(scenario_file, [*BUFFERED, *SPEEDS, "run.rounds=4"])
    sync_rounds, _, _ = run_local(sync, tmp_path / "sync")
    buf_rounds, _, _ = run_local(buf, tmp_path / "buf")
    assert sum(r["aggregated"] for r in sync_rounds) == sum(r["aggregated"] for r in buf_rounds)
    t_sync = sum(r["sim_time_s"] for r in sync_rounds)
    t_buf = (
        buf_rounds[-1]["sim_clock_s"] + buf_rounds[-1]["sim_time_s"] - buf_rounds[0]["sim_clock_s"]
    )
    assert t_buf < t_sync
    assert math.isfinite(buf_rounds[-1]["accuracy"])


def test_a_buffered_run_learns(tiny_scenario: Path, tmp_path: Path) -> None:
    """FedBuff merging every 2 of 4 devices in flight, three merges: the model is well
    above chance (10 classes), though each merge holds only two updates."""
    sets = ["topology.aggregation='buffered'", "topology.buffer_size=2", "topology.concurrency=4"]
    rounds, nodes, _ = run_local(load_scenario(tiny_scenario, [*sets, "run.rounds=3"]), tmp_path)
    assert [r["sampled"] for r in rounds] == [2, 2, 2]
    assert {n["staleness"] for n in nodes} <= {0, 1, 2, 3}
    assert rounds[-1]["accuracy"] > 0.3, "well above chance after training"


def test_a_buffered_crash_says_why_in_nodes_csv(tiny_scenario: Path, tmp_path: Path) -> None:
    """A device that crashed has its client's error in nodes.csv, as in lock-step rounds."""
    sets = ["topology.aggregation='buffered'", "topology.buffer_size=2", "topology.concurrency=4"]
    sc = load_scenario(tiny_scenario, [*sets, "run.rounds=3", "faults.crash=0.5"])
    _, nodes, _ = run_local(sc, tmp_path)
    crashed = [n for n in nodes if n["status"] == "crashed"]
    assert crashed, "the seed crashes some device"
    for n in nodes:
        said = f"injected crash of node {n['node']}"
        assert (said in str(n.get("error"))) == (n["status"] == "crashed"), n


@pytest.mark.parametrize(
    ("sets", "says"),
    [
        (
            ["topology.aggregation='buffered'", "topology.concurrency=13"],
            "topology.concurrency: 13",
        ),
        (
            ["topology.aggregation='buffered'", "topology.buffer_size=6", "topology.concurrency=5"],
            "topology.buffer_size: 6 exceeds",
        ),
        (["topology.aggregation='fedasync'"], "topology.aggregation"),
        (  # a merge takes buffer_size replies: min_replies is checked against it
            [*BUFFERED, "simulation.min_replies=4"],
            "simulation.min_replies: 4 exceeds topology.buffer_size = 3",
        ),
    ],
)
def test_bad_buffered_settings_are_clear_errors(scenario_file, sets, says) -> None:
    with pytest.raises(ScenarioError, match=says.replace(".", r"\.")):
        load_scenario(scenario_file, sets)


def test_clients_per_round_is_not_asked_of_a_buffered_run(scenario_file) -> None:
    """Buffered rounds do not use it (concurrency and buffer_size say who trains): a
    value over the fleet's nodes was refused."""
    sc = load_scenario(scenario_file, [*BUFFERED, "simulation.clients_per_round=20"])
    assert sc.simulation.clients_per_round == 20
    with pytest.raises(ScenarioError, match="simulation.clients_per_round: 20 exceeds"):
        load_scenario(scenario_file, ["simulation.clients_per_round=20"])
