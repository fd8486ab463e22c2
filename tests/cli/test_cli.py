"""The CLI's non-running commands and its error paths (exit code 2, no traceback)."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fogsim import __version__
from fogsim.cli import app

runner = CliRunner()


def test_version_and_help() -> None:
    assert __version__ in runner.invoke(app, ["--version"]).output
    for cmd in ("run", "validate", "scenarios"):
        result = runner.invoke(app, [cmd, "--help"])
        assert result.exit_code == 0 and "Example" in result.output


def test_scenarios_lists_quickstart() -> None:
    result = runner.invoke(app, ["scenarios"])
    assert result.exit_code == 0 and "quickstart" in result.output


def test_validate_prints_fleet(tiny_scenario: Path) -> None:
    result = runner.invoke(app, ["validate", str(tiny_scenario), "--set", "fleet.nodes=20"])
    assert result.exit_code == 0, result.output
    assert "20 nodes" in result.output and "512KiB" in result.output
    assert "small" in result.output and "16" in result.output  # 20 - 4 big nodes


def test_bad_input_exits_2_without_traceback(tiny_scenario: Path, tmp_path: Path) -> None:
    cases = [
        ["validate", str(tiny_scenario), "--set", "run.rounds=0"],
        ["validate", str(tmp_path / "missing.toml")],
        ["run", str(tiny_scenario), "--set", "data.dataset=imagenet"],
        ["run", str(tiny_scenario), "--set", "data.path='/nonexistent'"],
        ["run", str(tiny_scenario), "--out", str(tiny_scenario)],
    ]
    for args in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "error:" in result.output and "Traceback" not in result.output


def test_run_refuses_existing_run(tiny_scenario: Path, tmp_path: Path) -> None:
    (tmp_path / "rounds.csv").write_text("round\n1\n")
    result = runner.invoke(app, ["run", str(tiny_scenario), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--overwrite" in result.output


@pytest.mark.parametrize(
    "args, says",
    [
        (["--budget", "12parsecs"], "--budget '12parsecs'"),
        (["--dataset", "cifar"], "allowed: mnist, fashion-mnist"),
        (["--model", "rnn"], "allowed: mlp, cnn"),
        (["--criterion", "x"], "allowed: taylor"),
        (["--budget", "10B"], "cannot hold even the narrowest model"),
    ],
)
def test_dynhp_bad_options_exit_2_without_traceback(args: list[str], says: str) -> None:
    result = runner.invoke(app, ["dynhp", "--epochs", "1", *args])
    assert result.exit_code == 2 and says in result.output, result.output
    assert "Traceback" not in result.output
