"""DynHP: scores, schedule, gate, state, batch sizing and the budget at every step."""

import numpy as np
import pytest
import torch

from fogsim.device.arch import Arch
from fogsim.device.centralized import CentralizedRun, epoch_row
from fogsim.device.chain import widths_of
from fogsim.device.dynhp import DynHP, DynHPConfig, cubic_target
from fogsim.device.dynhp_train import TrainStats, train_dynhp
from fogsim.device.factory import FactoryArch
from fogsim.device.memory import BudgetError, max_batch_size, training_memory
from fogsim.device.models import FogNet, num_params


def _data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=g)
    w = torch.randn(784, 10, generator=g)
    return x, (x.flatten(1) @ w).argmax(1)


def test_cubic_schedule():
    assert cubic_target(1000, 100, 0.1, 0.6, 0.0) == 1000
    assert cubic_target(1000, 100, 0.1, 0.6, 0.6) == 100
    ramp = [cubic_target(1000, 100, 0.1, 0.6, p) for p in np.linspace(0, 1, 41)]
    assert all(a >= b for a, b in zip(ramp, ramp[1:], strict=False))
    assert cubic_target(1000, 100, 0.0, 1.0, 0.5) == int(100 + 900 * 0.125)


def test_taylor_score_equals_activation_times_gradient():
    torch.manual_seed(0)
    model = FogNet((3,), (7,))
    x, y = _data(16)
    acts = {}

    def keep(name):
        def hook(_m, _i, out):
            out.retain_grad()
            acts[name] = out

        return hook

    model.convs[0].register_forward_hook(keep(0))
    model.fcs[0].register_forward_hook(keep(1))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    h = DynHP(DynHPConfig(criterion="taylor"), model)
    scores = h.raw_scores(model)
    for g, z in acts.items():
        dims = (0, 2, 3) if z.dim() == 4 else (0,)
        expect = (z * z.grad).sum(dims).abs().detach().double().numpy()
        np.testing.assert_allclose(scores[g], expect, rtol=1e-4, atol=1e-7)


def test_weight_norm_scores_and_normalisation():
    torch.manual_seed(0)
    model = FogNet((), (6, 4))
    with torch.no_grad():
        model.fcs[0].weight[2] = 0
        model.fcs[0].bias[2] = 0
    for crit in ("weight-norm", "weight-norm-io"):
        h = DynHP(DynHPConfig(criterion=crit), model)
        raw = h.raw_scores(model)
        assert raw[0][2] == 0 and (np.delete(raw[0], 2) > 0).all()
        local = h.local_scores(model)
        assert all(abs(s.mean() - 1) < 1e-9 for s in local)


@pytest.mark.parametrize("arch", [((), (300, 100)), ((16, 32), (128,))])
@pytest.mark.parametrize("target", [2.0, 4.0, 10.0])
def test_schedule_end_hits_exact_target(arch, target):
    torch.manual_seed(0)
    model = FogNet(*arch)
    cfg = DynHPConfig(target_compression=target, criterion="weight-norm", min_width=2)
    h = DynHP(cfg, model)
    dense = num_params(model)
    assert h.check(model, 0.3) == 0  # mid-ramp: gated (patience 3), nothing yet
    h.check(model, 1.0)
    after = num_params(model)
    assert dense / after >= target
    # minimal: putting back any single removed neuron would miss the target
    a = Arch.of(model)
    for g in range(len(model.widths)):
        wider = list(model.widths)
        wider[g] += 1
        assert a.with_widths(wider).num_params() > dense / target
    assert model.fcs[-1].out_features == 10


def test_stability_gate_needs_patience():
    torch.manual_seed(0)
    model = FogNet((), (40, 20))
    h = DynHP(DynHPConfig(target_compression=4, patience=3, criterion="weight-norm"), model)
    removed = [h.check(model, 0.5) for _ in range(4)]
    assert removed[:2] == [0, 0] and removed[2] > 0
    assert min(model.widths) >= h.cfg.min_width


def test_min_width_respected():
    torch.manual_seed(0)
    model = FogNet((), (8, 4))
    h = DynHP(DynHPConfig(target_compression=1000, min_width=3, criterion="weight-norm"), model)
    h.check(model, 1.0)
    assert model.widths == [3, 3]


def test_state_dict_round_trip_and_submodel():
    torch.manual_seed(0)
    model = FogNet((), (30, 10))
    h = DynHP(DynHPConfig(target_compression=3, criterion="weight-norm"), model)
    x, y = _data(64)
    train_dynhp(model, x, y, h, budget=None, epochs=1, progress_range=(0.0, 1.0))
    state = h.state_dict()
    assert all(isinstance(v, np.ndarray) for k in ("kept", "score", "streak") for v in state[k])
    h2 = DynHP(h.cfg, FogNet((), (30, 10)))
    h2.load_state_dict(state)
    for a, b in zip(h.kept, h2.kept, strict=True):
        assert np.array_equal(a, b)
    sub = [k[: len(k) // 2] for k in h.kept]  # a server's smaller sub-model
    h3 = DynHP(h.cfg, Arch((), (30, 10)), kept=sub)
    h3.load_state_dict(state, kept=sub)
    assert [len(k) for k in h3.kept] == [len(k) for k in sub]
    assert h3.dense_params == num_params(FogNet((), (30, 10)))


@pytest.mark.parametrize("arch", [((), (300, 100)), ((8, 16), (64,))])
@pytest.mark.parametrize("criterion", ["taylor", "weight-norm"])
def test_budget_holds_at_every_step(arch, criterion):
    torch.manual_seed(0)
    model = FogNet(*arch)
    dense_mem = training_memory(model, 16, "sgd-momentum")
    # cannot hold the dense net: budget start prunes first (a CNN's narrowest model
    # needs over a quarter of its dense one: oneDNN pads narrow maps to 8 channels)
    budget = dense_mem // (3 if arch[0] else 5)
    cfg = DynHPConfig(
        target_compression=8,
        end=0.6,
        criterion=criterion,
        check_every=2,
        patience=2,
        min_batch=8,
        max_batch=128,
    )
    h = DynHP(cfg, model)
    held = h.held_bytes()  # DynHP's arrays as training starts, set aside all along
    x, y = _data(300)
    stats = train_dynhp(model, x, y, h, budget=budget, epochs=2, lr=0.01)
    assert stats.memory and max(stats.memory) <= budget
    # the totals a federated client reads (it keeps no per-step records)
    assert (stats.max_memory, stats.max_batch) == (max(stats.memory), max(stats.batch))
    assert (stats.steps, stats.samples) == (len(stats.batch), sum(stats.batch))
    for p, b, m in zip(stats.params, stats.batch, stats.memory, strict=True):
        step = training_memory(Arch.of(model), b, "sgd-momentum") + held
        assert m == step or p > num_params(model)
    assert h.dense_params / num_params(model) >= 8
    full = stats.batch[:-1]  # the last batch may be an epoch's short tail
    assert all(a <= b for a, b in zip(full, full[1:], strict=False))  # memory only shrinks
    if not arch[0]:
        assert full[-1] > full[0]  # the freed memory went into the batch
    assert max(stats.batch) <= max_batch_size(model, budget, "sgd-momentum", cap=128)


def test_static_batch_ablation_and_impossible_budget():
    torch.manual_seed(0)
    x, y = _data(128)
    model = FogNet((), (50, 20))
    cfg = DynHPConfig(target_compression=4, dynamic_batch=False, check_every=2, patience=1)
    stats = train_dynhp(model, x, y, DynHP(cfg, model), budget=None, epochs=1, batch=16)
    assert set(stats.batch) == {16}
    with pytest.raises(BudgetError):
        train_dynhp(FogNet((), (50, 20)), x, y, DynHP(cfg, Arch((), (50, 20))), budget=1000)


@pytest.mark.parametrize("criterion", ["taylor", "weight-norm-io"])
@pytest.mark.parametrize("model", ["lenet5", "resnet_like"])
def test_dynhp_prunes_a_factory_model_within_its_budget(model: str, criterion: str) -> None:
    """A user's model (``[model] factory``): DynHP reads its neuron groups from its
    arrays, prunes convs, batch norms (running statistics too) and linear layers alike,
    and sizes every step's batch to the budget by the memory model at the widths of
    that step."""
    arch = FactoryArch(f"tests.example_models:{model}", (1, 28, 28), 10)
    net = arch.build(seed=0)
    cfg = DynHPConfig(target_compression=4, check_every=2, patience=1, criterion=criterion)
    dynhp = DynHP(cfg, arch)
    x, y = _data(256)
    budget = training_memory(arch.scaled(0.6), cfg.min_batch, "sgd-momentum")
    stats = train_dynhp(net, x, y, dynhp, budget=budget, epochs=2, optimizer="sgd-momentum")
    assert stats.pruned > 0 and all(m <= budget for m in stats.memory)
    widths = widths_of(net)
    assert [len(k) for k in dynhp.kept] == list(widths)
    assert num_params(net) == arch.with_widths(widths).num_params() <= arch.num_params() / 4
    for name, t in net.state_dict().items():  # every array matches the narrowed shapes
        assert tuple(t.shape) == arch.with_widths(widths).shapes()[name], name
    assert torch.isfinite(net.eval()(x[:4])).all()


def test_an_epoch_row_describes_its_largest_step_as_it_ran() -> None:
    """``fogsim dynhp``'s per-epoch batch and memory are those of the epoch's largest
    step, at that step's own widths: the row once paired the second-to-last step's
    batch with the widths after the epoch's last pruning, a step that never ran (29%
    under the epoch's real peak at 300 KiB)."""
    run = CentralizedRun("digits", hidden=(300, 100))
    model = FogNet((), (40, 8), in_shape=(1, 8, 8))  # the widths at the epoch's end
    stats = TrainStats()
    for widths, batch in (((300, 100), 16), ((120, 30), 46), ((40, 8), 2)):
        shape = Arch((), widths, (1, 8, 8))
        stats.record(1.0, model, shape, batch, run.optimizer, 0.01, 0.5)
    row = epoch_row(1, model, stats, run, dense=50_610, acc=0.5)
    peak = training_memory(Arch((), (300, 100), (1, 8, 8)), 16, run.optimizer)
    assert (row["batch_size"], row["modelled_memory"]) == (16, peak), row
    assert row["params"] == num_params(model)
    assert row["measured_memory"] == "" or 0.87 * peak <= row["measured_memory"] <= peak, row
