"""Cohort messages (``fogsim.flower.cohort``): many fleet nodes per Flower message,
each still accounted as if it had its own, and results that do not depend on it."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType
from flwr.supercore.task_identity import TaskIdentity

from clients.fog_client import reply_evaluate, reply_train
from fogsim.device.pruning import extract_submodel
from fogsim.fleet import build_fleet
from fogsim.flower import cohort, wire
from fogsim.flower.server_app import initial_model
from fogsim.scenario import load_scenario
from fogsim.strategies import build_strategy

WALL_CLOCK = {"time_s"}  # real seconds on the client: the one field that may differ


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1


class Mailboxes:
    """What a strategy asks of Flower's grid before it sends: the registered node ids."""

    def __init__(self, n: int) -> None:
        self.ids = list(range(1, n + 1))

    def get_node_ids(self) -> list[int]:
        return self.ids


def rounds(path, size: int, strategy: str, n_rounds: int = 2) -> tuple[list, list, list]:
    """The strategy's rounds with the client's own reply functions, no transport:
    (global arrays per round, nodes.csv rows, per-round client evaluation)."""
    sc = load_scenario(
        path,
        [
            f"strategy.name='{strategy}'",
            f"simulation.cohort_size={size}",
            "simulation.clients_per_round=7",
            "simulation.evaluate_clients=5",
            "fleet.nodes=12",
            "data.partitioning='draws'",
            "data.samples_per_node=300",
            "faults.crash=0.15",
            "faults.drop=0.1",
            "faults.corrupt=0.1",
        ],
    )
    s = build_strategy(sc, build_fleet(sc.fleet, sc.run.seed))
    grid = Mailboxes(sc.simulation.flower_nodes)
    arrays = ArrayRecord(initial_model(sc).state_dict())
    models, rows, evals = [], [], []
    for rnd in range(1, n_rounds + 1):
        sent = list(s.configure_train(rnd, arrays, ConfigRecord(), grid))
        assert len(sent) == -(-7 // size), "a round's nodes in cohorts of the size asked"
        for j, m in enumerate(sent):  # as Flower's grid does when it sends them
            m.metadata.__dict__["_message_id"] = f"{rnd}-{j}"
        arrays = s.aggregate_train(rnd, [reply_train(m) for m in sent])[0] or arrays
        models.append({k: v.numpy() for k, v in arrays.items()})
        rows += [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in s.node_rows]
        asked = s.configure_evaluate(rnd, arrays, ConfigRecord(), grid)
        evals.append(dict(s.aggregate_evaluate(rnd, [reply_evaluate(m) for m in asked])))
    return models, rows, evals


@pytest.mark.parametrize("strategy", ["mask-union", "heterofl", "fedrolex", "fedavg"])
def test_results_do_not_depend_on_the_cohort_size(tiny_scenario, strategy) -> None:
    """Cohorts of 1, of 3 and all 7 in one: the same statuses, bytes, simulated
    times, energy and metrics per node, and the same global model (float summation
    order aside), with crashes, drop-outs and corrupt updates injected."""
    one = rounds(tiny_scenario, 1, strategy)
    statuses = {r["status"] for r in one[1]}
    assert {"ok", "crashed"} <= statuses, f"the faults must show up: {statuses}"
    for size in (3, 7):
        other = rounds(tiny_scenario, size, strategy)
        assert other[1] == one[1], f"nodes.csv rows differ at cohort size {size}"
        for a, b in zip(one[2], other[2], strict=True):
            assert b == pytest.approx(a, rel=1e-6)
        for a, b in zip(one[0], other[0], strict=True):
            for k in a:
                np.testing.assert_allclose(b[k], a[k], rtol=1e-6, atol=1e-7)


def test_a_crash_costs_only_its_own_node(tiny_scenario) -> None:
    """One node of a cohort raises: it alone is ``crashed``, with the client's error;
    the others' updates count."""
    sc = load_scenario(tiny_scenario, ["simulation.cohort_size=4"])
    s = build_strategy(sc, build_fleet(sc.fleet, sc.run.seed))
    arrays = ArrayRecord(initial_model(sc).state_dict())
    (msg,) = s.configure_train(1, arrays, ConfigRecord(), Mailboxes(sc.simulation.flower_nodes))
    msg.metadata.__dict__["_message_id"] = "m"
    nodes = cohort.nodes_of(msg)
    victim = nodes[1]  # its model is garbage: building it raises on the client
    msg.content[cohort.key(victim, wire.ARRAYS)] = wire.numpy_record({"w": np.zeros(3)})
    reply = reply_train(msg)
    good, crashed = cohort.replies_of(reply)
    assert list(crashed) == [victim] and crashed[victim]  # the client's error, named
    assert sorted(good) == sorted(set(nodes) - {victim})
    assert s.aggregate_train(1, [reply])[0] is not None
    status = {r["node"]: r["status"] for r in s.node_rows}
    assert status[victim] == "crashed" and all(status[n] == "ok" for n in good)
    assert any(f"node {victim} crashed" in p for p in s.round_stats["problems"])


def test_a_failed_message_costs_its_cohort(tiny_scenario) -> None:
    """A whole-message error (the actor died) marks every node of that cohort, and
    only those, ``crashed``; a message never answered leaves its nodes ``timed_out``."""
    from flwr.app import Error

    sc = load_scenario(tiny_scenario, ["simulation.cohort_size=2"])
    s = build_strategy(sc, build_fleet(sc.fleet, sc.run.seed))
    arrays = ArrayRecord(initial_model(sc).state_dict())
    sent = list(s.configure_train(1, arrays, ConfigRecord(), Mailboxes(2)))
    assert len(sent) == 2
    for j, m in enumerate(sent):
        m.metadata.__dict__["_message_id"] = f"m{j}"
    died = Message(Error(0, "actor died"), reply_to=sent[0])
    s.aggregate_train(1, [died])
    status = {r["node"]: r["status"] for r in s.node_rows}
    assert {status[n] for n in cohort.nodes_of(sent[0])} == {"crashed"}
    assert {status[n] for n in cohort.nodes_of(sent[1])} == {"timed_out"}


@pytest.mark.parametrize("strategy", ["fedavg", "mask-union", "heterofl"])
def test_the_global_model_travels_once(tiny_scenario, strategy) -> None:
    """Every strategy sends the global model once per message (sub-model strategies
    add each node's neuron indices, and the client slices), and still counts, per
    node, the bytes of the model that node would be sent alone."""
    sc = load_scenario(tiny_scenario, [f"strategy.name='{strategy}'", "simulation.cohort_size=4"])
    s = build_strategy(sc, build_fleet(sc.fleet, sc.run.seed))
    arrays = ArrayRecord(initial_model(sc).state_dict())
    (msg,) = s.configure_train(1, arrays, ConfigRecord(), Mailboxes(1))
    assert [k for k in msg.content if k.endswith(wire.ARRAYS)] == [wire.ARRAYS]
    nodes, sent = cohort.nodes_of(msg), dict(cohort.unpack(msg.content))
    assert len(nodes) == 4
    state = {k: v.numpy() for k, v in arrays.items()}
    for n in nodes:
        alone = state
        if wire.KEPT in sent[n]:
            sub = extract_submodel(state, wire.unpack_kept(sent[n][wire.KEPT]))
            alone = {k: v.numpy() for k, v in sub.items()}
        assert s.bytes_down[n] == wire.array_bytes(wire.numpy_record(alone))
        got = wire.received_state(sent[n])
        assert all(np.array_equal(got[k].numpy(), alone[k]) for k in alone)
    assert s.round_stats[f"bytes_down_{MessageType.TRAIN}"] == sum(s.bytes_down[n] for n in nodes)
    if strategy != "fedavg":  # the fleet's budgets make sub-models smaller than the model
        assert min(s.bytes_down[n] for n in nodes) < wire.array_bytes(arrays)


def test_a_node_trains_its_own_copy_of_the_shared_model(tiny_scenario) -> None:
    """The state a client builds from a cohort message is its own: training one
    node in place leaves the model the cohort's next node receives untouched."""
    sc = load_scenario(tiny_scenario, ["strategy.name='heterofl'", "simulation.cohort_size=4"])
    s = build_strategy(sc, build_fleet(sc.fleet, sc.run.seed))
    arrays = ArrayRecord(initial_model(sc).state_dict())
    (msg,) = s.configure_train(1, arrays, ConfigRecord(), Mailboxes(1))
    first, second = (content for _, content in list(cohort.unpack(msg.content))[:2])
    before = {k: v.clone() for k, v in wire.received_state(second).items()}
    for t in wire.received_state(first).values():
        t.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in wire.received_state(second).items())


@pytest.mark.parametrize("strategy", ["mask-union", "fedavg"])
def test_replies_taken_as_they_come_give_the_same_round(tiny_scenario, strategy) -> None:
    """Replies taken one by one in any arrival order (as the round loop does) give the
    very model and rows of all replies at once: updates are absorbed in node order,
    and none is held once the messages before it have replied."""
    sets = [f"strategy.name='{strategy}'", "simulation.cohort_size=2"]
    sc = load_scenario(tiny_scenario, [*sets, "simulation.clients_per_round=7"])
    arrays = ArrayRecord(initial_model(sc).state_dict())
    at_once, one_by_one = (build_strategy(sc, build_fleet(sc.fleet, sc.run.seed)) for _ in "ab")
    sent = list(at_once.configure_train(1, arrays, ConfigRecord(), Mailboxes(4)))
    replies = [reply_train(m) for m in sent]
    expected, _ = at_once.aggregate_train(1, replies)
    one_by_one.configure_train(1, arrays, ConfigRecord(), Mailboxes(4))
    one_by_one.open_replies()
    for reply in reversed(replies):
        one_by_one.take(1, [reply])
    assert len(one_by_one.tally.ready) == 0, "the first message's reply released them all"
    got, _ = one_by_one.close_replies(1)
    assert all(np.array_equal(got[k].numpy(), expected[k].numpy()) for k in expected)
    assert one_by_one.node_rows == at_once.node_rows


class SlowRegistration:
    """Flower's engine registers its nodes in its own thread: the ServerApp's first
    calls may see some of them only."""

    def __init__(self, n: int, shown: list[int]) -> None:
        self.ids, self.shown = list(range(1, n + 1)), shown

    def get_node_ids(self) -> list[int]:
        k = self.shown.pop(0) if self.shown else len(self.ids)
        return self.ids[:k]


def test_the_first_round_waits_for_flower_to_register_its_nodes(tiny_scenario, monkeypatch):
    sc = load_scenario(tiny_scenario, ["simulation.cohort_size=2"])
    s = build_strategy(sc, build_fleet(sc.fleet, sc.run.seed))
    n = sc.simulation.flower_nodes
    assert s.sample(4, SlowRegistration(n, [0, 1, n - 1]), 1) and s.node_ids == list(
        range(1, n + 1)
    )
    late = build_strategy(sc, build_fleet(sc.fleet, sc.run.seed))
    monkeypatch.setattr("fogsim.strategies.base.REGISTRATION_WAIT_S", 0.2)
    with pytest.raises(RuntimeError, match=f"Flower registered 1 nodes in 0.2 s, expected {n}"):
        late.sample(4, SlowRegistration(n, [1] * 1000), 1)
