"""A ``[model] factory`` model trained end to end in this process (the real ClientApp
and round loop on Flower messages, ``tests/topology/local.py``): dense FedAvg, the
budget-aware ``fedavg-feasible``, a Flower strategy, and the sub-model strategies that
narrow it to each node's budget."""

from pathlib import Path

import numpy as np
import pytest

from fogsim.device.factory import FactoryArch
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


def test_the_arch_is_the_factory_model_at_any_widths(tmp_path: Path) -> None:
    _, sc = scenario(tmp_path)
    arch = sc.arch
    assert isinstance(arch, FactoryArch) and arch.widths == [6, 16, 120, 84]
    assert arch.output_names == ("11.weight", "11.bias")
    half = arch.scaled(0.5)
    assert half.widths == [3, 8, 60, 42] and arch.with_widths(arch.widths) == arch
    model = half.meta_model()  # the narrowed model itself: its arrays, its parameters
    assert half.num_params() == sum(p.numel() for p in model.parameters())
    assert model[0].out_channels == 3 and model[7].in_features == 8 * 5 * 5
    for kind in ("sgd", "sgd-momentum", "adam"):
        assert training_memory(half, 16, kind) < training_memory(arch, 16, kind)
        assert training_memory(half, 16, kind) < training_memory(half, 17, kind)
    budget = training_memory(half, 16, "sgd")
    assert max_batch_size(half, budget, "sgd") == 16
    with pytest.raises(ValueError, match="do not narrow"):
        arch.with_widths([7, 16, 120, 84])


@pytest.mark.parametrize(
    ("model", "strategy"),
    [("lenet5", "mask-union"), ("resnet_like", "mask-union"), ("lenet5", "heterofl"),
     ("resnet_like", "fedrolex")],
)  # fmt: skip
def test_sub_model_strategies_train_a_factory_model_narrowed_to_each_budget(
    tmp_path: Path, model: str, strategy: str
) -> None:
    """The small nodes cannot hold the dense model: they train a narrowed one within
    their budget (mask-union by DynHP pruning, heterofl/fedrolex a slice)."""
    # oneDNN pads a 1-channel 28x28 map 8x: even width 1 needs ~1 MB at batch 16
    _, sc = scenario(tmp_path, model, small="1536KiB", strategy=f'name = "{strategy}"')
    rounds, nodes, _ = run_local(sc, tmp_path / "out")
    assert len(rounds) == 3
    trained = [r for r in nodes if r["status"] == "ok"]
    dense = sc.arch.num_params()
    budget = {"big": 8 * 2**20, "small": 1536 * 2**10}
    for r in trained:
        assert int(r["peak_memory"]) <= budget[r["class"]] and int(r["over_budget"]) == 0
    small = [r for r in trained if r["class"] == "small"]
    assert small and all(int(r["params"]) < dense for r in small), small
    losses = [float(r["loss"]) for r in rounds]  # the global model learns
    assert losses[-1] < min(losses[0], np.log(10)), losses


@pytest.mark.parametrize("model", ["lenet5", "resnet_like"])
def test_fedavg_feasible_trains_a_factory_model(tmp_path: Path, model: str) -> None:
    # LeNet-5 at batch 32 with momentum needs ~3.3 MiB: the 1 MiB nodes sit out
    _, sc = scenario(tmp_path, model, strategy='name = "fedavg-feasible"')
    rounds, nodes, _ = run_local(sc, tmp_path / "out")
    assert len(rounds) == 3
    trained = [r for r in nodes if r["status"] == "ok"]
    assert trained and {r["class"] for r in trained} == {"big"}
    arch = sc.arch
    for r in trained:  # the reported peak is the modelled one, within the budget
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
