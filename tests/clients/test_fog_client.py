"""The ClientApp's own logic, called directly on real Flower messages."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.fog_client import stream_seed, train
from fogsim.device.memory import training_memory
from fogsim.device.models import FogNet
from fogsim.fleet import build_fleet
from fogsim.flower import wire
from fogsim.scenario import load_scenario
from fogsim.strategies import build_strategy


@pytest.fixture(autouse=True)
def task_identity():
    """Messages need Flower's task identity, which a simulation sets for real."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1


def test_stream_seeds_do_not_collide_across_rounds_and_nodes() -> None:
    # the old arithmetic seed*1_000_003 + round*10_007 + node made these two equal
    assert stream_seed(0, 1, 10_007) != stream_seed(0, 2, 0)
    keys = [(s, r, n) for s in range(3) for r in range(1, 30) for n in range(0, 30_000, 997)]
    assert len({stream_seed(*k) for k in keys}) == len(keys)


def test_fedavg_feasible_trains_at_a_batch_its_budget_holds(tiny_scenario) -> None:
    """A node admitted because the full model fits at min_batch trains within its
    budget, not at the scenario's larger batch."""
    sc = load_scenario(tiny_scenario, ["strategy.name='fedavg-feasible'"])
    strategy = build_strategy(sc, build_fleet(sc.fleet, sc.run.seed))
    model = FogNet((), (64, 32))
    budget = training_memory(model, sc.dynhp.min_batch, sc.train.memory_kind)
    assert budget < training_memory(model, sc.train.batch_size, sc.train.memory_kind)
    records, extra = strategy.node_payload(0, ArrayRecord(model.state_dict()), 1)
    config = {**extra, wire.NODE: 0, wire.CLASS: "big", wire.BUDGET: budget, wire.ROUND: 1}
    config[wire.SPEC] = strategy.spec
    content = RecordDict({**records, wire.CONFIG: ConfigRecord(config)})
    reply = train(content)
    metrics = reply[wire.METRICS]
    assert metrics[wire.BATCH_SIZE] <= sc.dynhp.min_batch
    assert metrics[wire.PEAK_MEMORY] <= budget and metrics[wire.OVER_BUDGET] == 0
    assert np.isfinite(reply[wire.ARRAYS]["fcs.0.weight"].numpy()).all()
    assert torch.is_tensor(reply[wire.ARRAYS].to_torch_state_dict()["fcs.0.bias"])


def test_draws_give_every_node_of_a_huge_fleet_its_own_data(tiny_scenario) -> None:
    from clients.fog_client import local_data
    from fogsim.flower.wire import ClientSpec

    sets = ["fleet.nodes=100000", "data.partitioning='draws'", "data.samples_per_node=50"]
    spec = ClientSpec.of(load_scenario(tiny_scenario, sets))
    (x, y), (hx, hy) = local_data(spec, 99_999), local_data(spec, 99_999, "held-out")
    assert len(x) + len(hx) == 50 and len(x) == len(y) and len(hx) == len(hy) == 5
    x2, _ = local_data(spec, 99_998)
    assert not torch.equal(x, x2)  # its own draw
