"""Fleets from a file: the user's inventory becomes the fleet, and a bad row is refused
naming its line and column (exit 2 from the CLI)."""

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fogsim.cli import app
from fogsim.data import partition
from fogsim.fleet import build_fleet
from fogsim.scenario import ScenarioError, load_scenario

SCENARIO = """
[run]
seed = 1
[fleet]
file = "inventory.csv"
[[fleet.classes]]
name = "sensor"
device = "esp32-s3"
radio = "lora"
[[fleet.classes]]
name = "gateway"
device = "raspberry-pi-4"
memory = "64MiB"
[simulation]
clients_per_round = 2
"""
HEADER = "id,class,device,memory,fog,region,data_share\n"
ROWS = """\
gw-1,gateway,,,,north,2
s-1,sensor,,1MiB,gw-1,north,
s-2,sensor,,512KiB,gw-1,north,0.5
pi-zero,,raspberry-pi-zero-2w,,gw-1,south,
cl-1,,jetson-orin-nano,,,south,4
"""


def write(tmp_path: Path, rows: str, scenario: str = SCENARIO) -> Path:
    (tmp_path / "inventory.csv").write_text(HEADER + rows)
    path = tmp_path / "sc.toml"
    path.write_text(scenario)
    return path


def test_the_inventory_becomes_the_fleet_in_file_order(tmp_path) -> None:
    sc = load_scenario(write(tmp_path, ROWS))
    assert sc.fleet.file == str(tmp_path / "inventory.csv")  # relative to the scenario
    assert sc.fleet.nodes == 5
    counts = {c.name: c.count for c in sc.fleet.classes}
    assert counts == {"sensor": 2, "gateway": 1, "raspberry-pi-zero-2w": 1, "jetson-orin-nano": 1}
    fleet = build_fleet(sc.fleet, sc.run.seed)
    assert fleet.ids == ["gw-1", "s-1", "s-2", "pi-zero", "cl-1"]
    assert [fleet.device(n).name for n in range(5)] == [
        "gateway",
        "sensor",
        "sensor",
        "raspberry-pi-zero-2w",
        "jetson-orin-nano",
    ]
    assert fleet.budgets.tolist() == [64 << 20, 1 << 20, 512 << 10, 192 << 20, 4 << 30]
    assert fleet.device(4).radio == "ethernet"  # a catalogue device's own radio
    assert fleet.file_rows is not None and fleet.file_rows[1] == {
        "fog": "gw-1",
        "region": "north",
        "data_share": 1.0,
    }
    assert sc.fleet.data_shares == [2.0, 1.0, 0.5, 1.0, 4.0]
    again = load_scenario(write(tmp_path, ROWS))  # the resolved scenario validates again
    assert again.model_dump() == type(sc).model_validate(sc.model_dump()).model_dump()


BAD = [
    # (rows, words the error must hold)
    ("gw-1,gateway,,,,,\ngw-1,sensor,,,,,\n", ["line 3, column 1 (id)", "'gw-1'", "line 2"]),
    ("x,,raspbery-pi-4,,,,\n", ["line 2, column 3 (device)", "did you mean 'raspberry-pi-4'"]),
    ("x,sensor,,12 parsecs,,,\n", ["line 2, column 4 (memory)", "'12 parsecs'", "unknown unit"]),
    ("x,sensor,esp32-s3,,,,\n", ["line 2, column 2 (class)", "device or class (both given)"]),
    ("x,,,,,,\n", ["line 2:", "give device or class (neither given)"]),
    ("x,sensr,,,,,\n", ["line 2, column 2 (class)", "'sensr' is not in fleet.classes", "sensor"]),
    ("x,sensor,,,y,,\n", ["line 2, column 5 (fog)", "'y' is no device's id"]),
    ("x,sensor,,,x,,\n", ["line 2, column 5 (fog)", "is the device itself"]),
    ("x,sensor,,,,,0\n", ["line 2, column 7 (data_share)", "> 0"]),
    (",sensor,,,,,\n", ["line 2, column 1 (id)", "blank"]),
    ("x,sensor,,,,\n", ["line 2:", "6 fields, but the header has 7"]),
]


@pytest.mark.parametrize(("rows", "words"), BAD, ids=[w[1] for _, w in BAD])
def test_a_bad_row_is_refused_naming_line_and_column(tmp_path, rows, words) -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario(write(tmp_path, rows))
    message = str(info.value)
    assert "fleet.file: " + str(tmp_path / "inventory.csv") in message, message
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("fleet.nodes=9", ["fleet.nodes: 9, but fleet.file lists 5"]),
        ("fleet.classes.0.share=0.5", ["fleet.classes.0.share", "leave out share and count"]),
        ("fleet.classes.0.count=7", ["fleet.classes.0.count: 7", "on 2 rows"]),
        ("data.partitioning='shards'", ["data.partitioning", "data_share", "'iid'"]),
        ("fleet.file='nowhere.csv'", ["fleet.file", "nowhere.csv: file not found"]),
    ],
)
def test_the_file_and_the_scenario_must_agree(tmp_path, override, words) -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario(write(tmp_path, ROWS), [override])
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_the_cli_exits_2_naming_the_row(tmp_path) -> None:
    path = write(tmp_path, ROWS + "s-9,sensor,,lots,,,\n")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert "line 7, column 4 (memory): 'lots'" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_data_shares_split_the_data_in_proportion() -> None:
    labels = np.repeat(np.arange(10), 100)
    parts = partition(labels, 3, "iid", seed=0, weights=[1.0, 2.0, 1.0])
    assert [len(p) for p in parts] == [250, 500, 250]
    assert len(np.unique(np.concatenate(parts))) == 1000  # each sample once
    tiny = partition(labels, 3, "iid", seed=0, weights=[1e-9, 1.0, 1.0])
    assert min(len(p) for p in tiny) == 1 and sum(len(p) for p in tiny) == 1000
    skewed = partition(labels, 40, "dirichlet", seed=0, alpha=1.0, weights=[4.0] * 20 + [1.0] * 20)
    heavy, light = sum(len(p) for p in skewed[:20]), sum(len(p) for p in skewed[20:])
    assert 2.5 < heavy / light < 6  # 4x the weight, about 4x the data
    with pytest.raises(ValueError, match="no weights"):
        partition(labels, 3, "shards", weights=[1.0, 1.0, 1.0])


def test_a_run_whose_fleet_file_changed_since_it_started_is_not_resumed(tmp_path) -> None:
    """The scenario names the fleet file by its path only: edited between a run and its
    resume, it once rebuilt another fleet under the same scenario, unnoticed. A run
    stores the file's digest (inputs.json) as it starts, and the resume is refused,
    naming the file; with the file as it was, it is not."""
    from fogsim.flower.server_app import make_server_app
    from fogsim.study.results import stored_scenario_changes

    path = write(tmp_path, ROWS)
    run_dir = tmp_path / "run"
    make_server_app(load_scenario(path), run_dir)  # what a run writes as it starts
    (run_dir / "rounds.csv").write_text("round,accuracy\n1,0.5\n")  # and its first round
    inventory = tmp_path / "inventory.csv"
    inventory.write_text(HEADER + ROWS.replace("s-2,sensor,,512KiB", "s-2,sensor,,256KiB"))
    for args in ([str(path)], []):  # with the scenario file, and with the run's own
        result = CliRunner().invoke(app, ["run", *args, "--out", str(run_dir), "--resume"])
        assert result.exit_code == 2, result.output
        said = " ".join(result.output.split())
        assert f"fleet.file {inventory} (its contents changed since the run started)" in said
    inventory.write_text(HEADER + ROWS)
    assert stored_scenario_changes(run_dir, load_scenario(path)) == []
