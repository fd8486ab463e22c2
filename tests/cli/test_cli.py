"""The CLI's non-running commands and its error paths (exit code 2, no traceback)."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fogsim import __version__
from fogsim.cli import app
from fogsim.data import load_dataset
from fogsim.device.centralized import model_path
from fogsim.device.models import model_from_state
from fogsim.fleet import build_fleet
from fogsim.scenario import load_scenario
from fogsim.strategies.build import build_strategy

runner = CliRunner()
SCENARIOS = Path(__file__).parents[2] / "scenarios"
CLASSES = ("cloudlet", "gateway", "router", "camera", "sensor")  # fleet5-digits-iid's


def test_version_and_help() -> None:
    assert __version__ in runner.invoke(app, ["--version"]).output
    for cmd in ("run", "validate", "scenarios"):
        result = runner.invoke(app, [cmd, "--help"])
        assert result.exit_code == 0 and "Example" in result.output


def test_scenarios_lists_quickstart() -> None:
    result = runner.invoke(app, ["scenarios"])
    assert result.exit_code == 0 and "quickstart" in result.output


def test_a_scenarios_description_is_its_first_sentence(monkeypatch) -> None:
    """The listing showed a description's first line only ("..., 40"), and Rich took
    "[model]" in it for markup and dropped it."""
    from fogsim.cli import common
    from fogsim.cli.validate import SCENARIO_DIR, description

    said = description(SCENARIO_DIR / "fleet5-mnist-lenet.toml")
    assert said.startswith("LeNet-5 (a [model] factory") and said.endswith("a user's kind.")
    monkeypatch.setattr(common.out, "width", 400)  # one line a row
    result = runner.invoke(app, ["scenarios"])
    assert said in result.output, result.output


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
        (["--dataset", "cifar"], "allowed: mnist, fashion-mnist, digits"),
        (["--model", "rnn"], "allowed: mlp, cnn"),
        (["--criterion", "x"], "allowed: taylor"),
        (["--budget", "10B"], "cannot hold even the narrowest model"),
        (["--dataset", "digits", "--model", "cnn"], "2 conv blocks on 8x8 digits images"),
        (["--target", "inf"], "--target inf: must be a finite number"),
        (["--lr", "nan"], "--lr nan: must be a finite number"),
        (["--seed", "-1"], "--seed"),
        (["--out", "."], "--out .: cannot write a file there"),
    ],
)
def test_dynhp_bad_options_exit_2_without_traceback(args: list[str], says: str) -> None:
    result = runner.invoke(app, ["dynhp", "--epochs", "1", *args])
    assert result.exit_code == 2 and says in result.output, result.output
    assert "Traceback" not in result.output


def test_dynhp_on_the_digits_trains_their_8x8_images_within_the_budget(tmp_path: Path) -> None:
    """The model is built for the data set's images (it was always 28x28: the digits'
    8x8 images crashed the first step); each epoch's step fits the budget, by the
    model and, where the heap counter builds, by the heap."""
    out = tmp_path / "dynhp.csv"
    args = ["--dataset", "digits", "--budget", "256KiB", "--epochs", "2", "--out", str(out)]
    result = runner.invoke(app, ["dynhp", *args])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 and float(rows[-1]["compression"]) >= 9.5, rows
    for row in rows:
        assert int(row["modelled_memory"]) <= 256 * 1024, row
        assert row["measured_memory"] == "" or int(row["measured_memory"]) <= 256 * 1024, row
    # the final model is saved beside the table: pruned, and scoring what the table says
    model = model_from_state(torch.load(model_path(out)), (1, 8, 8))
    assert sum(p.numel() for p in model.parameters()) == int(rows[-1]["params"])
    digits = load_dataset("digits")
    x, y = digits.tensors(digits.test_x, digits.test_y)
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert abs(accuracy - float(rows[-1]["accuracy"])) < 1e-4, (accuracy, rows[-1])


def test_resume_where_there_is_nothing_to_resume(tiny_scenario: Path, tmp_path: Path) -> None:
    for args in (["run", str(tiny_scenario)], ["run"]):
        result = runner.invoke(app, [*args, "--out", str(tmp_path / "typo"), "--resume"])
        assert result.exit_code == 2 and "nothing to resume" in result.output, result.output
    result = runner.invoke(app, ["run", "--resume"])
    assert result.exit_code == 2 and "needs --out" in result.output, result.output


def test_validate_checks_the_data_as_run_does(tiny_scenario: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["validate", str(tiny_scenario), "--set", f"data.path='{tmp_path}'"]
    )
    assert result.exit_code == 2 and "not found" in result.output, result.output


def test_error_words(tiny_scenario: Path) -> None:
    """Fields located, --set options named, close keys suggested, sizes readable."""
    cases = [
        ("simulation.clients_per_round=40", ["simulation.clients_per_round: 40 exceeds"]),
        ("train.learning_rate=0.1", ["train.learning_rate: unknown key; allowed: ", "lr"]),
        ("fleet.classes.0.memry='1MiB'", ["did you mean 'memory'?"]),
        ("fleet.classes.1.memory_max='128KiB'", ["memory_max: 128KiB is below memory 512KiB"]),
        ("strategy.name='x'", ["strategy.name: 'x' is unknown"]),
    ]
    for override, words in cases:
        result = runner.invoke(app, ["validate", str(tiny_scenario), "--set", override])
        assert result.exit_code == 2, result.output
        assert "(top level)" not in result.output, result.output
        for word in [*words, f"(from --set {override})"]:
            assert word in result.output, (word, result.output)
    result = runner.invoke(
        app, ["validate", str(tiny_scenario), "--set", "fleet.classes.0.memory=-1MiB"]
    )
    assert result.output.count("-1MiB") == 2, result.output  # the value once, the --set once


def test_run_prints_the_fleet_summary(tiny_scenario: Path, tmp_path: Path, monkeypatch) -> None:
    """Nodes that cannot train are said before the run, not only by validate."""
    import fogsim.flower.engine

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(fogsim.flower.engine, "simulate", stop)
    args = ["run", str(tiny_scenario), "--out", str(tmp_path / "o")]
    result = runner.invoke(app, [*args, "--set", "fleet.classes.1.memory='1KiB'"])
    assert isinstance(result.exception, Stop), result.output
    assert "fleet: 10 nodes" in result.output
    assert "warning: 6 node(s) can train no model and sit out the whole run (6 of 'small')" in (
        result.output
    )


def test_the_cli_loads_matplotlib_only_to_draw() -> None:
    """``fogsim run``'s driver stays light: matplotlib (~30 MB) is imported by the
    commands that draw, not by importing the CLI."""
    import subprocess
    import sys

    code = "import sys, fogsim.cli; print('matplotlib' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_dynhp_refused_at_its_start_leaves_an_earlier_file_alone(tmp_path: Path) -> None:
    """The CSV is opened with its first row: a budget that holds no model (exit 2)
    once emptied the results of the run before."""
    out = tmp_path / "dynhp.csv"
    out.write_text("epoch,accuracy\n1,0.9\n")
    result = runner.invoke(app, ["dynhp", "--dataset", "digits", "--budget", "1KiB",
                                 "--out", str(out)])  # fmt: skip
    assert result.exit_code == 2 and "cannot hold" in result.output, result.output
    assert out.read_text() == "epoch,accuracy\n1,0.9\n"


def test_dynhp_without_dynamic_batches_keeps_its_first_batch(tmp_path: Path) -> None:
    """``--no-dynamic-batch`` trains every epoch at the first epoch's batch (each epoch
    once chose its batch from the budget again: 16, 16, then 54, where the shrunk model
    fits a bigger one, as a dynamic batch does). ``--no-measure``: no heap measurement
    (a fresh process an epoch, most of this test's time once), the column blank."""
    out = tmp_path / "static.csv"
    args = ["--dataset", "digits", "--epochs", "3", "--out", str(out), "--no-dynamic-batch"]
    result = runner.invoke(app, ["dynhp", *args, "--no-measure"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert [int(r["batch_size"]) for r in rows] == [16, 16, 16]
    assert [r["measured_memory"] for r in rows] == ["", "", ""]


STRATEGY_ROWS = ("mask-union", "heterofl", "fedavg-feasible", "fedavg")


def test_the_fleet_table_follows_the_strategy(monkeypatch) -> None:
    """A strategy that trains only the dense model (fedavg-feasible, a Flower plug-in)
    was shown the sub-models a budget could train and "cannot train 0" while the
    nodes below the dense model sat out; fedavg (dense) trains it over budget."""
    from fogsim.cli import common

    monkeypatch.setattr(common.out, "width", 300)  # one line a row
    sets = {name: [f"strategy.name='{name}'"] for name in STRATEGY_ROWS}
    sets["mask-union-own"] = ["strategy.name='mask-union'", "strategy.params.masks='own'"]
    rows = {}
    for name, chosen in sets.items():
        args = ["validate", "fleet5-digits-iid", *(a for s in chosen for a in ("--set", s))]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        rows[name] = {c: next(line for line in lines if f"│ {c}" in line) for c in CLASSES}
    # a sub-model strategy's rows show the widths the strategy gives each class's
    # smallest node: with own masks (DynHP prunes) mask-union's, beside DynHP's arrays,
    # narrower than HeteroFL's; by default (it cannot prune, holds none) HeteroFL's (the
    # table once showed mask-union HeteroFL's widths, and sensors training while none did)
    for name in ("mask-union", "mask-union-own", "heterofl"):
        sc = load_scenario(str(SCENARIOS / "fleet5-digits-iid.toml"), sets[name])
        strategy = build_strategy(sc, build_fleet(sc.fleet, sc.run.seed))
        for i, c in enumerate(CLASSES):
            nodes = np.flatnonzero(strategy.fleet.node_class == i)
            f = strategy.width_fraction(int(nodes[np.argmin(strategy.fleet.budgets[nodes])]))
            shown = f"{f:.0%} " + "x".join(map(str, sc.arch.scaled(f).widths))
            assert shown in rows[name][c] and rows[name][c].rstrip(" │").endswith("0"), shown
    assert "18x6" in rows["mask-union-own"]["sensor"]
    assert "22x8" in rows["mask-union"]["sensor"] and "22x8" in rows["heterofl"]["sensor"]
    rows = {name: by_class["gateway"] for name, by_class in rows.items()}
    assert "none" in rows["fedavg-feasible"]
    assert "6 (the dense model needs 670.3KiB)" in rows["fedavg-feasible"]
    assert "100% 300x100, over budget" in rows["fedavg"]
