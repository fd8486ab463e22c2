"""A real Flower + Ray simulation from a scenario file, driven through the CLI."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fogsim.cli import app
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
