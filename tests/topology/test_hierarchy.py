"""The fog tier: exact merging across tiers, one fog = the flat run, assignment of
devices, the clock and the bytes of each tier, and clear errors for bad input."""

from pathlib import Path

import numpy as np
import pytest
import torch

from fogsim.checks import problems
from fogsim.device.models import FogNet
from fogsim.fleet import build_fleet
from fogsim.scenario import ScenarioError, load_scenario
from fogsim.strategies import STRATEGIES
from fogsim.study.results import RunFailed, read_csv
from fogsim.topology import fog_of
from fogsim.topology.merge import merge
from tests.strategies.test_strategies import const_sub, reply, task_identity  # noqa: F401
from tests.topology.local import SCENARIO, run_local

IDEAL = "topology.cloud_link={up_mbps=1e12, down_mbps=1e12}"  # no time on the fog→cloud link
HIER = ["topology.kind='hierarchical'"]


@pytest.fixture
def scenario_file(tmp_path: Path) -> Path:
    path = tmp_path / "fog.toml"
    path.write_text(SCENARIO)
    return path


def fresh(name: str, sc, state):
    s = STRATEGIES[name](sc, build_fleet(sc.fleet, 0))
    s.global_state = {k: v.copy() for k, v in state.items()}
    return s


@pytest.mark.parametrize("name", ["mask-union", "fedavg"])
def test_fog_models_merge_to_the_average_over_all_their_devices(name, scenario_file) -> None:
    """Two fogs' aggregates, merged with their weights, equal one aggregate over all
    replies: sums and counts add up across tiers (overlapping masks included)."""
    sc = load_scenario(scenario_file, ["model.hidden=[6, 4]", f"strategy.name='{name}'"])
    torch.manual_seed(0)
    state = {k: v.numpy().copy() for k, v in FogNet((), (6, 4)).state_dict().items()}
    full = [np.arange(6), np.arange(4)]
    masks = [[np.array([0, 1, 2]), np.array([0, 1])], [np.array([2, 3]), np.array([1, 2])]]
    masks.append([np.array([1, 3]), np.arange(4)])
    if name == "fedavg":
        masks = [full] * 3
    replies = [
        reply(const_sub(state, m, v), m, n=n, node=i, with_kept=name != "fedavg")
        for i, (m, v, n) in enumerate(zip(masks, (1.0, 4.0, -2.0), (100, 300, 50), strict=True))
    ]
    flat, _ = fresh(name, sc, state).aggregate(1, replies)
    models = []
    for part in (replies[:2], replies[2:]):
        fog = fresh(name, sc, state)
        fog.merge_weights = None
        arrays, _ = fog.aggregate(1, part)
        weights = fog.merge_weights
        if weights is None:  # dense: the examples behind the fog's model
            weights = float(sum(m.content["metrics"]["num-examples"] for m in part))
        models.append(({k: v.numpy() for k, v in arrays.items()}, weights))
    cloud, _ = merge(state, models)
    for k, v in flat.items():
        np.testing.assert_allclose(cloud[k], v.numpy(), rtol=1e-6, atol=1e-7, err_msg=k)
    if name == "mask-union":  # a parameter nobody holds keeps its value
        assert np.array_equal(cloud["fcs.0.weight"][4:], state["fcs.0.weight"][4:])


@pytest.mark.parametrize("name", ["mask-union", "fedavg"])
def test_one_fog_holding_every_device_gives_the_flat_run(name, scenario_file, tmp_path) -> None:
    strategy = f"strategy.name='{name}'"
    flat = load_scenario(scenario_file, [strategy])
    flat_rounds, flat_nodes, _ = run_local(flat, tmp_path / "flat")
    sc = load_scenario(scenario_file, [strategy, *HIER, "topology.fogs=1", IDEAL])
    fog_rounds, fog_nodes, _ = run_local(sc, tmp_path / "fog")
    assert len(fog_rounds) == len(flat_rounds) == 3
    assert flat_rounds[-1]["accuracy"] != flat_rounds[0]["accuracy"], "the model trains"
    skip = {"wall_s", "cloud_bytes_up", "cloud_bytes_down", "cloud_bytes", "stragglers_fog"}
    for a, b in zip(flat_rounds, fog_rounds, strict=True):
        for key, value in a.items():
            if key in skip:
                continue
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, rel=1e-6, abs=1e-6), (a["round"], key)
            else:
                assert b[key] == value, (a["round"], key)
    assert [n["node"] for n in fog_nodes] == [n["node"] for n in flat_nodes]
    assert {n["fog"] for n in fog_nodes} == {0} and {n["fog"] for n in flat_nodes} == {""}


def test_fog_rounds_clock_bytes_and_stragglers(scenario_file, tmp_path) -> None:
    """Two fogs, two fog rounds each, over a slow fog→cloud link: the cloud round lasts
    down + the fog's rounds + up of its slowest fog; devices stay in their fog."""
    link = "topology.cloud_link={up_mbps=1, down_mbps=2, latency_ms=100}"
    dev = "topology.device_link={up_mbps=20, down_mbps=40, latency_ms=5}"
    sets = [*HIER, "topology.fogs=2", "topology.fog_rounds=2", link, dev, "run.rounds=2"]
    sc = load_scenario(scenario_file, [*sets, "simulation.deadline_s=0.03"])
    rounds, nodes, grid = run_local(sc, tmp_path / "fog")
    assignment = fog_of(sc, build_fleet(sc.fleet, sc.run.seed))
    assert sorted(np.bincount(assignment).tolist()) == [6, 6]
    model_bytes = sum(v.numel() * 4 for v in FogNet((), (16, 8)).state_dict().values())
    start = sc.simulation.start_h * 3600
    for r in rounds:
        mine = [n for n in nodes if n["round"] == r["round"]]
        assert {n["fog_round"] for n in mine} == {1, 2}
        assert all(assignment[n["node"]] == n["fog"] for n in mine)
        assert r["sampled"] == len(mine) == 2 * sc.simulation.clients_per_round
        assert r["cloud_bytes_down"] == 2 * model_bytes
        assert r["device_bytes"] == sum(n["bytes_down"] + (n["bytes_up"] or 0) for n in mine)
        assert r["stragglers_device"] == sum(n["status"] == "straggler" for n in mine)
        down = 0.1 + model_bytes * 8 / 2e6
        ends = []
        for f in (0, 1):
            fog_s = sum(  # a fog round lasts until its slowest reply, at most the deadline
                max(
                    min(n["sim_time_s"], 0.03)
                    for n in mine
                    if n["fog"] == f and n["fog_round"] == j
                )
                for j in (1, 2)
            )
            ends.append(down + fog_s)
        assert r["sim_clock_s"] == pytest.approx(start)
        assert max(ends) < r["sim_time_s"] < max(ends) + 0.1 + r["cloud_bytes_up"] * 8 / 1e6 + 1e-9
        start += r["sim_time_s"]
    assert sum(r["stragglers_device"] for r in rounds) > 0, "the deadline cuts slow devices"
    for n in nodes:  # device links are the fog's: 5 ms latency, 40 Mbit/s down
        if n["status"] == "ok":
            assert n["sim_time_s"] > 0.005 + n["bytes_down"] * 8 / 40e6


def test_a_fogs_devices_travel_in_the_flat_rounds_cohorts(
    scenario_file, tmp_path, monkeypatch
) -> None:
    """A fog round's messages are cut at the flat round's cohort size (2 here, on two
    cores), not at a size worked out for each fog's few devices (about two messages per
    actor for each fog: 3 a fog here, 6 a round where the flat round of 6 makes 3)."""
    monkeypatch.setattr("fogsim.scenario.schema.os.cpu_count", lambda: 2)
    sets = [*HIER, "topology.fogs=2", "run.rounds=2", "simulation.evaluate_clients=0"]
    sc = load_scenario(scenario_file, sets)
    _, nodes, grid = run_local(sc, tmp_path / "fog")
    assert sc.simulation.cohort(sc.simulation.clients_per_round) == 2
    assert len(nodes) == 2 * 6  # 2 rounds of 2 fogs x 3 devices
    assert grid.train_messages == 2 * 2 * 2  # per round and fog: 3 devices in 2 messages


def test_a_hierarchical_run_learns(tiny_scenario: Path, tmp_path: Path) -> None:
    """Two fogs of two fog rounds each, two cloud rounds, over a cloud link: the model
    every device gets is well above chance (10 classes) after training."""
    link = "topology.cloud_link={up_mbps=10, down_mbps=10, latency_ms=50}"
    sets = [*HIER, "topology.fogs=2", "topology.fog_rounds=2", link]
    rounds, nodes, _ = run_local(load_scenario(tiny_scenario, sets), tmp_path / "fog")
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["sampled"] == r["aggregated"] == 8 for r in rounds)
    assert {(n["fog"], n["fog_round"]) for n in nodes} == {(0, 1), (0, 2), (1, 1), (1, 2)}
    assert rounds[-1]["accuracy"] > 0.5, "well above chance after training"


def test_assignments(scenario_file) -> None:
    def assign(*sets: str) -> np.ndarray:
        sc = load_scenario(scenario_file, [*HIER, *sets])
        return fog_of(sc, build_fleet(sc.fleet, sc.run.seed))

    seeded = assign("topology.fogs=5")
    assert (
        sorted(np.bincount(seeded).tolist()) == [2, 2, 3, 3, 2][::-1]
        or max(np.bincount(seeded)) - min(np.bincount(seeded)) <= 1
    )
    assert np.array_equal(seeded, assign("topology.fogs=5")), "seeded: the same each time"
    assert not np.array_equal(seeded, assign("topology.fogs=5", "run.seed=6"))
    sc = load_scenario(scenario_file, HIER + ["topology.assign='class'"])
    assert np.array_equal(fog_of(sc, fleet := build_fleet(sc.fleet, 5)), fleet.node_class)
    lists = "topology.lists=[[0, 1, 2], [3, 4, 5, 6, 7, 8, 9, 10, 11]]"
    explicit = assign("topology.assign='lists'", lists)
    assert explicit.tolist() == [0] * 3 + [1] * 9


def test_a_fleet_file_fog_column_assigns_devices(tmp_path) -> None:
    (tmp_path / "fleet.csv").write_text(
        "id,device,memory,fog\n"
        "gw-a,raspberry-pi-4,,\ngw-b,raspberry-pi-4,,\n"
        "s1,esp32-s3,1MiB,gw-a\ns2,esp32-s3,1MiB,gw-b\ns3,esp32-s3,1MiB,gw-a\n"
    )
    scenario = tmp_path / "f.toml"
    scenario.write_text(
        '[fleet]\nfile = "fleet.csv"\n[topology]\nkind = "hierarchical"\nassign = "file"\n'
        "[simulation]\nclients_per_round = 3\n"
    )
    sc = load_scenario(scenario)
    assert fog_of(sc, build_fleet(sc.fleet, 0)).tolist() == [0, 1, 0, 1, 0]


@pytest.mark.parametrize(
    ("sets", "says"),
    [
        (["topology.kind='tree'"], "topology.kind"),
        (HIER, "topology.fogs: required"),
        ([*HIER, "topology.fogs=13"], "topology.fogs: 13 exceeds fleet.nodes = 12"),
        ([*HIER, "topology.fogs=0"], "topology.fogs"),
        ([*HIER, "topology.assign='lists'", "topology.lists=[[0, 1], [1, 2]]"], "exactly once"),
        ([*HIER, "topology.assign='file'"], "topology.assign: 'file' needs a fleet file"),
        ([*HIER, "topology.fogs=2", "topology.fog_rounds=0"], "topology.fog_rounds"),
        ([*HIER, "topology.fogs=2", "topology.cloud_link={up_mbps=-1}"], "up_mbps"),
        ([*HIER, "topology.fogs=2", "topology.fog_rouds=2"], "fog_rounds"),
        # set, but never read by a flat or lock-step run (each once ran on, exit 0)
        (["topology.cloud_deadline_s=1"], "topology.cloud_deadline_s: 1.0, but this"),
        (["topology.fog_rounds=5"], "fog_rounds: 5, but this topology never reads it"),
        (["topology.device_link={latency_ms=0}"], "{'latency_ms': 0.0}, but this"),
        (["topology.fogs=2"], "allowed only with kind = 'hierarchical'"),
        (["topology.server_lr=0.5"], "allowed only with aggregation = 'buffered'"),
        ([*HIER, "topology.fogs=2", "topology.buffer_size=2"], "topology.buffer_size: 2"),
    ],
)
def test_bad_topology_is_one_clear_error(scenario_file, sets, says) -> None:
    with pytest.raises(ScenarioError) as e:
        load_scenario(scenario_file, sets)
    assert says in str(e.value) and "fog.toml" in str(e.value) or says in str(e.value)


@pytest.mark.parametrize("aggregation", ["lock-step", "buffered"])
def test_a_late_fogs_updates_are_not_aggregated(scenario_file, tmp_path, aggregation) -> None:
    """A fog model past ``cloud_deadline_s`` is not merged: its devices' updates count in
    ``failed`` (and ``failed_<class>``), not ``aggregated``, so a run whose every fog is
    late stops after ``max_failed_rounds`` (it once ran on with an unchanged model)."""
    slow = "topology.cloud_link={up_mbps=1, down_mbps=2, latency_ms=100}"
    sets = [*HIER, "topology.fogs=2", slow, "run.rounds=4", "simulation.max_failed_rounds=2"]
    if aggregation == "buffered":
        sets += ["topology.aggregation='buffered'", "topology.buffer_size=2",
                 "topology.concurrency=4"]  # fmt: skip
    on_time = load_scenario(scenario_file, [*sets, "topology.cloud_deadline_s=60"])
    rounds, _, _ = run_local(on_time, tmp_path / "a")
    assert all(r["aggregated"] > 0 and r["stragglers_fog"] == 0 for r in rounds)
    late = load_scenario(scenario_file, [*sets, "topology.cloud_deadline_s=0.05"])
    with pytest.raises(RunFailed, match="2 rounds in a row"):
        run_local(late, tmp_path / "b")
    rounds = read_csv(tmp_path / "b" / "rounds.csv")
    assert len(rounds) == 2
    for r in rounds:
        assert r["stragglers_fog"] == 2 and r["kept_previous"] == 1
        assert r["aggregated"] == 0 and r["failed"] == r["sampled"] > 0
        assert r["failed_big"] + r["failed_small"] == r["failed"]


def test_a_fog_whose_share_of_the_clients_is_none_is_refused(scenario_file) -> None:
    """Six fogs of two devices share 4 clients a round: two fogs would get none and their
    devices never train (the lock-step tier once ran so, silently; the buffered tier
    refuses its shares so too: test_fog_buffered)."""
    sets = [*HIER, "topology.fogs=6"]
    found = problems(load_scenario(scenario_file, [*sets, "simulation.clients_per_round=4"]))
    says = "simulation.clients_per_round: 4 split over 6 fogs by size gives fog"
    assert any(says in p and "at least one per fog (about 6 here)" in p for p in found), found
    assert problems(load_scenario(scenario_file, [*sets, "simulation.clients_per_round=6"])) == []


def test_a_flat_fleet_given_a_cloud_link_crosses_it(scenario_file, tmp_path) -> None:
    """Flat devices reach the cloud over the same wide-area link a fog would use: its
    latency on each of their two transfers, its throughput as a cap."""
    plain, nodes, _ = run_local(load_scenario(scenario_file, ["run.rounds=1"]), tmp_path / "a")
    wan = "topology.cloud_link={latency_ms=100, up_mbps=1e12, down_mbps=1e12}"
    _, via_wan, _ = run_local(load_scenario(scenario_file, ["run.rounds=1", wan]), tmp_path / "b")
    assert [n["node"] for n in via_wan] == [n["node"] for n in nodes]
    for a, b in zip(nodes, via_wan, strict=True):
        assert b["sim_time_s"] == pytest.approx(a["sim_time_s"] + 0.2)


def test_cli_refuses_a_bad_topology_with_exit_2(tmp_path) -> None:
    """Through the CLI's error path: the file, the field, the value and what is allowed."""
    from typer.testing import CliRunner

    from fogsim.cli import app

    (tmp_path / "fleet.csv").write_text(
        "id,device,memory,fog\ngw-a,raspberry-pi-4,,\ngw-b,raspberry-pi-4,,\n"
        "s1,esp32-s3,1MiB,gw-a\ns2,esp32-s3,1MiB,gw-b\n"
    )
    scenario = tmp_path / "f.toml"
    scenario.write_text(
        '[fleet]\nfile = "fleet.csv"\n[topology]\nkind = "hierarchical"\nassign = "file"\n'
        "fogs = 3\n[simulation]\nclients_per_round = 2\n"
    )
    result = CliRunner().invoke(app, ["validate", str(scenario)])
    assert result.exit_code == 2, result.output
    assert "topology.fogs: 3" in result.output and "gives 2" in result.output
    result = CliRunner().invoke(app, ["validate", str(scenario), "--set", "topology.kind='ring'"])
    assert result.exit_code == 2 and "topology.kind" in result.output
    assert "'flat'" in result.output and "'hierarchical'" in result.output


def test_a_resumed_fog_tier_run_continues_as_if_uninterrupted(scenario_file, tmp_path) -> None:
    from fogsim.flower.server_app import RoundLoop
    from fogsim.study.results import RunWriter, read_csv
    from tests.topology.local import LocalGrid

    # DynHP's schedule fixed: by default it spreads over the run's rounds, 2 or 3 here
    sets = [*HIER, "topology.fogs=2", "topology.fog_rounds=2", "dynhp.participations=3"]
    whole, _, _ = run_local(load_scenario(scenario_file, sets), tmp_path / "whole")
    run_local(load_scenario(scenario_file, [*sets, "run.rounds=2"]), tmp_path / "cut")
    sc = load_scenario(scenario_file, sets)
    loop = RoundLoop(sc, build_fleet(sc.fleet, sc.run.seed), RunWriter(tmp_path / "cut"))
    loop.resume = True
    loop.run(LocalGrid(sc.simulation.flower_nodes))
    resumed = read_csv(tmp_path / "cut" / "rounds.csv")
    assert [r["round"] for r in resumed] == [1, 2, 3]
    for a, b in zip(whole, resumed, strict=True):
        assert {k: v for k, v in a.items() if k != "wall_s"} == {
            k: v for k, v in b.items() if k != "wall_s"
        }


def test_a_straggler_is_not_sampled_while_it_still_works(scenario_file, tmp_path) -> None:
    """A straggler (past ``deadline_s``) works on past its round's end: it is not
    sampled again before it finishes (it once was, its time and energy counted twice
    over the same simulated seconds)."""
    sets = ["simulation.deadline_s=0.055", "simulation.clients_per_round=12", "run.rounds=4"]
    rounds, nodes, _ = run_local(load_scenario(scenario_file, sets), tmp_path)
    start = {r["round"]: r["sim_clock_s"] for r in rounds}
    late = [n for n in nodes if n["status"] == "straggler"]
    busy = [(n["node"], start[n["round"]] + n["sim_time_s"], n["round"]) for n in late]
    assert any(done > start.get(r + 1, 0.0) for _, done, r in busy), "a case that matters"
    for node, done, r in busy:
        again = [n["round"] for n in nodes if n["node"] == node and n["round"] > r]
        assert all(start[a] >= done for a in again), (node, done, again, start)


def test_a_late_fogs_devices_are_not_sampled_while_its_round_runs(scenario_file, tmp_path) -> None:
    """The cloud moves on at ``cloud_deadline_s`` (its round lasting exactly that, not
    0.05499999999999999 s of float noise); a late fog's devices are still in its
    round (waiting for its slowest, charged idle until then): they once were sampled in
    the next cloud round all the same, their time and energy counted twice."""
    sets = [*HIER, "topology.assign='class'", IDEAL, "topology.cloud_deadline_s=0.055"]
    sets += ["simulation.clients_per_round=12", "run.rounds=3"]
    rounds, nodes, _ = run_local(load_scenario(scenario_file, sets), tmp_path)
    small = {r: {n["node"] for n in nodes if n["round"] == r and n["class"] == "small"}
             for r in (1, 2, 3)}  # fmt: skip
    assert small[1] and rounds[0]["stragglers_fog"] == 1, (small, rounds[0])
    at_deadline = [r["sim_time_s"] for r in rounds if r["stragglers_fog"]]
    assert len(at_deadline) >= 2 and set(at_deadline) == {0.055}, at_deadline  # not 0.05499..
    assert not small[1] & small[2], small  # still in their fog's round 1
