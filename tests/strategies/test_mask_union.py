"""mask-union's masks and targets: nested prefixes of one fixed order, a target that
keeps every neuron a device trains at the minimum batch, and the earlier own-mask
design kept as an option."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.fog_client import train
from fogsim.device.models import FogNet
from fogsim.fleet import build_fleet
from fogsim.flower import wire
from fogsim.scenario import load_scenario
from fogsim.strategies import STRATEGIES
from tests.topology.local import run_local

SPREAD = ["fleet.nodes=30", "fleet.classes.1.memory='300KiB'", "fleet.classes.1.memory_max='6MiB'"]


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1


def strategy(tiny_scenario, **params):
    sc = load_scenario(tiny_scenario, SPREAD)
    s = STRATEGIES["mask-union"](sc, build_fleet(sc.fleet, 3), **params)
    torch.manual_seed(0)
    s.global_state = {k: v.numpy() for k, v in FogNet((), (64, 32)).state_dict().items()}
    return s


def norms_order(state: dict) -> list[np.ndarray]:
    return [
        np.argsort(-np.linalg.norm(state[f"fcs.{i}.weight"], axis=1), kind="stable") for i in (0, 1)
    ]


def test_nested_masks_are_prefixes_of_the_initial_weight_norm_order(tiny_scenario) -> None:
    s = strategy(tiny_scenario)
    order = norms_order(s.global_state)
    nodes = [n for n in range(s.fleet.num_nodes) if s.takes_part[n]]
    first = {n: s.kept_for(n, 1) for n in nodes}
    for kept in first.values():  # each group: the first k of the order
        for g, k in enumerate(kept):
            assert set(k) == set(order[g][: len(k)])
    by_size = sorted(first.values(), key=lambda k: sum(map(len, k)))
    for small, big in zip(
        by_size, by_size[1:], strict=False
    ):  # a smaller mask is inside a bigger one
        assert all(set(a) <= set(b) for a, b in zip(small, big, strict=True))
    assert len({tuple(map(len, k)) for k in by_size}) > 3
    # the order is fixed: new weights, a node that trained and pruned, the same prefix
    rng = np.random.default_rng(1)
    s.global_state = {k: rng.normal(size=v.shape) for k, v in s.global_state.items()}
    assert not np.array_equal(norms_order(s.global_state)[0], order[0])
    node = nodes[0]
    s.kept[node] = [k[:1] for k in first[node]]
    for n in nodes:
        assert all(np.array_equal(a, b) for a, b in zip(s.kept_for(n, 7), first[n], strict=True))
    restored = strategy(tiny_scenario)
    restored.load_state_dict(s.state_dict())
    assert all(np.array_equal(a, b) for a, b in zip(restored.order, s.order, strict=True))


def test_index_order_hands_out_heterofls_slices(tiny_scenario) -> None:
    s = strategy(tiny_scenario, order="index")
    nodes = [n for n in range(s.fleet.num_nodes) if s.takes_part[n]]
    sizes = set()
    for n in nodes:
        kept = s.kept_for(n, 1)
        widths = s.arch.scaled(s.width_fraction(n)).widths
        assert [k.tolist() for k in kept] == [list(range(w)) for w in widths]
        sizes.add(tuple(widths))
    assert len(sizes) > 3
    # not the weight-norm order's prefixes: the two orders differ on this model
    assert any(
        set(k) != set(o[: len(k)])
        for n in nodes
        for k, o in zip(s.kept_for(n, 1), norms_order(s.global_state), strict=True)
    )


def test_own_masks_keep_each_nodes_mask(tiny_scenario) -> None:
    s = strategy(tiny_scenario, masks="own", target_batch="max")
    node = next(n for n in range(s.fleet.num_nodes) if s.takes_part[n])
    assert [set(k) for k in s.kept_for(node, 1)] == [
        set(o[: len(k)])
        for o, k in zip(norms_order(s.global_state), s.kept_for(node, 1), strict=True)
    ]
    own = [np.array([1, 5]), np.array([0, 3])]
    s.kept[node] = own
    assert s.kept_for(node, 2) is own


def test_bad_options_are_refused(tiny_scenario) -> None:
    with pytest.raises(ValueError, match="masks"):
        strategy(tiny_scenario, masks="random")
    with pytest.raises(ValueError, match="target_batch"):
        strategy(tiny_scenario, target_batch="median")
    with pytest.raises(ValueError, match="order"):
        strategy(tiny_scenario, order="random")
    with pytest.raises(ValueError, match="nested masks only"):
        strategy(tiny_scenario, order="index", masks="own")
    with pytest.raises(ValueError, match="start_batch"):
        strategy(tiny_scenario, start_batch=17)  # above [dynhp] min_batch (16)
    with pytest.raises(ValueError, match="start_batch"):
        strategy(tiny_scenario, start_batch=4, masks="own")
    with pytest.raises(ValueError, match="prune"):
        strategy(tiny_scenario, prune="order")  # without start_batch nothing is pruned


# HeteroFL's neuron order and its reference recipe (clipping, label masking, an LR that
# does not follow the batch), as mask-union's options
HETEROFL_RECIPE = [
    "strategy.params.order='index'",
    "strategy.params.clip_grad=1.0",
    "strategy.params.label_mask=true",
    "dynhp.lr_scaling='none'",
]


def test_in_heterofls_order_and_recipe_mask_union_trains_what_heterofl_trains(
    tiny_scenario, tmp_path
) -> None:
    """With nested masks a device receives its slice already at its target, so DynHP
    prunes nothing and holds none of its arrays: in HeteroFL's order and with its
    recipe, on the same budgets, mask-union must train HeteroFL's models to the last
    digit, and what separates the two in the README's tables is the order and the
    recipe alone (DynHP's arrays once took part of the small devices' width too).
    Under DynHP's own LR rule the small devices (batch 17) train at another LR, and
    the figures move."""
    small = 160 * 1024  # small devices train at a batch below 32
    sets = [
        "run.rounds=3",
        "simulation.evaluate_clients=0",
        f"fleet.classes.1.memory={small}",
        "data.alpha=0.3",  # labels missing on some nodes: label masking bites
    ]

    def figures(name: str, *extra: str) -> list[dict]:
        out = tmp_path / f"{name}{len(extra)}"
        rounds, _, _ = run_local(load_scenario(tiny_scenario, [*sets, name, *extra]), out)
        return [{k: v for k, v in r.items() if k.startswith(("acc", "loss"))} for r in rounds]

    heterofl = figures("strategy.name='heterofl'")
    assert {"acc_big", "acc_small", "acc_small_min"} <= set(heterofl[-1])
    assert figures("strategy.name='mask-union'", *HETEROFL_RECIPE) == heterofl
    assert figures("strategy.name='mask-union'", *HETEROFL_RECIPE[:-1]) != heterofl


def dynhp_round(s, node: int, participations: int) -> RecordDict:
    """The node's reply to a training message at the given point of its schedule."""
    s.participations[node] = participations
    model = FogNet((), (64, 32))
    model.load_state_dict({k: torch.as_tensor(v) for k, v in s.global_state.items()})
    records, extra = s.node_payload(node, ArrayRecord(model.state_dict()), 1)
    config = {**extra, wire.NODE: node, wire.CLASS: s.fleet.device(node).name}
    config.update({wire.BUDGET: s.fleet.budget(node), wire.ROUND: 1, wire.SPEC: s.spec})
    content = RecordDict({**records, wire.CONFIG: ConfigRecord(config)})
    return train(content)


def test_min_target_deploys_every_neuron_the_budget_trains(tiny_scenario) -> None:
    pruned = {}
    for batch in ("min", "max"):
        s = strategy(tiny_scenario, target_batch=batch)
        node = min(range(s.fleet.num_nodes), key=s.fleet.budget)
        sent = s.kept_for(node, 1)
        last = dynhp_round(s, node, s.planned - 1)  # the schedule's end: target forced
        kept = wire.unpack_kept(last[wire.KEPT])
        pruned[batch] = sum(len(a) - len(b) for a, b in zip(sent, kept, strict=True))
        assert last[wire.METRICS][wire.PEAK_MEMORY] <= s.fleet.budget(node)
    assert pruned["min"] == 0 and pruned["max"] > 0


def test_a_wider_start_is_pruned_to_the_budgets_target_within_the_budget(tiny_scenario) -> None:
    """``start_batch``: the smallest device receives the wider prefix it trains at
    batch 4 and, at its schedule's end, DynHP has pruned it (inside the prefix) to the
    model its budget trains at ``min_batch``, no step over the budget."""
    s = strategy(tiny_scenario, start_batch=4)
    node = min(range(s.fleet.num_nodes), key=s.fleet.budget)
    sent = s.kept_for(node, 1)
    plain = strategy(tiny_scenario).kept_for(node, 1)
    assert sum(map(len, sent)) > sum(map(len, plain))
    assert all(set(a) <= set(b) for a, b in zip(plain, sent, strict=True))  # nested
    # first of 10 participations: the schedule asks for nothing yet, the prefix trains
    s.planned = 10
    first = dynhp_round(s, node, 0)
    assert [k.tolist() for k in wire.unpack_kept(first[wire.KEPT])] == [k.tolist() for k in sent]
    assert first[wire.METRICS][wire.BATCH_SIZE] < s.scenario.dynhp.min_batch
    last = dynhp_round(s, node, s.planned - 1)
    kept = wire.unpack_kept(last[wire.KEPT])
    assert all(set(k) <= set(w) for k, w in zip(kept, sent, strict=True))
    params = s.arch.with_widths([len(k) for k in kept]).num_params()
    assert params <= s.arch.num_params() / s.target(node)
    for reply in (first, last):
        assert reply[wire.METRICS][wire.PEAK_MEMORY] <= s.fleet.budget(node)


def test_a_wider_start_for_capped_devices_only(tiny_scenario) -> None:
    """``start_for = "capped"``: only a device whose target stops at
    ``target_compression`` (1.5 here: the 3 smallest) gets the wider start, prefix,
    batch and DynHP's arrays, as with the wider start for all; every other one is sent
    exactly what the default sends it (it once held DynHP's arrays too, which narrowed
    its model below the default's)."""
    sc = load_scenario(tiny_scenario, [*SPREAD, "dynhp.target_compression=1.5"])
    fleet = build_fleet(sc.fleet, 3)
    built = {}
    for name, params in (("plain", {}), ("all", {"start_batch": 4}),
                         ("capped", {"start_batch": 4, "start_for": "capped"})):  # fmt: skip
        built[name] = STRATEGIES["mask-union"](sc, fleet, **params)
        torch.manual_seed(0)
        built[name].global_state = {
            k: v.numpy() for k, v in FogNet((), (64, 32)).state_dict().items()
        }
    capped = [n for n in range(fleet.num_nodes) if built["plain"].budget_ratio(n) > 1.5]
    assert 0 < len(capped) < fleet.num_nodes
    arrays = wire.numpy_record(built["plain"].global_state)
    narrower = 0  # nodes the arrays would narrow: where holding them would show
    for node in range(fleet.num_nodes):
        like = built["all" if node in capped else "plain"]
        sent = built["capped"].kept_for(node, 1)
        assert [k.tolist() for k in sent] == [k.tolist() for k in like.kept_for(node, 1)]
        records, config = built["capped"].node_payload(node, arrays, 1)
        want_records, want = like.node_payload(node, arrays, 1)
        assert config == want and records.keys() == want_records.keys()
        assert config[wire.PRUNES] == (node in capped)
        narrower += built["plain"].width_fraction(node, dynhp=True) < like.width_fraction(node)
    assert narrower > 0
    assert any(
        sum(map(len, built["all"].kept_for(n, 1))) > sum(map(len, built["plain"].kept_for(n, 1)))
        for n in capped
    )
    with pytest.raises(ValueError, match="start_for"):
        STRATEGIES["mask-union"](sc, fleet, start_for="capped")  # no start_batch


def test_clipping_for_capped_devices_only(tiny_scenario) -> None:
    """``clip_for = "capped"``: only a device whose target stops at
    ``target_compression`` (1.5 here) is told to clip; every other one is sent exactly
    what the default sends it (clipping changes no mask, so neither sizes differently)."""
    sc = load_scenario(tiny_scenario, [*SPREAD, "dynhp.target_compression=1.5"])
    fleet = build_fleet(sc.fleet, 3)
    plain = STRATEGIES["mask-union"](sc, fleet)
    capped = STRATEGIES["mask-union"](sc, fleet, clip_grad=1.0, clip_for="capped")
    for s in (plain, capped):
        torch.manual_seed(0)
        s.global_state = {k: v.numpy() for k, v in FogNet((), (64, 32)).state_dict().items()}
    arrays = wire.numpy_record(plain.global_state)
    told = []
    for node in range(fleet.num_nodes):
        records, config = capped.node_payload(node, arrays, 1)
        want_records, want = plain.node_payload(node, arrays, 1)
        if config.pop(wire.CLIP, None) == 1.0:
            told.append(node)
        assert config == want
        assert records.keys() == want_records.keys()
    assert told == [n for n in range(fleet.num_nodes) if plain.budget_ratio(n) > 1.5]
    assert 0 < len(told) < fleet.num_nodes
    with pytest.raises(ValueError, match="clip_for"):
        STRATEGIES["mask-union"](sc, fleet, clip_for="capped")  # no clip_grad


def test_a_wider_start_pruned_by_the_order_stays_a_prefix_of_it(tiny_scenario) -> None:
    """``prune = "order"``: DynHP removes the tail of the server's neuron order, not
    its own lowest scores, so what a device deploys is still a prefix of the order in
    every group (nested with every other device's), at its target, within budget."""
    s = strategy(tiny_scenario, start_batch=4, prune="order")
    order = norms_order(s.global_state)
    node = min(range(s.fleet.num_nodes), key=s.fleet.budget)
    sent = s.kept_for(node, 1)
    last = dynhp_round(s, node, s.planned - 1)
    kept = wire.unpack_kept(last[wire.KEPT])
    assert sum(map(len, kept)) < sum(map(len, sent))  # it pruned
    for g, k in enumerate(kept):
        assert set(k) == set(order[g][: len(k)]), g
    assert s.arch.with_widths([len(k) for k in kept]).num_params() <= (
        s.arch.num_params() / s.target(node)
    )
    assert last[wire.METRICS][wire.PEAK_MEMORY] <= s.fleet.budget(node)
