"""A ``[model] factory`` model trained end to end in this process (the real ClientApp
and round loop on Flower messages, ``tests/topology/local.py``): dense FedAvg, the
budget-aware ``fedavg-feasible`` and a Flower strategy; memory from the heap table."""

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fogsim.cli import app
from fogsim.device.factory import FactoryArch, interpolate
from fogsim.device.memory import max_batch_size, training_memory
from fogsim.scenario import load_scenario
from tests.topology.local import run_local

SCENARIO = """
[run]
name = "factory"
seed = 3
rounds = 3

[data]
partitioning = "draws"
samples_per_node = 96

[model]
factory = "tests.example_models:{model}"

[train]
lr = 0.1
momentum = 0.5
batch_size = 32

[fleet]
nodes = 6

[[fleet.classes]]
name = "big"
count = 3
memory = "8MiB"

[[fleet.classes]]
name = "small"
share = 1.0
memory = "{small}"

[strategy]
{strategy}

[simulation]
clients_per_round = 4
evaluate_clients = 2
device_eval_nodes = 1
device_eval_samples = 200
"""


def scenario(tmp_path: Path, model="lenet5", small="1MiB", strategy='name = "fedavg"', sets=()):
    path = tmp_path / "factory.toml"
    path.write_text(SCENARIO.format(model=model, small=small, strategy=strategy))
    return path, load_scenario(path, list(sets))


def test_the_arch_is_the_factory_model_with_its_measured_memory(tmp_path: Path) -> None:
    _, sc = scenario(tmp_path)
    arch = sc.arch
    assert isinstance(arch, FactoryArch) and arch.widths == [6, 16, 120, 84]
    assert [b for b, _ in arch.table] == [1, 2, 4, 8, 16, 32]
    assert arch.output_names == ("11.weight", "11.bias")
    m = dict(arch.table)
    assert training_memory(arch, 32, "sgd-momentum") == interpolate(arch.table, 32)
    assert m[32] < training_memory(arch, 32, "sgd-momentum") <= 1.02 * m[32] + 1
    budget = (m[8] + m[16]) // 2  # between batch 8 and 16
    assert 8 <= max_batch_size(arch, budget, "sgd-momentum", cap=32) < 16
    with pytest.raises(ValueError, match="measured for batches 1..32"):
        training_memory(arch, 33, "sgd-momentum")


@pytest.mark.parametrize(
    ("sets", "says"),
    [
        (["strategy.name='mask-union'"], ["strategy.name", "mask-union", "fedavg-feasible"]),
        (["strategy.name='heterofl'"], ["strategy.name", "heterofl", "strategy.flower"]),
    ],
)
def test_narrowing_strategies_are_refused_at_validate(tmp_path: Path, sets, says) -> None:
    path, _ = scenario(tmp_path)
    result = CliRunner().invoke(app, ["validate", str(path), *[f"--set={s}" for s in sets]])
    assert result.exit_code == 2, result.output
    assert all(s in result.output for s in says), result.output


def test_validate_accepts_a_dense_strategy(tmp_path: Path) -> None:
    path, _ = scenario(tmp_path)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("model", ["lenet5", "resnet_like"])
def test_fedavg_feasible_trains_a_factory_model(tmp_path: Path, model: str) -> None:
    # LeNet-5 at batch 32 with momentum needs ~3.3 MiB: the 1 MiB nodes sit out
    _, sc = scenario(tmp_path, model, strategy='name = "fedavg-feasible"')
    rounds, nodes, _ = run_local(sc, tmp_path / "out")
    assert len(rounds) == 3
    trained = [r for r in nodes if r["status"] == "ok"]
    assert trained and {r["class"] for r in trained} == {"big"}
    arch = sc.arch
    for r in trained:  # the reported peak is the measured table's, within the budget
        assert int(r["peak_memory"]) == training_memory(arch, int(r["batch_size"]), "sgd-momentum")
        assert int(r["peak_memory"]) <= 8 * 2**20 and int(r["over_budget"]) == 0
    losses = [float(r["loss"]) for r in rounds]  # the global model learns
    assert losses[-1] < min(losses[0], np.log(10)), losses


def test_dense_fedavg_trains_over_budget_and_says_so(tmp_path: Path) -> None:
    _, sc = scenario(tmp_path, small="512KiB")
    _, nodes, _ = run_local(sc, tmp_path / "out")
    small = [r for r in nodes if r["class"] == "small" and r["status"] == "ok"]
    assert small and all(int(r["over_budget"]) == 1 for r in small)


def test_a_flower_strategy_trains_a_factory_model(tmp_path: Path) -> None:
    flower = 'flower = "flwr.serverapp.strategy:FedAvg"'
    _, sc = scenario(tmp_path, "resnet_like", strategy=flower)
    rounds, nodes, _ = run_local(sc, tmp_path / "out")
    assert len(rounds) == 3 and any(r["status"] == "ok" for r in nodes)
    state = (
        np.load(tmp_path / "out" / "model.npz")
        if (tmp_path / "out" / "model.npz").exists()
        else None
    )
    if state is not None:  # batch norm statistics travel with the model
        assert any("running_mean" in k for k in state.files)
