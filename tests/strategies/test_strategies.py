"""Sub-model strategies: aggregation math on hand-made replies, extraction within
budgets, and a run of every strategy (one on Flower + Ray)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity
from typer.testing import CliRunner

from fogsim.cli import app
from fogsim.device.arch import Arch
from fogsim.device.memory import training_memory, widest_fraction
from fogsim.device.models import FogNet
from fogsim.device.pruning import extract_submodel, full_kept
from fogsim.fleet import build_fleet
from fogsim.flower import cohort
from fogsim.flower.wire import pack_kept
from fogsim.scenario import load_scenario
from fogsim.strategies import STRATEGIES
from fogsim.study.results import load
from tests.topology.local import run_local

WIDTHS = (6, 4)  # a small MLP 784-6-4-10


@pytest.fixture(autouse=True)
def task_identity():
    """Messages need Flower's task identity, which a simulation sets for real."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1


@pytest.fixture
def strategy(tiny_scenario):
    sc = load_scenario(tiny_scenario, ["model.hidden=[6, 4]", "strategy.name='mask-union'"])
    s = STRATEGIES["mask-union"](sc, build_fleet(sc.fleet, 0))
    torch.manual_seed(0)
    s.global_state = {k: v.numpy().copy() for k, v in FogNet((), WIDTHS).state_dict().items()}
    return s


def reply(state: dict, kept, n: int, node: int = 0, with_kept: bool = True) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: torch.as_tensor(v) for k, v in state.items()}),
            "metrics": MetricRecord({"num-examples": n, "node": node}),
        }
    )
    if with_kept:
        content["kept"] = pack_kept(kept)
    return Message(content, dst_node_id=1, message_type=MessageType.TRAIN)


def cohort_reply(*replies: Message) -> Message:
    """Nodes' replies as the client sends them: one cohort reply, each node's records
    under its id (``fogsim.flower.cohort``)."""
    content = RecordDict()
    for m in replies:
        node = int(m.content["metrics"]["node"])
        for name, record in m.content.items():
            content[cohort.key(node, name)] = record
    return Message(content, dst_node_id=1, message_type=MessageType.TRAIN)


def const_sub(global_state, kept, value: float) -> dict:
    sub = extract_submodel(global_state, kept)
    return {k: np.full(v.shape, value, dtype=np.float32) for k, v in sub.items()}


def test_overlapping_masks_weighted_by_examples(strategy) -> None:
    old = {k: v.copy() for k, v in strategy.global_state.items()}
    a = [np.array([0, 1, 2]), np.array([0, 1])]
    b = [np.array([2, 3]), np.array([1, 2])]
    ra = reply(const_sub(old, a, 1.0), a, n=100)
    rb = reply(const_sub(old, b, 4.0), b, n=300)
    new = {k: v.numpy() for k, v in strategy.aggregate(1, [ra, rb])[0].items()}
    w0 = new["fcs.0.weight"]
    assert np.allclose(w0[0], 1.0) and np.allclose(w0[1], 1.0)  # only a holds rows 0, 1
    assert np.allclose(w0[2], (100 * 1 + 300 * 4) / 400)  # both hold row 2
    assert np.allclose(w0[3], 4.0)  # only b
    assert np.allclose(w0[4:], old["fcs.0.weight"][4:])  # nobody: kept as it was
    w1 = new["fcs.1.weight"]  # rows: group 1, columns: group 0
    assert np.isclose(w1[1, 2], 3.25) and np.isclose(w1[0, 0], 1.0)
    assert np.isclose(w1[2, 3], 4.0) and np.isclose(w1[0, 3], old["fcs.1.weight"][0, 3])
    assert np.isclose(w1[3, 0], old["fcs.1.weight"][3, 0])
    out_b = new["fcs.2.bias"]  # output layer: held by everyone
    assert np.allclose(out_b, 3.25)
    # elements held by a or b, by hand: fcs.0 rows {0,1,2,3} x 784 inputs + 4 biases;
    # fcs.1 a: rows {0,1} x cols {0,1,2}, b: rows {1,2} x cols {2,3}, sharing (1, 2): 9,
    # + biases {0,1,2}; fcs.2 all 10 rows x cols {0,1,2} + 10 biases
    assert strategy.round_stats["union_params"] == 4 * 784 + 4 + 9 + 3 + 10 * 3 + 10


def test_disjoint_masks_do_not_mix(strategy) -> None:
    old = {k: v.copy() for k, v in strategy.global_state.items()}
    a = [np.array([0, 1, 2]), np.array([0, 1])]
    b = [np.array([3, 4, 5]), np.array([2, 3])]
    new = strategy.aggregate(
        1, [reply(const_sub(old, a, 2.0), a, 1), reply(const_sub(old, b, 5.0), b, 9)]
    )
    w1 = new[0]["fcs.1.weight"].numpy()
    assert np.allclose(w1[:2, :3], 2.0) and np.allclose(w1[2:, 3:], 5.0)
    assert np.allclose(w1[:2, 3:], old["fcs.1.weight"][:2, 3:])  # cross blocks untouched
    assert np.allclose(w1[2:, :3], old["fcs.1.weight"][2:, :3])


def test_full_masks_equal_flower_fedavg(strategy) -> None:
    full = full_kept(WIDTHS)
    rng = np.random.default_rng(0)
    states = [
        {k: rng.normal(size=v.shape).astype(np.float32) for k, v in strategy.global_state.items()}
        for _ in range(3)
    ]
    ns = [50, 120, 7]
    ours = strategy.aggregate(1, [reply(s, full, n) for s, n in zip(states, ns, strict=True)])[0]
    flower_replies = [reply(s, full, n, with_kept=False) for s, n in zip(states, ns, strict=True)]
    theirs = FedAvg().aggregate_train(1, flower_replies)[0]
    for k in theirs:
        assert np.allclose(ours[k].numpy(), theirs[k].numpy(), atol=1e-6), k


@pytest.mark.parametrize("name", ["mask-union", "heterofl", "fedrolex"])
def test_extracted_submodels_fit_every_budget(tiny_scenario, name) -> None:
    over = [
        "fleet.nodes=40",
        "fleet.classes.1.memory='300KiB'",
        "fleet.classes.1.memory_max='6MiB'",
    ]
    sc = load_scenario(tiny_scenario, over)
    fleet = build_fleet(sc.fleet, 3)
    s = STRATEGIES[name](sc, fleet)
    torch.manual_seed(0)
    s.global_state = {k: v.numpy() for k, v in FogNet((), (64, 32)).state_dict().items()}
    arch, kind = Arch((), (64, 32)), sc.train.memory_kind
    sizes = set()
    for node in range(fleet.num_nodes):
        if not s.takes_part[node]:
            continue
        kept = s.kept_for(node, server_round=3)
        widths = [len(k) for k in kept]
        sizes.add(tuple(widths))
        need = training_memory(arch.with_widths(widths), sc.dynhp.min_batch, kind)
        assert need <= fleet.budget(node), (node, widths, need, fleet.budget(node))
    assert len(sizes) > 3, "budgets spread 20x should give many sub-model sizes"


STRATEGY_RUNS = ["fedavg-dense", "fedavg-feasible", "heterofl", "fedrolex", "mask-union"]
RUN_SETS = [
    "run.rounds=2",
    "simulation.evaluate_clients=0",
    "fleet.classes.1.memory='160KiB'",
    "dynhp.target_compression=3",
    "dynhp.participations=1",
]


@pytest.mark.slow  # a real Flower + Ray run, through the CLI
def test_real_run_of_mask_union_on_ray(tiny_scenario: Path, tmp_path: Path) -> None:
    """One strategy on Flower + Ray as a user runs it (the others, below, in process on
    the same round loop and ClientApp: the transport is not theirs to test)."""
    over = ["strategy.name='mask-union'", *RUN_SETS]
    args = ["run", str(tiny_scenario), "--out", str(tmp_path), "--quiet"]
    result = CliRunner().invoke(app, args + [x for o in over for x in ("--set", o)])
    assert result.exit_code == 0, result.output
    check_strategy_run("mask-union", tmp_path, load(tmp_path))


@pytest.mark.parametrize("name", [n for n in STRATEGY_RUNS if n != "mask-union"])
def test_run_of_each_strategy(tiny_scenario: Path, tmp_path: Path, name: str) -> None:
    sc = load_scenario(tiny_scenario, [f"strategy.name='{name}'", *RUN_SETS])
    run_local(sc, tmp_path)
    check_strategy_run(name, tmp_path, load(tmp_path))


def check_strategy_run(name: str, run_dir: Path, tables: dict) -> None:
    """What every strategy's 2-round run must show (``RUN_SETS`` on the tiny fleet)."""
    rounds, nodes = tables["rounds"], tables["nodes"]
    assert len(rounds) == 2 and rounds[-1]["accuracy"] > 0.3
    for row in nodes:
        assert row["bytes_up"] == 4 * row["params"], "upload = held parameters, no padding"
        if name != "fedavg-dense":
            assert row["peak_memory"] <= row["budget_bytes"], row
            assert row["over_budget"] == 0
    if name == "fedavg-dense":
        assert any(r["over_budget"] for r in nodes), "small devices cannot hold the dense model"
    if name == "fedavg-feasible":
        assert {r["class"] for r in nodes} == {"big"}
        assert rounds[-1]["acc_small"] == ""  # the small class can hold nothing
    if name == "mask-union":
        dense = 784 * 64 + 64 + 64 * 32 + 32 + 32 * 10 + 10
        small = [r for r in nodes if r["class"] == "small"]
        assert small and all(r["params"] <= dense / 3 for r in small), "target reached"
        big = [r for r in nodes if r["class"] == "big"]  # 8 MiB holds it all: no pruning
        assert all(r["params"] == dense and r["pruned"] == 0 for r in big)
    if name in ("heterofl", "fedrolex", "mask-union"):
        assert {r["class"] for r in nodes} == {"big", "small"}
        assert rounds[-1]["acc_small"] > 0.2
    devices_hold_what_they_trained(run_dir, tables)


def masked_dense_accuracy(
    state: dict, kept: list[np.ndarray] | None, data: tuple | None = None
) -> tuple[float, float]:
    """Accuracy and loss of the dense global model with every neuron outside ``kept``
    silenced (its row and bias zeroed: ReLU(0) feeds the next layer nothing): the same
    function as the sub-model the device holds, computed without slicing anything; on
    ``data`` (x, y), by default MNIST's test split."""
    from fogsim.data import load_dataset
    from fogsim.device.models import model_from_state
    from fogsim.device.training import evaluate

    state = {k: v.clone() for k, v in state.items()}
    for g, keep in enumerate(kept or []):  # MLP: group g is fcs.g's output
        off = np.setdiff1d(np.arange(state[f"fcs.{g}.bias"].shape[0]), keep)
        state[f"fcs.{g}.weight"][off] = 0.0
        state[f"fcs.{g}.bias"][off] = 0.0
    if data is None:
        mnist = load_dataset("mnist")
        data = mnist.tensors(mnist.test_x, mnist.test_y)
    return evaluate(model_from_state(state), *data)


def held_out_by_clients(run_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Every node's held-out samples as its own client splits them off its training
    data (``local_data``), pooled: the fleet's validation samples, found without
    ``DataSection.validation``."""
    from clients.fog_client import local_data
    from fogsim.flower.wire import ClientSpec
    from fogsim.scenario import Scenario

    sc = Scenario.model_validate_json((run_dir / "scenario.json").read_text())
    spec = ClientSpec.of(sc)
    parts = [local_data(spec, node, "held-out") for node in range(sc.fleet.nodes)]
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


def devices_hold_what_they_trained(run_dir: Path, tables: dict) -> None:
    """devices.csv: one row per node that trained, its accuracy that of the global model
    restricted to the neurons it held (checked here by masking the dense model), on the
    test split and on the samples the clients held out of training (validation)."""
    trained = {r["node"] for r in tables["nodes"] if r["status"] == "ok"}
    devices = tables["devices"]
    assert {d["node"] for d in devices} == trained
    state = torch.load(run_dir / "model.pt")
    kept = torch.load(run_dir / "checkpoint.pt", weights_only=False)["strategy"].get("kept", {})
    summary = tables["summary"]["classes"]
    held_out = held_out_by_clients(run_dir)
    assert len(held_out[1]) < 10_000  # all of it is the validation set (no subset drawn)
    for d in devices:
        acc, loss = masked_dense_accuracy(state, kept.get(d["node"]))
        assert abs(d["accuracy"] - acc) <= 2e-4, (d, acc)  # at most 2 of 10,000 ties flip
        assert abs(d["loss"] - loss) <= 1e-4 * max(1.0, loss), (d, loss)
        checked, _ = masked_dense_accuracy(state, kept.get(d["node"]), held_out)
        assert abs(d["validation_accuracy"] - checked) <= 2 / len(held_out[1]), (d, checked)
    for cls, s in summary.items():
        accs = [d["accuracy"] for d in devices if d["class"] == cls]
        checked = [d["validation_accuracy"] for d in devices if d["class"] == cls]
        assert s["devices"] == len(accs)
        if accs:
            assert s["min"] == min(accs) and abs(s["mean"] - sum(accs) / len(accs)) < 1e-12
            assert s["validation_min"] == min(checked)


def test_mask_union_prunes_each_device_only_as_far_as_its_budget_asks(tiny_scenario) -> None:
    over = ["strategy.name='mask-union'", "dynhp.max_batch=32", "fleet.classes.0.memory='64MiB'"]
    sc = load_scenario(tiny_scenario, over)
    fleet = build_fleet(sc.fleet, 0)
    s = STRATEGIES["mask-union"](sc, fleet)
    big = [s.target(n) for n in range(fleet.num_nodes) if fleet.device(n).name == "big"]
    small = [s.target(n) for n in range(fleet.num_nodes) if fleet.device(n).name == "small"]
    assert set(big) == {1.0}  # 64 MiB trains the dense model at the largest batch
    assert all(1.0 < t <= sc.dynhp.target_compression for t in small)


def test_stragglers_past_the_deadline_are_counted_and_left_out(tiny_scenario) -> None:
    sc = load_scenario(tiny_scenario, ["simulation.deadline_s=1.0"])
    fleet = build_fleet(sc.fleet, 0)
    s = STRATEGIES["fedavg"](sc, fleet)
    state = {k: v.numpy() for k, v in FogNet((), (64, 32)).state_dict().items()}
    fast = reply(state, None, 10, node=0, with_kept=False)
    slow = reply({k: v + 1.0 for k, v in state.items()}, None, 10, node=1, with_kept=False)
    fast.content["metrics"]["train-flops"] = 1e6  # 1 ms at 1 GFLOP/s
    slow.content["metrics"]["train-flops"] = 5e9  # 5 s: past the 1 s deadline
    s.bytes_down = {0: 0, 1: 0}
    new, _ = s.aggregate_train(1, [cohort_reply(slow, fast)])
    assert s.round_stats["aggregated"] == 1 and s.round_stats["straggler"] == 1
    assert s.round_stats["sim_time_s"] == 1.0  # the round ends at the deadline
    assert [r["status"] for r in s.node_rows] == ["ok", "straggler"]
    for k, v in new.items():  # only the fast client's weights were averaged
        assert np.allclose(v.numpy(), state[k])


def test_per_node_work_is_lazy_on_a_10000_node_fleet(tiny_scenario) -> None:
    """Every node has its own (log-uniform) budget; building a strategy must not run the
    memory model's bisection for each of them: only sampled nodes pay, once."""
    over = [
        "strategy.name='mask-union'",
        "fleet.nodes=10000",
        "fleet.classes.1.memory_max='6MiB'",
        "simulation.clients_per_round=100",
    ]
    sc = load_scenario(tiny_scenario, over)
    fleet = build_fleet(sc.fleet, 0)
    assert len(set(fleet.budgets.tolist())) > 9000
    widest_fraction.cache_clear()
    s = STRATEGIES["mask-union"](sc, fleet)
    assert widest_fraction.cache_info().misses == 0
    assert s.takes_part.all()  # 512 KiB trains width 1: a vectorised test, no bisection
    s.global_state = {k: v.numpy() for k, v in FogNet((), (64, 32)).state_dict().items()}
    nodes = [3, 5000, 9999]
    first = [(s.kept_for(n, 1), s.target(n)) for n in nodes]
    misses = widest_fraction.cache_info().misses
    assert 0 < misses <= 2 * len(nodes)  # min_batch and max_batch per sampled node
    again = [(s.kept_for(n, 1), s.target(n)) for n in nodes]
    assert widest_fraction.cache_info().misses == misses  # cached
    for (k1, t1), (k2, t2) in zip(first, again, strict=True):
        assert t1 == t2 and all(np.array_equal(a, b) for a, b in zip(k1, k2, strict=True))
