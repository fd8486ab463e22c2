"""report and compare against simulated time and cloud-link bytes, with time to a
target, on a flat run and a fog tier run of the same fleet."""

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fogsim.cli import app
from fogsim.scenario import load_scenario
from fogsim.study.compare import run_metrics
from fogsim.study.results import read_csv
from tests.topology.local import SCENARIO, run_local

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("runs")
    (d / "s.toml").write_text(SCENARIO)
    run_local(load_scenario(d / "s.toml", ["run.rounds=4"]), d / "flat")
    fog = ["topology.kind='hierarchical'", "topology.fogs=3", "topology.fog_rounds=2"]
    run_local(load_scenario(d / "s.toml", ["run.rounds=2", *fog]), d / "fog")
    return d / "flat", d / "fog"


def by_hand(run_dir: Path, target: float) -> tuple[float, float] | None:
    """(simulated s, cloud bytes) to the first round at ``target``, from rounds.csv."""
    rounds = read_csv(run_dir / "rounds.csv")
    cloud = 0
    for r in rounds:
        cloud += r["cloud_bytes"]
        if r["accuracy"] >= target:
            return r["sim_clock_s"] + r["sim_time_s"] - rounds[0]["sim_clock_s"], cloud
    return None


def test_compare_gives_time_and_cloud_bytes_to_target(runs, tmp_path) -> None:
    flat, fog = runs
    target = min(read_csv(flat / "rounds.csv")[-1]["accuracy"], 0.5)
    for run_dir in runs:
        m = run_metrics(run_dir, target)
        expected = by_hand(run_dir, target)
        if expected is None:
            assert m["time_to_target_s"] is None and m["cloud_bytes_to_target"] is None
        else:
            assert m["time_to_target_s"] == pytest.approx(expected[0])
            assert m["cloud_bytes_to_target"] == expected[1]
        total = sum(r["cloud_bytes"] for r in read_csv(run_dir / "rounds.csv"))
        assert m["total_cloud_bytes"] == total
    result = runner.invoke(
        app, ["compare", str(flat), str(fog), "--target", str(target), "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "compare_cloud.png").stat().st_size > 1000
    header = (tmp_path / "compare.csv").read_text().splitlines()[0]
    assert "cloud_bytes_to_target" in header and "time_to_target_s" in header


def test_report_plots_accuracy_against_time_and_cloud_bytes(runs) -> None:
    flat, _ = runs
    target = read_csv(flat / "rounds.csv")[-1]["accuracy"]
    result = runner.invoke(app, ["report", str(flat), "--target", str(target)])
    assert result.exit_code == 0, result.output
    md = (flat / "report.md").read_text()
    assert "](accuracy_time_cloud.png)" in md
    assert (flat / "accuracy_time_cloud.png").stat().st_size > 1000
    t, cloud = by_hand(flat, target)
    said = re.search(r"after (\S+) s on the simulated clock, (\S+) MiB on the cloud link", md)
    assert said and float(said[2]) == round(cloud / 2**20, 2), md
    assert float(said[1]) == pytest.approx(t, rel=0.005), md  # 3 significant digits
    runner.invoke(app, ["report", str(flat), "--target", "0.999"])
    assert "Test accuracy 0.999 not reached." in (flat / "report.md").read_text()
