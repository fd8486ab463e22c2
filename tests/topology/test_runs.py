"""A fog tier and buffered rounds on Flower + Ray, through the CLI."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fogsim.cli import app
from fogsim.study.results import load

pytestmark = pytest.mark.slow  # real Flower + Ray runs

runner = CliRunner()


def run_cli(scenario: Path, out: Path, *sets: str) -> dict:
    args = ["run", str(scenario), "--out", str(out), "--quiet"]
    for s in sets:
        args += ["--set", s]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return load(out)


def test_a_fog_tier_running_fedbuff_on_ray(tiny_scenario: Path, tmp_path: Path) -> None:
    """FedBuff at each of 2 fogs, all fogs' windows in one exchange, over a cloud link:
    the fog tier and buffered rounds on Ray together (each alone, and their arithmetic,
    in process: test_hierarchy, test_buffered, test_fog_buffered)."""
    both = run_cli(
        tiny_scenario,
        tmp_path / "fog-buf",
        "topology.kind='hierarchical'",
        "topology.fogs=2",
        "topology.fog_rounds=2",
        "topology.aggregation='buffered'",
        "topology.buffer_size=2",
        "topology.concurrency=4",
        "topology.cloud_link={up_mbps=10, down_mbps=10, latency_ms=50}",
        "run.rounds=2",
    )
    rounds, nodes = both["rounds"], both["nodes"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["sampled"] == r["aggregated"] == 2 * 2 * 1 for r in rounds)
    assert {(n["fog"], n["fog_round"]) for n in nodes} == {(0, 1), (0, 2), (1, 1), (1, 2)}
    assert {n["staleness"] for n in nodes} <= {0, 1, 2, 3}
    assert all(r["cloud_bytes_down"] > 0 and r["cloud_bytes_up"] > 0 for r in rounds)
    assert all(r["sim_time_s"] > 2 * 0.05 for r in rounds), "down and up the cloud link"
    assert rounds[-1]["accuracy"] > 0.2
