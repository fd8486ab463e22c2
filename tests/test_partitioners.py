"""The split over nodes by Flower Datasets' partitioners (``partitioning = "flower"``):
what each partitioner promises holds on fogsim's nodes, fogsim fills in the fleet's
figures, the run's seed decides, and bad settings exit 2 naming the field."""

import warnings
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from flwr_datasets.partitioner import DirichletPartitioner
from typer.testing import CliRunner

from fogsim.cli import app
from fogsim.data import partition
from fogsim.datasets.partitioners import PartitionerError, flower_partition, known
from fogsim.scenario import ScenarioError, load_scenario
from fogsim.study.results import load
from tests.topology.local import run_local

runner = CliRunner()
LABELS = np.random.default_rng(0).integers(0, 10, 3000)


def classes(parts: list[np.ndarray], labels: np.ndarray = LABELS) -> list[int]:
    return [len(np.unique(labels[p])) for p in parts]


def test_iid_cuts_a_seeded_shuffle_into_equal_disjoint_parts() -> None:
    by_class = np.sort(LABELS)  # stored class after class, as some data sets are
    parts = partition(by_class, 30, "flower", seed=3, partitioner="IidPartitioner")
    together = np.concatenate(parts)
    assert sorted(together.tolist()) == list(range(3000)), "every sample once"
    assert {len(p) for p in parts} == {100}
    assert min(classes(parts, by_class)) == 10, "shuffled first, not a run of one class"
    again = partition(by_class, 30, "flower", seed=3, partitioner="IidPartitioner")
    other = partition(by_class, 30, "flower", seed=4, partitioner="IidPartitioner")
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    assert not np.array_equal(parts[0], other[0]), "the run's seed decides"


def test_pathological_gives_each_node_its_number_of_classes() -> None:
    parts = partition(
        LABELS,
        20,
        "flower",
        seed=1,
        partitioner="PathologicalPartitioner",
        partitioner_params={"num_classes_per_partition": 2},
    )
    assert max(classes(parts)) == 2 and min(len(p) for p in parts) > 0


def test_dirichlet_is_flower_datasets_own_split_of_the_shuffled_labels() -> None:
    """The very partition flwr-datasets gives on the labels in the seeded order."""
    parts = partition(
        LABELS,
        10,
        "flower",
        seed=5,
        partitioner="DirichletPartitioner",
        partitioner_params={"alpha": 0.3, "min_partition_size": 5},
    )
    order = np.random.default_rng(5).permutation(3000)
    theirs = DirichletPartitioner(10, "label", alpha=0.3, min_partition_size=5, seed=5)
    theirs.dataset = Dataset.from_dict({"label": LABELS[order]})
    for node, part in enumerate(parts):
        expected = theirs.load_partition(node)["label"]
        assert sorted(LABELS[part].tolist()) == sorted(expected), f"node {node}"
    skew = np.mean([np.bincount(LABELS[p], minlength=10).max() / len(p) for p in parts])
    assert skew > 0.3, "alpha 0.3 skews label mixes (IID would give ~0.13)"


def test_a_split_the_fleet_cannot_use_is_refused() -> None:
    with pytest.raises(PartitionerError, match="SizePartitioner makes 2 partitions"):
        flower_partition(LABELS, 5, "SizePartitioner", {"partition_sizes": [10, 20]}, 0)
    with pytest.raises(PartitionerError, match="leaves 29 of 200 nodes without samples"):
        flower_partition(
            LABELS, 200, "DirichletPartitioner", {"alpha": 0.05, "min_partition_size": 0}, 0
        )


def test_more_nodes_than_samples_is_said_so() -> None:
    """(IidPartitioner said only 'Index 3000 out of range'.)"""
    with pytest.raises(PartitionerError, match="fleet.nodes = 3001 exceeds the 3000 training"):
        flower_partition(LABELS, 3001, "IidPartitioner", {}, 0)


def test_a_partitioners_retries_warn_once_and_only_if_it_succeeds() -> None:
    """DirichletPartitioner warns on every attempt at min_partition_size: eleven warnings
    before its error once reached the user (here 200 fails, 150 takes two attempts)."""
    for size, warned in ((200, 0), (150, 1)):
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            try:
                params = {"alpha": 0.3, "min_partition_size": size}
                flower_partition(LABELS, 10, "DirichletPartitioner", params, 0)
            except PartitionerError as e:
                assert size == 200 and "max number of attempts" in str(e)
        assert len(said) == warned, [str(w.message) for w in said]


FLOWER = ["data.partitioning='flower'"]


@pytest.mark.parametrize(
    "sets, message",
    [
        (["data.partitioner='Nope'"], "partitioner = 'Nope': module 'flwr_datasets.partitioner'"),
        (
            ["data.partitioner='IidPartitioner'", "data.partitioner_params={alpha=1}"],
            "IidPartitioner takes no alpha; it takes num_partitions",
        ),
        (
            ["data.partitioner='IidPartitioner'", "data.partitioner_params={num_partitions=3}"],
            "num_partitions: set by fleet.nodes",
        ),
        (
            ["data.partitioner='PathologicalPartitioner'"],
            "PathologicalPartitioner needs num_classes_per_partition",
        ),
        ([], "partitioning 'flower' needs one"),
        (["data.partitioner='numpy:ndarray'"], "is not a flwr_datasets Partitioner"),
    ],
)
def test_bad_partitioner_settings_are_refused(tiny_scenario: Path, sets, message) -> None:
    with pytest.raises(ScenarioError, match=message):
        load_scenario(tiny_scenario, [*FLOWER, *sets])


def test_a_partitioner_without_flower_partitioning_is_refused(tiny_scenario: Path) -> None:
    with pytest.raises(ScenarioError, match="a partitioner goes with partitioning = 'flower'"):
        load_scenario(tiny_scenario, ["data.partitioner='IidPartitioner'"])


def test_a_split_that_fails_on_the_data_exits_2_at_validate(tiny_scenario: Path) -> None:
    sets = [
        *FLOWER,
        "data.partitioner='DirichletPartitioner'",
        "data.partitioner_params={alpha=0.3, min_partition_size=60000}",
    ]
    result = runner.invoke(
        app, ["validate", str(tiny_scenario), *[a for s in sets for a in ("--set", s)]]
    )
    assert result.exit_code == 2
    said = "".join(result.output.split("\n"))  # the message, whatever the terminal wraps
    assert f"{tiny_scenario}: data.partitioning = 'flower' over fleet.nodes = 10: " in said
    assert "DirichletPartitioner(" in said


def test_the_allowed_names_are_flower_datasets_row_partitioners() -> None:
    assert {"IidPartitioner", "DirichletPartitioner", "ShardPartitioner"} <= set(known())
    assert not [n for n in known() if n.startswith("Vertical")]


def test_a_run_split_by_a_flower_partitioner_in_process(tiny_scenario: Path, tmp_path) -> None:
    sc = load_scenario(
        tiny_scenario,
        [
            "data.dataset='digits'",
            *FLOWER,
            "data.partitioner='ShardPartitioner'",
            "data.partitioner_params={num_shards_per_partition=2, shard_size=50}",
        ],
    )
    run_local(sc, tmp_path / "out")
    nodes = load(tmp_path / "out")["rounds"]
    assert [r["round"] for r in nodes] == [1, 2] and nodes[-1]["accuracy"] > 0.15
