"""Physical neuron removal, optimizer state slicing and the federated index maps."""

import numpy as np
import pytest
import torch

from fogsim.device.chain import layer_of, layout_of
from fogsim.device.models import FogNet, model_from_state
from fogsim.device.pruning import (
    extract_submodel,
    full_kept,
    remove_neurons,
    scatter_add_submodel,
)

ARCHS = [((), (20, 12)), ((4, 6), (10,)), ((5,), ())]


def _layers(model, group):
    """The layer producing ``group``, the layer reading it, and its columns per neuron."""
    layout = layout_of(model)
    reader, span = layout.reader(group)
    return layer_of(model, layout.members(group)[0]), layer_of(model, reader), span


def _train_step(model, opt, x, y):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_shapes_optimizer_state_and_kept(arch, opt_name):
    torch.manual_seed(0)
    model = FogNet(*arch)
    if opt_name == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    _train_step(model, opt, x, y)
    kept = full_kept(model.widths)
    group = len(model.widths) - 1
    prod, cons, span = _layers(model, group)
    old_w, old_cons = prod.weight.detach().clone(), cons.weight.detach().clone()
    old_state = {k: v.clone() for k, v in opt.state[prod.weight].items()}
    old_cons_state = {k: v.clone() for k, v in opt.state[cons.weight].items()}
    keep = np.array([0, 2, 3])
    remove_neurons(model, group, keep, opt, kept)
    prod, cons, _ = _layers(model, group)
    assert model.widths[group] == 3 and prod.bias.shape == (3,)
    assert torch.equal(prod.weight, old_w[keep])
    cols = (keep[:, None] * span + np.arange(span)).reshape(-1)
    assert torch.equal(cons.weight, old_cons[:, cols])
    params = {id(p) for g in opt.param_groups for p in g["params"]}
    assert params == {id(p) for p in model.parameters()}
    for k, v in old_state.items():
        if v.dim():
            assert torch.equal(opt.state[prod.weight][k], v[keep])
            assert torch.equal(opt.state[cons.weight][k], old_cons_state[k][:, cols])
    assert np.array_equal(kept[group], keep)
    remove_neurons(model, group, [2], opt, kept)  # index maps compose
    assert np.array_equal(kept[group], [3])
    _train_step(model, opt, x, y)  # optimizer keeps working on the new Parameters
    assert model(x).shape == (8, 10)


@pytest.mark.parametrize("arch", ARCHS)
def test_removing_dead_neuron_preserves_function(arch):
    torch.manual_seed(1)
    model = FogNet(*arch).eval()
    x = torch.randn(5, 1, 28, 28)
    for group in range(len(model.widths)):
        _, cons, span = _layers(model, group)
        with torch.no_grad():  # neuron 1 of this group has zero outgoing weights
            cons.weight[:, span : 2 * span] = 0
        before = model(x)
        keep = [i for i in range(model.widths[group]) if i != 1]
        remove_neurons(model, group, keep)
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_extract_scatter_round_trip(arch):
    torch.manual_seed(2)
    glob = FogNet(*arch)
    gstate = glob.state_dict()
    shapes = {k: tuple(v.shape) for k, v in gstate.items()}
    rng = np.random.default_rng(0)
    kept = [np.sort(rng.choice(w, size=max(1, w // 2), replace=False)) for w in glob.widths]
    sub = extract_submodel(gstate, kept)
    # the sub-model is what physical pruning of the global model gives
    pruned = FogNet(*arch)
    pruned.load_state_dict(gstate)
    for g, k in enumerate(kept):
        remove_neurons(pruned, g, k)
    for name, t in pruned.state_dict().items():
        assert torch.equal(sub[name], t), name
    model_from_state(sub)  # loadable as a compact model
    num = {k: np.zeros(s, dtype=np.float32) for k, s in shapes.items()}
    den = {k: np.zeros(s, dtype=np.float32) for k, s in shapes.items()}
    scatter_add_submodel(num, den, sub, kept, 2.0)
    scattered = {k: (num[k] / 2, den[k] / 2) for k in shapes}
    for name, (values, mask) in scattered.items():
        g = gstate[name].numpy()
        assert values.shape == g.shape
        np.testing.assert_array_equal(values[mask == 1], g[mask == 1])
        assert np.all(values[mask == 0] == 0)
        assert mask.sum() == sub[name].numel()
    again = extract_submodel({k: v for k, (v, _) in scattered.items()}, kept)
    for name in sub:
        assert torch.equal(again[name], sub[name])


def test_bad_keep_rejected():
    model = FogNet((), (4,))
    with pytest.raises(ValueError):
        remove_neurons(model, 0, [])
    with pytest.raises(ValueError):
        remove_neurons(model, 0, [5])
