import os
from pathlib import Path

import pytest

from fogsim.checks import load_checked
from fogsim.fleet import build_fleet, class_counts
from fogsim.scenario import ScenarioError, load_scenario
from fogsim.units import parse_bytes
from tests.conftest import ROOT


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios").glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_scenarios_are_valid(path: Path) -> None:
    sc = load_checked(path)
    assert sc.run.rounds >= 1
    assert sum(build_fleet(sc.fleet, sc.run.seed).counts().values()) == sc.fleet.nodes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("256KiB", 256 * 1024),
        ("4MiB", 4 * 2**20),
        ("1.5MB", 1_500_000),
        (2048, 2048),
        ("1e3", 1000),
    ],
)
def test_parse_bytes(text, expected) -> None:
    assert parse_bytes(text) == expected


BAD = [
    # (override, words the error must contain)
    ("run.rounds=0", ["run.rounds", "greater than or equal to 1", "got 0"]),
    ("run.seed='x'", ["run.seed", "integer", "'x'"]),
    (
        "data.dataset=cifar",
        ["data.dataset", "'mnist', 'fashion-mnist', 'digits', 'npz', 'images' or 'hf'", "cifar"],
    ),
    # a list where a name goes once crashed the shape lookup (unhashable) before this
    ("data.dataset=[]", ["data.dataset", "'mnist', 'fashion-mnist'", "got []"]),
    ("data.partitioning=zipf", ["data.partitioning", "iid", "dirichlet", "zipf"]),
    ("data.alpha=-1", ["data.alpha", "greater than 0"]),
    ("model.depth=3", ["model.depth", "unknown key"]),
    ("nonsense.key=1", ["nonsense", "unknown key"]),
    ("fleet.classes.0.memory=-5MiB", ["fleet.classes.0.memory", "size"]),
    ("fleet.classes.0.memory='lots'", ["fleet.classes.0.memory", "256KiB", "lots"]),
    ("fleet.classes.0.memory='4 parsecs'", ["fleet.classes.0.memory", "unknown unit"]),
    ("fleet.classes.0.count=20", ["counts sum to", "nodes = 10"]),
    ("fleet.classes=[]", ["fleet.classes", "at least 1"]),
    ("strategy.name=fedmagic", ["strategy.name", "fedmagic", "allowed", "fedavg"]),
    ("simulation.clients_per_round=11", ["simulation.clients_per_round: 11", "fleet.nodes = 10"]),
    ("train.optimizer=lbfgs", ["train.optimizer", "'sgd' or 'adam'"]),
    ("train.lr=0", ["train.lr", "greater than 0"]),
]


@pytest.mark.parametrize(("override", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_names_file_field_and_allowed(tiny_scenario, override, words) -> None:
    with pytest.raises(ScenarioError) as info:
        load_checked(tiny_scenario, [override])
    message = str(info.value)
    assert str(tiny_scenario) in message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="not found"):
        load_scenario(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nname=")
    with pytest.raises(ScenarioError, match="TOML syntax error"):
        load_scenario(bad)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ScenarioError, match="not UTF-8"):
        load_scenario(binary)


def test_overrides_reach_nested_lists(tiny_scenario) -> None:
    sc = load_scenario(tiny_scenario, ["fleet.classes.1.memory=2MiB", "train.lr=0.3", "run.name=x"])
    assert sc.fleet.classes[1].memory == 2 * 2**20
    assert sc.train.lr == 0.3 and sc.run.name == "x"
    with pytest.raises(ScenarioError, match="not an index"):
        load_scenario(tiny_scenario, ["fleet.classes.5.memory=2MiB"])
    with pytest.raises(ScenarioError, match="section.key=value"):
        load_scenario(tiny_scenario, ["justakey"])


def test_none_unsets_a_field_that_may_be_unset(tiny_scenario) -> None:
    """TOML has no null: ``"none"`` unsets a field whose default is a value (all
    devices evaluated each round, all of a round in flight), and is refused, naming
    the field, where a value is required."""
    sets = ["simulation.device_eval_nodes=none", "simulation.device_eval_samples='None'"]
    sc = load_scenario(tiny_scenario, [*sets, "simulation.max_in_flight=none"])
    assert sc.simulation.device_eval_nodes is None
    assert sc.simulation.device_eval_samples is None
    assert sc.simulation.max_in_flight is None
    with pytest.raises(ScenarioError, match="train.lr.*got 'none'"):
        load_scenario(tiny_scenario, ["train.lr=none"])
    # a catalogue device's radio, unset (it was looked up in the catalogue as 'none')
    phone = ["fleet.classes.0.device='phone'", "fleet.classes.0.radio=none"]
    sc = load_scenario(tiny_scenario, phone)
    assert sc.fleet.classes[0].device == "phone" and sc.fleet.classes[0].radio is None
    assert sc.fleet.classes[0].tx_j_per_byte is None  # no radio figures
    plain = load_scenario(tiny_scenario, [*phone[:1], "fleet.classes.0.device=none"])
    assert plain.fleet.classes[0].device is None


def test_fleet_counts_and_seeded_assignment(tiny_scenario) -> None:
    sc = load_scenario(tiny_scenario)
    assert class_counts(sc.fleet) == [4, 6]
    a, b = build_fleet(sc.fleet, 1), build_fleet(sc.fleet, 1)
    assert (a.node_class == b.node_class).all()
    assert a.counts() == {"big": 4, "small": 6}
    assert (a.budgets[a.node_class == 1] == 512 * 1024).all(), "a fixed budget is exact"
    spread = load_scenario(tiny_scenario, ["fleet.classes.1.memory_max='16MiB'"])
    budgets = build_fleet(spread.fleet, 0).budgets[a.node_class == 1]
    assert budgets.min() >= 512 * 1024 and budgets.max() <= 16 * 2**20
    assert len(set(budgets.tolist())) == len(budgets)
    sc3 = load_scenario(tiny_scenario, ["fleet.nodes=7", "fleet.classes.0.count=0"])
    assert build_fleet(sc3.fleet, 0).counts() == {"big": 0, "small": 7}


def test_availability_drops_nodes(tiny_scenario) -> None:
    import numpy as np

    sc = load_scenario(tiny_scenario, ["fleet.nodes=1000", "fleet.classes.1.availability=0.5"])
    fleet = build_fleet(sc.fleet, 0)
    up = fleet.available(np.random.default_rng(1))
    small_up = int((fleet.node_class[up] == 1).sum())
    assert (fleet.node_class[up] == 0).sum() == 4  # "big" is always up
    assert 400 < small_up < 600  # about half of 996


def test_checking_the_data_keeps_none_of_it_in_the_driver(tiny_scenario) -> None:
    """The driver reads the data set to check it and then drops it: a run's client
    workers hold their own copies, and the driver would otherwise keep all of it."""
    from fogsim.checks import check_data
    from fogsim.data import load_dataset

    load_dataset.cache_clear()
    check_data(load_checked(tiny_scenario))
    assert load_dataset.cache_info().currsize == 0


@pytest.mark.skipif(
    __import__("platform").machine().lower() not in ("x86_64", "amd64"), reason="x86 only"
)
def test_importing_fogsim_pins_torch_kernels_to_avx2_unless_the_user_chose() -> None:
    """Runs reproduce across x86 hosts only with the same kernels (fogsim/__init__.py)."""
    import subprocess
    import sys

    probe = "import fogsim, torch; print(torch.backends.cpu.get_cpu_capability())"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
    }
    pinned = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert pinned.stdout.strip() == "AVX2", pinned.stderr
    env["ATEN_CPU_CAPABILITY"] = "default"
    chosen = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert chosen.stdout.strip() == "DEFAULT", chosen.stderr
