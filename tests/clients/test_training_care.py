"""HeteroFL's care for sub-models (Scaler, gradient clipping, label masking): the
training loops, the client that applies what a message asks, and the aggregation of
output rows by the labels each client holds."""

import copy

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.fog_client import local_data, train
from fogsim.device.models import FogNet, set_scaler
from fogsim.device.pruning import extract_submodel
from fogsim.device.training import make_optimizer, present_labels, train_epochs
from fogsim.fleet import build_fleet
from fogsim.flower import wire
from fogsim.scenario import load_scenario
from fogsim.strategies import STRATEGIES
from tests.example_models import resnet_like


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1


def params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# --- the Scaler ----------------------------------------------------------------------
def test_scaler_multiplies_hidden_preactivations_by_global_over_local_width() -> None:
    torch.manual_seed(0)
    net = FogNet((), (3, 2))
    set_scaler(net, [6, 8])  # factors 2 and 4
    x = torch.randn(5, 1, 28, 28)
    fc0, fc1, out = net.fcs
    net.eval()  # a deployed model: identity, as HeteroFL's Scaler
    plain = out(torch.relu(fc1(torch.relu(fc0(x.flatten(1))))))
    assert torch.allclose(net(x), plain, atol=1e-6)
    h = torch.relu(2 * fc0(x.flatten(1)))  # the layers, still in eval mode, by hand
    expected = out(torch.relu(4 * fc1(h)))
    net.train()
    assert torch.allclose(net(x), expected, atol=1e-5)


def test_scaler_scales_conv_channels_too() -> None:
    torch.manual_seed(0)
    net = FogNet((2,), (4,))
    set_scaler(net, [6, 4])  # conv channels x3, hidden units x1 (full width)
    x = torch.randn(3, 1, 28, 28)
    conv, (fc0, out) = net.convs[0], net.fcs
    net.eval()
    a = torch.nn.functional.max_pool2d(torch.relu(3 * conv(x)), 2).flatten(1)
    expected = out(torch.relu(fc0(a)))
    net.train()
    assert torch.allclose(net(x), expected, atol=1e-5)


def test_scaler_scales_a_factory_models_groups_before_their_batch_norm() -> None:
    """A user's model (``[model] factory``): each group's producing layer is scaled,
    the output layer is not."""
    torch.manual_seed(0)
    net = resnet_like((1, 28, 28), 10)
    plain = copy.deepcopy(net).train()
    set_scaler(net, [16, 32, 32, 64])  # x2 everywhere
    net.train()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        z = net[0](x)  # net[0] is hooked: scaled x2
        assert torch.allclose(z, 2 * plain[0](x), atol=1e-5)
        assert torch.allclose(net[-1](torch.ones(1, 32)), plain[-1](torch.ones(1, 32)))


# --- clipping and label masking in the training loop ------------------------------------
def data(labels: list[int], n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 28, 28, generator=g)
    y = torch.tensor(labels * (n // len(labels)))
    return x, y


def test_clipping_bounds_the_step() -> None:
    x, y = data([0, 1, 2, 3])
    moved = []
    for clip in (None, 1e-3):
        torch.manual_seed(0)
        net = FogNet((), (20,))
        before = params(net)
        opt = make_optimizer("sgd", net.parameters(), lr=1.0)
        train_epochs(net, x[:16], y[:16], epochs=1, batch_size=16, optimizer=opt, clip=clip)
        moved.append(float((params(net) - before).norm()))
    assert moved[1] <= 1e-3 * (1 + 1e-4)  # one SGD step of lr 1: at most the clip
    assert moved[0] > 100 * moved[1]


def test_label_mask_leaves_the_output_rows_of_absent_labels_alone() -> None:
    x, y = data([0, 1])
    rows = {}
    for masked in (False, True):
        torch.manual_seed(0)
        net = FogNet((), (20,))
        w0, b0 = net.fcs[-1].weight.detach().clone(), net.fcs[-1].bias.detach().clone()
        opt = make_optimizer("sgd", net.parameters(), lr=0.1, momentum=0.9)
        mask = present_labels(y, 10) if masked else None
        train_epochs(net, x, y, epochs=1, batch_size=16, optimizer=opt, label_mask=mask)
        w, b = net.fcs[-1].weight.detach(), net.fcs[-1].bias.detach()
        rows[masked] = (w[2:] - w0[2:]).abs().max() + (b[2:] - b0[2:]).abs().max()
        assert (w[:2] - w0[:2]).abs().max() > 0  # present labels do learn
    assert rows[True] == 0 and rows[False] > 0


# --- the client applies what the message asks -------------------------------------------
NO_CARE = {"scaler": False, "clip_grad": None, "label_mask": False}


def message(strategy, node: int) -> RecordDict:
    torch.manual_seed(0)
    model = FogNet((), (64, 32))
    strategy.global_state = {k: v.numpy() for k, v in model.state_dict().items()}
    records, extra = strategy.node_payload(node, ArrayRecord(model.state_dict()), 1)
    config = {**extra, wire.NODE: node, wire.CLASS: strategy.fleet.device(node).name}
    config.update({wire.BUDGET: strategy.fleet.budget(node), wire.ROUND: 1})
    config[wire.SPEC] = strategy.spec
    return RecordDict({**records, wire.CONFIG: ConfigRecord(config)})


@pytest.mark.parametrize("name", ["heterofl", "mask-union"])
def test_client_applies_the_care_a_message_asks(tiny_scenario, name) -> None:
    sc = load_scenario(tiny_scenario, [f"strategy.name='{name}'", "data.alpha=0.1"])
    fleet = build_fleet(sc.fleet, sc.run.seed)
    cares = {
        "none": {},
        "scaler": {"scaler": True},
        "clip": {"clip_grad": 0.01},
        "mask": {"label_mask": True},
    }
    spec, weights, replies = wire.ClientSpec.of(sc), {}, {}
    for care, kwargs in cares.items():
        strategy = STRATEGIES[name](sc, fleet, **{**NO_CARE, **kwargs})
        node = next(  # a sub-model node whose data lack some label
            n
            for n in range(fleet.num_nodes)
            if strategy.width_fraction(n) < 1
            and (torch.bincount(local_data(spec, n)[1], minlength=10) == 0).any()
        )
        replies[care] = train(message(strategy, node))
        weights[care] = replies[care][wire.ARRAYS]["fcs.0.weight"].numpy()
    for care in ("scaler", "clip", "mask"):  # each one changes what the client trains
        assert not np.allclose(weights[care], weights["none"]), care
    assert all(wire.LABELS not in r for c, r in replies.items() if c != "mask")
    counts = wire.unpack_labels(replies["mask"][wire.LABELS])
    _, y = local_data(spec, node)
    assert counts.tolist() == torch.bincount(y, minlength=10).tolist()


def test_batch_lr_scales_a_fixed_sub_models_lr_with_its_batch(tiny_scenario) -> None:
    sc = load_scenario(tiny_scenario, ["train.batch_size=64"])
    fleet = build_fleet(sc.fleet, sc.run.seed)
    trained = {}
    for batch_lr in (False, True):
        s = STRATEGIES["heterofl"](sc, fleet, **{**NO_CARE, "batch_lr": batch_lr})
        node = next(n for n in range(fleet.num_nodes) if s.width_fraction(n) < 1)
        reply = train(message(s, node))
        assert reply[wire.METRICS][wire.BATCH_SIZE] < 64
        trained[batch_lr] = reply[wire.ARRAYS]["fcs.0.weight"].numpy()
    assert not np.allclose(trained[True], trained[False])
    # with the LR scaled by hand instead, the same weights
    batch = reply[wire.METRICS][wire.BATCH_SIZE]
    lr = sc.train.lr * (batch / 64) ** 0.5  # [dynhp] lr_scaling: sqrt
    sc_lr = load_scenario(tiny_scenario, ["train.batch_size=64", f"train.lr={lr!r}"])
    s = STRATEGIES["heterofl"](sc_lr, fleet, **NO_CARE)
    by_hand = train(message(s, node))[wire.ARRAYS]["fcs.0.weight"].numpy()
    assert np.allclose(by_hand, trained[True], atol=1e-6)


def test_rivals_train_as_their_reference_code_and_mask_union_plainly(tiny_scenario) -> None:
    sc = load_scenario(tiny_scenario)
    fleet = build_fleet(sc.fleet, 0)
    for name in ("heterofl", "fedrolex"):
        assert STRATEGIES[name](sc, fleet).care() == {wire.CLIP: 1.0, wire.LABEL_MASK: 1}
        assert STRATEGIES[name](sc, fleet, clip_grad=0, label_mask=False).care() == {}
    assert STRATEGIES["mask-union"](sc, fleet).care() == {}
    with pytest.raises(ValueError, match="clip_grad"):
        STRATEGIES["heterofl"](sc, fleet, clip_grad=-1.0)


# --- aggregation of output rows by label --------------------------------------------------
def reply(state: dict, kept, n: int, node: int, counts: list[int] | None) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: torch.as_tensor(v) for k, v in state.items()}),
            "metrics": MetricRecord({"num-examples": n, "node": node}),
            "kept": wire.pack_kept(kept),
        }
    )
    if counts is not None:
        content[wire.LABELS] = wire.pack_labels(np.array(counts))
    return Message(content, dst_node_id=1, message_type=MessageType.TRAIN)


def test_output_rows_are_averaged_only_over_clients_holding_the_label(tiny_scenario) -> None:
    sc = load_scenario(tiny_scenario, ["model.hidden=[6, 4]"])
    s = STRATEGIES["heterofl"](sc, build_fleet(sc.fleet, 0), **{**NO_CARE, "label_mask": True})
    torch.manual_seed(0)
    s.global_state = {k: v.numpy().copy() for k, v in FogNet((), (6, 4)).state_dict().items()}
    old = {k: v.copy() for k, v in s.global_state.items()}
    kept = [np.arange(6), np.arange(4)]
    sub = extract_submodel(old, kept)
    a = {k: np.full(v.shape, 1.0, dtype=np.float32) for k, v in sub.items()}
    b = {k: np.full(v.shape, 4.0, dtype=np.float32) for k, v in sub.items()}
    ca = [5, 5, 0, 5, 5, 5, 5, 5, 5, 0]  # a lacks labels 2 and 9
    cb = [5, 5, 5, 5, 5, 5, 5, 5, 0, 0]  # b lacks 8 and 9
    new = s.aggregate(1, [reply(a, kept, 100, 0, ca), reply(b, kept, 300, 1, cb)])[0]
    w, bias = new["fcs.2.weight"].numpy(), new["fcs.2.bias"].numpy()
    both = (100 * 1 + 300 * 4) / 400
    assert np.allclose(w[0], both) and np.isclose(bias[0], both)
    assert np.allclose(w[2], 4.0) and np.isclose(bias[2], 4.0)  # only b holds label 2
    assert np.allclose(w[8], 1.0) and np.isclose(bias[8], 1.0)  # only a holds label 8
    assert np.allclose(w[9], old["fcs.2.weight"][9]) and np.isclose(bias[9], old["fcs.2.bias"][9])
    assert np.allclose(new["fcs.1.weight"].numpy(), both)  # hidden layers: all clients
    # without label masking every client's rows count
    s.label_mask = False
    s.global_state = old
    new = s.aggregate(1, [reply(a, kept, 100, 0, ca), reply(b, kept, 300, 1, cb)])[0]
    assert np.allclose(new["fcs.2.weight"].numpy()[9], both)
