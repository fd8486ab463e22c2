"""Flower strategies in a fogsim scenario (``[strategy] flower = "module:Class"``, or a
Flower subclass registered under a name): built with keyword arguments, run for real
on Flower + Ray, their failures ending the run with the reason."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg
from flwr.supercore.task_identity import TaskIdentity
from typer.testing import CliRunner

from clients.fog_client import train
from fogsim.checks import problems
from fogsim.cli import app
from fogsim.device.arch import Arch
from fogsim.device.memory import TENSOR_METADATA, proximal_anchor_bytes, training_memory
from fogsim.device.models import FogNet
from fogsim.fleet import build_fleet
from fogsim.flower import wire
from fogsim.scenario import ScenarioError, load_scenario
from fogsim.strategies import STRATEGIES, build_strategy
from fogsim.strategies.build import dense_notice
from fogsim.strategies.flower_plugin import FlowerStrategy
from fogsim.study.results import RunFailed, load
from tests.topology.local import run_local

runner = CliRunner()
ADAM = ["strategy.flower='flwr.serverapp.strategy:FedAdam'"]
USER_MODULE = '''
from flwr.serverapp.strategy import FedAvg
from fogsim.strategies import register


@register("my-fedavg")
class MyFedAvg(FedAvg):
    """FedAvg with a server learning rate, logging each aggregation to a file."""

    def __init__(self, *, server_lr: float = 1.0, log: str = "", **kwargs):
        super().__init__(**kwargs)
        self.server_lr, self.log = server_lr, log
        self.current = None

    def configure_train(self, server_round, arrays, config, grid):
        self.current = {k: v.numpy() for k, v in arrays.items()}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        arrays, metrics = super().aggregate_train(server_round, replies)
        with open(self.log, "a") as f:
            f.write(f"{server_round}\\n")
        new = {k: self.current[k] + self.server_lr * (v.numpy() - self.current[k])
               for k, v in arrays.items()}
        return ArrayRecord({k: torch.from_numpy(v) for k, v in new.items()}), metrics


class Float64Sender(FedAvg):
    """A plug-in bug: it sends the model as float64, which no client can train."""

    def configure_train(self, server_round, arrays, config, grid):
        doubled = ArrayRecord({k: torch.from_numpy(v.numpy().astype("float64"))
                               for k, v in arrays.items()})
        return super().configure_train(server_round, doubled, config, grid)
'''
USER_IMPORTS = "import torch\nfrom flwr.app import ArrayRecord\n"


@pytest.fixture(autouse=True)
def task_identity():
    """Messages need Flower's task identity, which a simulation sets for real."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's own strategy module beside their scenario (the current directory)."""
    (tmp_path / "myflower.py").write_text(USER_IMPORTS + USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def built(scenario: Path, *sets: str) -> FlowerStrategy:
    sc = load_scenario(scenario, list(sets))
    return build_strategy(sc, build_fleet(sc.fleet, sc.run.seed))


def test_params_go_to_the_flower_constructor_as_keywords(tiny_scenario: Path) -> None:
    s = built(tiny_scenario, *ADAM, "strategy.params={eta=0.01, beta_1=0.5}")
    assert isinstance(s, FlowerStrategy) and isinstance(s.inner, FedAdam)
    assert (s.inner.eta, s.inner.beta_1) == (0.01, 0.5)
    assert s.inner.fraction_train == 1.0 and s.inner.min_available_nodes == 1
    big = np.array([c.name == "big" for c in s.fleet.classes])[s.fleet.node_class]
    assert (s.takes_part == big).all(), "as fedavg-feasible: the 512 KiB class sits out"


def test_a_registered_flower_subclass_is_never_given_the_scenario(
    tiny_scenario: Path, user_module: Path
) -> None:
    s = built(
        tiny_scenario,
        "strategy.name='my-fedavg'",
        "strategy.module='myflower'",
        "strategy.params={server_lr=0.5}",
    )
    assert type(s.inner).__name__ == "MyFedAvg" and s.inner.server_lr == 0.5
    assert "my-fedavg" in STRATEGIES


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["strategy.params={fraction_train=0.5}"], "'fraction_train' of"),
        (
            ["strategy.params={eta_typo=1}"],
            "'eta_typo' of flwr.serverapp.strategy:FedAdam: no such parameter; allowed: "
            "train_metrics_aggr_fn, evaluate_metrics_aggr_fn, eta, eta_l",
        ),
        (["strategy.params={min_available_nodes=9}"], "simulation.clients_per_round"),
        (
            [
                "strategy.flower='flwr.serverapp.strategy:FedProx'",
                "strategy.params={proximal_mu=-0.5}",
            ],
            "'proximal_mu' of flwr.serverapp.strategy:FedProx: -0.5; allowed: 0",
        ),
        (  # once found only when FedAdam first aggregated, after a round's training
            ["strategy.params={eta='fast'}"],
            "'eta' of flwr.serverapp.strategy:FedAdam: 'fast': Input should be a valid number",
        ),
    ],
)
def test_bad_params_are_refused_naming_the_field(tiny_scenario: Path, sets, expected) -> None:
    found = problems(load_scenario(tiny_scenario, [*ADAM, *sets]))
    assert len(found) == 1 and found[0].startswith("strategy.params: ") and expected in found[0]


def test_bad_references_are_refused(tiny_scenario: Path) -> None:
    for ref, expected in (
        ("flwr.serverapp.strategy:NoSuch", "has no attribute 'NoSuch'"),
        ("fogsim.fleet:Fleet", "is not a Flower strategy class"),
        ("no_such_module:X", "No module named 'no_such_module'"),
    ):
        found = problems(load_scenario(tiny_scenario, [f"strategy.flower='{ref}'"]))
        assert found == [f"strategy.flower: {ref!r}: {expected}"] or (
            found[0].startswith("strategy.flower: ") and expected in found[0]
        ), found
    with pytest.raises(ScenarioError, match="give one of them"):
        load_scenario(tiny_scenario, [*ADAM, "strategy.name='heterofl'"])
    with pytest.raises(ScenarioError, match="strategy.flower"):
        load_scenario(tiny_scenario, ["strategy.flower='FedAdam'"])  # no module


def test_the_fleet_summary_says_who_sits_out(tiny_scenario: Path) -> None:
    sc = load_scenario(tiny_scenario, ADAM)
    note = dense_notice(sc, build_fleet(sc.fleet, sc.run.seed))
    assert note and "6 node(s) sit out (6 of 'small')" in note and "fedavg-feasible" in note
    sc = load_scenario(tiny_scenario, ["strategy.name='fedavg-feasible'"])
    assert dense_notice(sc, build_fleet(sc.fleet, sc.run.seed)) is None  # fogsim's own says


def test_the_fleet_summary_counts_fedproxs_copy(tiny_scenario: Path) -> None:
    """Small nodes whose budget holds the dense model but not FedProx's copy of it sit
    out, and the summary says so (it once counted them in); with no node holding the
    copy, the error names it."""
    fedprox = ["strategy.flower='flwr.serverapp.strategy:FedProx'"]
    sc = load_scenario(tiny_scenario, fedprox)
    dense = training_memory(sc.arch, 16, sc.train.memory_kind)
    between = dense + proximal_anchor_bytes(sc.arch) // 2
    small = f"fleet.classes.1.memory={between}"
    for mu, says in ((0.0, None), (0.01, "6 node(s) sit out (6 of 'small')")):
        mu_set = f"strategy.params={{proximal_mu={mu}}}"
        sc = load_scenario(tiny_scenario, [*fedprox, small, mu_set])
        note = dense_notice(sc, build_fleet(sc.fleet, sc.run.seed))
        assert note == says or (says and says in note), note
    sc = load_scenario(tiny_scenario, [*fedprox, small, f"fleet.classes.0.memory={between}",
                                       "strategy.params={proximal_mu=0.01}"])  # fmt: skip
    found = problems(sc)
    assert len(found) == 1 and "no node's budget holds the full model" in found[0], found
    assert "the copy of the received model FedProx keeps" in found[0]


def reply(state: dict, n: int, node: int) -> Message:
    metrics = MetricRecord({wire.NUM_EXAMPLES: n, wire.NODE: node})
    content = RecordDict({wire.ARRAYS: ArrayRecord(state), wire.METRICS: metrics})
    return Message(content, dst_node_id=1, message_type=MessageType.TRAIN)


def test_fedadam_result_is_cast_back_to_the_model_dtype(tiny_scenario: Path) -> None:
    """FedAdam computes in float64; the global model stays float32 (sent as float64,
    every client fails in round 2 with 'mat1 and mat2 must have the same dtype')."""
    s = built(tiny_scenario, *ADAM)
    torch.manual_seed(0)
    state = FogNet((), (64, 32)).state_dict()
    s.current = s.inner.current_arrays = {k: v.numpy() for k, v in state.items()}
    moved = {k: v + 0.1 for k, v in state.items()}
    arrays, _ = s.aggregate(1, [reply(moved, 10, 0), reply(moved, 30, 1)])
    assert {a.dtype for a in arrays.values()} == {"float32"}
    raw, _ = FedAdam.aggregate_train(s.inner, 1, [reply(moved, 10, 0)])
    assert {a.dtype for a in raw.values()} == {"float64"}, "the bug this guards against"


def test_a_resumed_run_restores_the_flower_strategys_state(tiny_scenario: Path) -> None:
    """FedAdam's moments are in the checkpoint: a resumed run goes on with them."""
    s = built(tiny_scenario, *ADAM)
    torch.manual_seed(0)
    state = FogNet((), (64, 32)).state_dict()
    s.current = s.inner.current_arrays = {k: v.numpy() for k, v in state.items()}
    s.aggregate(1, [reply({k: v + 0.1 for k, v in state.items()}, 10, 0)])
    saved = pickle.loads(pickle.dumps(s.state_dict()))  # as the checkpoint holds it
    again = built(tiny_scenario, *ADAM)
    again.load_state_dict(saved)
    for moment in ("m_t", "v_t"):
        mine, theirs = getattr(s.inner, moment), getattr(again.inner, moment)
        assert mine and all(np.array_equal(mine[k], theirs[k]) for k in mine)


def test_a_strategy_returning_another_model_ends_the_run(tiny_scenario: Path) -> None:
    class Truncating(FedAvg):
        def aggregate_train(self, server_round, replies):
            arrays, metrics = super().aggregate_train(server_round, replies)
            return ArrayRecord({k: v for k, v in arrays.items() if k != "fcs.2.bias"}), metrics

    sc = load_scenario(tiny_scenario)
    s = FlowerStrategy(sc, build_fleet(sc.fleet, sc.run.seed), Truncating(), "Truncating")
    state = FogNet((), (64, 32)).state_dict()
    s.current = {k: v.numpy() for k, v in state.items()}
    with pytest.raises(RunFailed, match=r"Truncating: round 3's .* \['fcs.2.bias'\]"):
        s.aggregate(3, [reply(state, 10, 0)])
    bare = FlowerStrategy(sc, build_fleet(sc.fleet, sc.run.seed), FedAdam(), "FedAdam")
    with pytest.raises(RunFailed, match="FedAdam: aggregate_train failed in round 1: Aggre"):
        bare.aggregate(1, [reply(state, 10, 0)])  # FedAdam not configured: its own error


def test_the_client_applies_fedprox_proximal_term(tiny_scenario: Path) -> None:
    """``proximal-mu`` in the config (Flower's FedProx sets it) keeps the local model
    near the one received."""
    fedprox = "strategy.flower='flwr.serverapp.strategy:FedProx'"
    sc = load_scenario(tiny_scenario, [fedprox, "fleet.nodes=40"])  # 1,350 samples a node
    s = build_strategy(sc, build_fleet(sc.fleet, sc.run.seed))
    torch.manual_seed(0)
    state = FogNet((), (64, 32)).state_dict()

    def drift(mu: float) -> float:
        records, extra = s.node_payload(0, ArrayRecord(state), 1)
        config = {**extra, wire.NODE: 0, wire.CLASS: "big", wire.BUDGET: 8 << 20}
        config |= {wire.ROUND: 1, wire.SPEC: s.spec, wire.PROXIMAL_MU: mu}
        content = RecordDict({**records, wire.CONFIG: ConfigRecord(config)})
        out = train(content)[wire.ARRAYS].to_torch_state_dict()  # one node's content
        return sum(float(((out[k] - v) ** 2).sum()) for k, v in state.items())

    free, held = drift(0.0), drift(1.0)
    assert held < 0.5 * free, (held, free)


def test_fedprox_budgets_its_copy_of_the_received_model(tiny_scenario: Path) -> None:
    """FedProx keeps a copy of the received model through local training: a node is
    admitted only if its budget holds that copy too, and its client sizes the batch to
    the budget less the copy and reports it in its peak."""
    fedprox = "strategy.flower='flwr.serverapp.strategy:FedProx'"
    sc = load_scenario(tiny_scenario, [fedprox, "strategy.params={proximal_mu=0.01}"])
    fleet = build_fleet(sc.fleet, sc.run.seed)
    s = build_strategy(sc, fleet)
    copy = 4 * s.arch.num_params() + TENSOR_METADATA * len(s.arch.param_shapes())  # 6 tensors
    assert s.extra_bytes() == copy
    assert (s.takes_part == (fleet.budgets >= s.budget_for(1.0) + copy)).all()
    torch.manual_seed(0)
    model = FogNet((), (64, 32))
    state = model.state_dict()
    shape = Arch.of(model)
    budget = training_memory(shape, 16, sc.train.memory_kind) + copy - 1  # batch 16 minus a byte

    def metrics(mu: float) -> dict:
        records, extra = s.node_payload(0, ArrayRecord(state), 1)
        config = {**extra, wire.NODE: 0, wire.CLASS: "big", wire.BUDGET: budget}
        config |= {wire.ROUND: 1, wire.SPEC: s.spec, wire.PROXIMAL_MU: mu}
        return dict(train(RecordDict({**records, wire.CONFIG: ConfigRecord(config)}))[wire.METRICS])

    plain, prox = metrics(0.0), metrics(0.01)
    assert plain[wire.BATCH_SIZE] >= 16 > prox[wire.BATCH_SIZE] > 0, (plain, prox)
    assert prox[wire.PEAK_MEMORY] == training_memory(shape, prox[wire.BATCH_SIZE],
                                                     sc.train.memory_kind) + copy  # fmt: skip
    assert prox[wire.PEAK_MEMORY] <= budget


def run_cli(scenario: Path, out: Path, sets: list[str]):
    args = ["run", str(scenario), "--out", str(out), "--quiet"]
    return runner.invoke(app, args + [x for s in sets for x in ("--set", s)])


FLOWER_RUNS = {
    "FedAvg": [],
    "FedProx": ["strategy.params={proximal_mu=0.01}"],
    "FedAdam": ["strategy.params={eta=0.01}"],
    "FedYogi": ["strategy.params={eta=0.01}"],
}
COMMON = ["run.rounds=2", "simulation.evaluate_clients=1", "fleet.classes.1.memory='160KiB'"]


def check_flower_run(out: Path, name: str) -> None:
    """Every round aggregated all its nodes, the model learnt and stayed float32, and
    only nodes that hold the dense model trained."""
    run = load(out)
    rounds, nodes = run["rounds"], run["nodes"]
    assert all(r["aggregated"] == r["sampled"] == 4 for r in rounds), "no round lost"
    assert rounds[-1]["accuracy"] > 0.5 and rounds[-1]["client_accuracy"] > 0.3
    assert {n["class"] for n in nodes} == {"big"}, "only nodes holding the dense model"
    assert run["summary"]["strategy"] == f"flwr.serverapp.strategy:{name}"
    model = torch.load(out / "model.pt")
    assert {v.dtype for v in model.values()} == {torch.float32}


@pytest.mark.parametrize("name", FLOWER_RUNS)
def test_flower_strategies_train(tiny_scenario: Path, tmp_path: Path, name: str) -> None:
    """Each strategy's whole run in this process: the real round loop, strategy and
    client code, Flower's Grid answered without Ray (``tests.topology.local``)."""
    ref = f"strategy.flower='flwr.serverapp.strategy:{name}'"
    run_local(load_scenario(tiny_scenario, [ref, *FLOWER_RUNS[name], *COMMON]), tmp_path)
    check_flower_run(tmp_path, name)


@pytest.mark.slow  # the resumed round runs on Flower + Ray
def test_a_flower_strategy_run_resumes(tiny_scenario: Path, tmp_path: Path) -> None:
    """``--resume`` of a run that stopped after its first round, through the CLI: its
    scenario.json (listing the default ``name`` beside ``flower``) was once refused as
    giving both."""
    sets = ["strategy.flower='flwr.serverapp.strategy:FedAvg'", *COMMON]
    sc = load_scenario(tiny_scenario, [*sets, "run.rounds=1"])
    run_local(sc, tmp_path)
    stored = json.loads((tmp_path / "scenario.json").read_text())
    stored["run"]["rounds"] = 2  # as if it had stopped after round 1 of 2
    (tmp_path / "scenario.json").write_text(json.dumps(stored))
    (tmp_path / "summary.json").unlink()  # unfinished
    result = runner.invoke(app, ["run", "--out", str(tmp_path), "--resume", "-q"])
    assert result.exit_code == 0, result.output
    assert [r["round"] for r in load(tmp_path)["rounds"]] == [1, 2]


@pytest.mark.slow  # a real Flower + Ray run (one: the others run in process, above)
def test_real_run_of_a_flower_strategy(tiny_scenario: Path, tmp_path: Path) -> None:
    ref = "strategy.flower='flwr.serverapp.strategy:FedAdam'"
    result = run_cli(tiny_scenario, tmp_path / "out", [ref, *FLOWER_RUNS["FedAdam"], *COMMON])
    assert result.exit_code == 0, result.output
    check_flower_run(tmp_path / "out", "FedAdam")


def test_a_registered_user_subclass_runs(tiny_scenario: Path, user_module: Path) -> None:
    sets = [
        "strategy.name='my-fedavg'",
        "strategy.module='myflower'",
        f"strategy.params={{server_lr=0.8, log='{user_module / 'calls.txt'}'}}",
        *COMMON,
    ]
    run_local(load_scenario(tiny_scenario, sets), user_module / "out")
    assert (user_module / "calls.txt").read_text().split() == ["1", "2"]
    rounds = load(user_module / "out")["rounds"]
    assert all(r["aggregated"] == 4 for r in rounds) and rounds[-1]["accuracy"] > 0.5


@pytest.mark.slow  # a real Flower + Ray run
def test_a_plugin_failing_on_every_client_ends_the_run(
    tiny_scenario: Path, user_module: Path
) -> None:
    sets = [
        "strategy.flower='myflower:Float64Sender'",
        "run.rounds=3",
        "simulation.max_failed_rounds=2",
        "simulation.evaluate_clients=0",
    ]
    result = run_cli(tiny_scenario, user_module / "out", sets)
    assert result.exit_code == 1, result.output
    assert "no client update counted in 2 rounds in a row" in result.output
    assert "must have the same dtype" in result.output, "the clients' own error"
    assert "final accuracy" not in result.output
    assert not (user_module / "out" / "summary.json").exists()
