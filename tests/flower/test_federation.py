"""A real Flower + Ray simulation from a scenario file, driven through the CLI."""

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fogsim.cli import app
from fogsim.data import read_dataset
from fogsim.scenario import load_scenario
from fogsim.study.results import load

pytestmark = pytest.mark.slow  # real Flower + Ray runs

runner = CliRunner()
VOLATILE = {"wall_s", "time_s"}  # wall-clock columns differ between runs


def run_cli(scenario: Path, out: Path, *extra: str):
    result = runner.invoke(app, ["run", str(scenario), "--out", str(out), "--quiet", *extra])
    assert result.exit_code == 0, result.output
    return load(out)


def strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def test_ray_simulation_writes_results_and_is_seeded(tiny_scenario: Path, tmp_path: Path) -> None:
    first = run_cli(tiny_scenario, tmp_path / "a")
    rounds, nodes = first["rounds"], first["nodes"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[-1]["accuracy"] > 0.5, "well above chance (0.1) after training"
    assert all(r["sampled"] == 4 and r["aggregated"] == 4 and r["failed"] == 0 for r in rounds)
    assert all(n["status"] == "ok" for n in nodes)
    assert 0 < rounds[-1]["client_accuracy"] <= 1
    dense_bytes = (784 * 64 + 64 + 64 * 32 + 32 + 32 * 10 + 10) * 4
    assert all(r["bytes_up"] == r["bytes_down"] == 4 * dense_bytes for r in rounds)
    # simulated time: slowest client's download + 6 * MACs * samples / FLOP/s + upload
    macs = dense_bytes // 4 - (64 + 32 + 10)
    for r in rounds:
        mine = [n for n in nodes if n["round"] == r["round"]]
        assert r["sim_time_s"] == max(n["sim_time_s"] for n in mine)
        for n in mine:
            assert n["train_flops"] == 6 * macs * n["num_examples"]
            link = n["bytes_down"] * 8 / 50e6 + n["bytes_up"] * 8 / 10e6
            assert abs(n["sim_time_s"] - link - n["train_flops"] / 1e9) < 1e-9
    assert len(nodes) == 8 and {n["class"] for n in nodes} <= {"big", "small"}
    fleet = {row["node"]: row for row in first["fleet"]}
    assert all(fleet[n["node"]]["class"] == n["class"] for n in nodes)
    assert sum(n["num_examples"] for n in nodes[:4]) > 1000
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["final_accuracy"] == rounds[-1]["accuracy"]
    assert (tmp_path / "a" / "model.pt").stat().st_size > 4 * 50_000
    assert first["scenario"]["run"]["name"] == "tiny"

    second = run_cli(tiny_scenario, tmp_path / "b")
    assert strip(second["rounds"]) == strip(rounds), "same scenario + seed, same metrics"
    assert strip(second["nodes"]) == strip(nodes)

    # the local Ray cluster (gcs_server, raylet, ...) was started by this process
    left = subprocess.run(["pgrep", "-a", "-P", str(os.getpid())], capture_output=True, text=True)
    assert left.stdout == "", f"processes left behind: {left.stdout}"


DEVICES_TOML = """
[run]
name = "field"
seed = 7
rounds = 3

[model]
hidden = [64, 32]

[train]
lr = 0.1

[fleet]
file = "fleet.csv"
trace = "trace.csv"

[[fleet.classes]]
name = "small"
device = "esp32-s3"
radio = "lora"

[[fleet.classes]]
name = "big"
device = "raspberry-pi-4"
memory = "8MiB"

[strategy]
name = "mask-union"

[simulation]
clients_per_round = 5
round_interval_s = 600
"""
FLEET = "id,class,memory,data_share\n" + "".join(
    f"gw{i},big,,2\n" if i < 4 else f"s{i},small,512KiB,1\n" for i in range(10)
)
# the sensors leave 100 s into round 1; the gateways' window closes at 50 s, after
# their update is in, while they wait for the round to end (not charged idle after it)
TRACE = "class,start_s,end_s\nsmall,0,100\nbig,0,50\nbig,600,100000\n"


def test_a_field_of_catalogue_devices_with_a_trace(tmp_path: Path) -> None:
    """Catalogue classes, a fleet file and a trace in a real run: energy per node-round
    as the energy model computes it from the node's own row, rounds on the clock, and
    nodes whose window closes mid-round departing with their update lost."""
    from fogsim.hardware.energy import node_energy, timeline
    from fogsim.scenario import DeviceClass

    for name, text in (("sc.toml", DEVICES_TOML), ("fleet.csv", FLEET), ("trace.csv", TRACE)):
        (tmp_path / name).write_text(text)
    run = run_cli(tmp_path / "sc.toml", tmp_path / "out")
    rounds, nodes, fleet = run["rounds"], run["nodes"], run["fleet"]
    ids = [f"gw{i}" for i in range(4)] + [f"s{i}" for i in range(4, 10)]
    assert [f["id"] for f in fleet] == ids and [f["node"] for f in fleet] == list(range(10))
    assert [f["data_share"] for f in fleet] == [2.0] * 4 + [1.0] * 6
    examples = {n["class"]: n["num_examples"] for n in nodes}  # the clients' own split
    assert 1.9 < examples["big"] / examples["small"] < 2.1, examples
    assert [r["sim_clock_s"] for r in rounds] == [0.0, 600.0, 1200.0]  # a round every 10 min
    first = [n for n in nodes if n["round"] == 1]
    gone = [n for n in first if n["class"] == "small"]
    assert gone and all(n["status"] == "departed" and n["departed_s"] == 100.0 for n in gone)
    assert rounds[0]["departed"] == len(gone)
    assert rounds[0]["aggregated"] == len(first) - len(gone)
    assert all(n["class"] == "big" for n in nodes if n["round"] > 1), "sensors are off after 100 s"
    assert [r["up_small"] for r in rounds] == [6, 0, 0]
    for n in nodes:  # each row's energy, from the row's own bytes and FLOPs
        row = fleet[n["node"]]
        dev = DeviceClass(name="x", count=1, memory=1, **{k: row[k] for k in FIGURES})
        tl = timeline(dev, n["bytes_down"], n["bytes_up"], n["train_flops"])
        assert n["sim_time_s"] == pytest.approx(tl.total_s)
        r = rounds[n["round"] - 1]
        closes = 50.0 if (n["class"], n["round"]) == ("big", 1) else math.inf
        wait = 0.0 if n["status"] == "departed" else min(r["sim_time_s"], closes) - tl.total_s
        stop = n["departed_s"] if n["status"] == "departed" else None
        e = node_energy(dev, tl, n["bytes_down"], n["bytes_up"], wait_s=wait, stop_s=stop)
        assert e is not None and n["energy_j"] == pytest.approx(e.total_j)
    for r in rounds:
        mine = [n["energy_j"] for n in nodes if n["round"] == r["round"]]
        assert r["energy_j"] == pytest.approx(sum(mine))
        assert r["energy_j"] == pytest.approx(r["energy_j_big"] + r["energy_j_small"])
    result = runner.invoke(app, ["report", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    for png in ("energy.png", "availability.png"):
        assert (tmp_path / "out" / png).stat().st_size > 1000


FIGURES = ("flops", "up_mbps", "down_mbps", "latency_ms", "active_w", "idle_w")
FIGURES += ("tx_j_per_byte", "rx_j_per_byte", "connect_j")


def test_a_run_says_when_its_validation_samples_are_few(
    tiny_scenario: Path, tmp_path: Path
) -> None:
    """``draws`` over a fleet that covers its data leave few samples no node trains on
    (3 for 10,000 nodes of 60 MNIST images): summary.json counts them and the run says
    so, rather than quote devices' validation accuracy on a handful of images."""
    sets = ["data.dataset='digits'", "data.partitioning='draws'", "data.samples_per_node=600"]
    args = ["run", str(tiny_scenario), "--out", str(tmp_path / "run")]
    result = runner.invoke(app, [*args, *(x for s in sets for x in ("--set", s))])
    assert result.exit_code == 0, result.output
    sc = load_scenario(tiny_scenario, sets)
    labels = read_dataset(sc.data.dataset, sc.data.path).train_y
    pooled = sc.data.validation(labels, sc.fleet.nodes, sc.run.seed, sc.fleet.data_shares, 10_000)
    assert 0 < len(pooled) < 50, len(pooled)  # the case is one of few
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["validation_samples"] == len(pooled)
    assert f"rests on {len(pooled)} validation sample(s)" in " ".join(result.output.split())
