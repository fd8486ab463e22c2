"""Partial aggregates (``fogsim.flower.partial``): a cohort's good updates summed on the
client, the very nodes the server counts good, and the same round as updates sent
one by one."""

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.app import ConfigRecord as Config

from clients.fog_client import reply_train
from fogsim.fleet import build_fleet
from fogsim.flower import cohort, partial, wire
from fogsim.flower.server_app import initial_model
from fogsim.scenario import load_scenario
from fogsim.strategies import build_strategy
from tests.flower.test_cohort import Mailboxes, task_identity  # noqa: F401 (fixture)

BIG = ["fleet.classes.1.memory='8MiB'", "fleet.nodes=12", "simulation.clients_per_round=8"]


def one_round(path, sets: list[str], size: int, tamper=None):
    """(strategy after round 1, the replies, the new global arrays) for cohorts of
    ``size``; ``tamper(reply)`` may change a reply before the server takes it."""
    sc = load_scenario(path, [*BIG, f"simulation.cohort_size={size}", *sets])
    s = build_strategy(sc, build_fleet(sc.fleet, sc.run.seed))
    arrays = ArrayRecord(initial_model(sc).state_dict())
    grid = Mailboxes(sc.simulation.flower_nodes)
    sent = list(s.configure_train(1, arrays, ConfigRecord(), grid))
    for j, m in enumerate(sent):
        m.metadata.__dict__["_message_id"] = f"1-{j}"
    replies = [reply_train(m) for m in sent]
    if tamper:
        replies = [tamper(r) for r in replies]
    new, _ = s.aggregate_train(1, replies)
    return s, replies, new


def rows(strategy) -> list[dict]:
    """nodes.csv rows but the client's real seconds (the one field that may differ)."""
    return [{k: v for k, v in r.items() if k != "time_s"} for r in strategy.node_rows]


def node_arrays(reply: Message) -> list[str]:
    return [k for k in reply.content if k.endswith(cohort.SEP + wire.ARRAYS)]


@pytest.mark.parametrize(
    "strategy", ["mask-union", "heterofl", "fedrolex", "fedavg", "fedavg-feasible"]
)
def test_a_cohort_replies_one_sum_and_the_round_is_unchanged(tiny_scenario, strategy) -> None:
    sets = [f"strategy.name='{strategy}'"]
    alone, replies_alone, expected = one_round(tiny_scenario, sets, 1)
    summed, replies, got = one_round(tiny_scenario, sets, 8)
    (reply,) = replies
    assert wire.PARTIAL in reply.content and node_arrays(reply) == [], "one sum, no weights"
    model = sum(v.numpy().nbytes for v in expected.values())
    assert wire.array_bytes(reply.content[wire.PARTIAL]) == 4 * model, "float64 num and den"
    sent_alone = sum(wire.array_bytes(r.content[k]) for r in replies_alone for k in node_arrays(r))
    assert 4 * model < sent_alone, "smaller than the 8 nodes' weights"
    assert partial.summed_nodes(reply) == sorted(summed.tally.status)
    assert rows(summed) == rows(alone), "bytes up and times as if sent alone"
    assert summed.round_stats["aggregated"] == alone.round_stats["aggregated"] == 8
    for k, v in expected.items():
        np.testing.assert_allclose(got[k].numpy(), v.numpy(), rtol=1e-6, atol=1e-7)


def test_stragglers_are_left_out_of_the_sum_as_the_server_decides(tiny_scenario) -> None:
    sets = ["strategy.name='mask-union'", "fleet.classes.0.flops=2e6", "fleet.classes.1.flops=5e6"]
    free, _, _ = one_round(tiny_scenario, sets, 8)
    times = sorted(r["sim_time_s"] for r in free.node_rows)
    deadline = [*sets, f"simulation.deadline_s={times[4]}"]  # the 3 slowest straggle
    alone, _, expected = one_round(tiny_scenario, deadline, 1)
    summed, (reply,), got = one_round(tiny_scenario, deadline, 8)
    status = summed.tally.status
    assert sorted(status.values()).count("straggler") == 3
    assert partial.summed_nodes(reply) == sorted(n for n, s in status.items() if s == "ok")
    assert rows(summed) == rows(alone)
    for k, v in expected.items():
        np.testing.assert_allclose(got[k].numpy(), v.numpy(), rtol=1e-6, atol=1e-7)


def test_a_sum_the_server_disagrees_with_stops_the_round(tiny_scenario) -> None:
    def drop_one(reply: Message) -> Message:
        nodes = partial.summed_nodes(reply)
        reply.content[wire.PARTIAL_NODES] = Config({wire.PARTIAL_NODES: nodes[1:]})
        return reply

    with pytest.raises(RuntimeError, match="the two sides' rules differ"):
        one_round(tiny_scenario, ["strategy.name='mask-union'"], 8, tamper=drop_one)


def test_no_sum_where_it_would_weigh_more_than_the_weights(tiny_scenario) -> None:
    _, replies, _ = one_round(tiny_scenario, ["strategy.name='heterofl'"], 1)
    assert all(wire.PARTIAL_NODES not in r.content and node_arrays(r) for r in replies)


def test_a_flower_strategy_gets_every_update_on_its_own(tiny_scenario) -> None:
    """A plug-in aggregates with its own code: its clients never sum."""
    sets = ["strategy.flower='flwr.serverapp.strategy:FedAvg'"]
    s, (reply,), _ = one_round(tiny_scenario, sets, 8)
    assert wire.PARTIAL_NODES not in reply.content and len(node_arrays(reply)) == 8
    assert s.round_stats["aggregated"] == 8
