"""Memory model vs what torch really allocates, and batch sizing under a budget."""

import pytest
import torch

from fogsim.device.measure import measure_training_memory
from fogsim.device.memory import (
    Arch,
    BudgetError,
    max_batch_size,
    memory_breakdown,
    training_memory,
)
from fogsim.device.models import FogNet

ARCHS = [((), (300, 100)), ((), (37, 11)), ((16, 32), (128,)), ((5, 9), (17,)), ((4,), ())]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("optimizer", ["sgd", "sgd-momentum", "adam"])
@pytest.mark.parametrize("batch", [1, 32, 256])
def test_model_within_15_percent_of_measured(arch, optimizer, batch):
    torch.manual_seed(0)
    model = FogNet(*arch)
    measured = measure_training_memory(model, batch, optimizer)
    modelled = training_memory(model, batch, optimizer)
    assert abs(modelled - measured) <= 0.15 * measured
    assert abs(modelled - measured) <= 0.01 * measured  # in practice it is byte-close


def test_optimizer_instance_and_breakdown():
    model = FogNet((), (30, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    assert training_memory(model, 8, opt) == training_memory(model, 8, "sgd-momentum")
    b = memory_breakdown(model, 8, "adam")
    n = sum(p.numel() for p in model.parameters())
    assert b.params == b.grads == 4 * n and b.optimizer_state == 8 * n
    assert b.total == training_memory(model, 8, "adam")
    assert b.total <= b.params + b.grads + b.optimizer_state + b.workspace + b.inputs + max(
        b.activations, 0
    )
    assert Arch.of(model).num_params() == n


def test_max_batch_size_is_largest_fitting():
    model = FogNet((), (300, 100))
    budget = training_memory(model, 100, "sgd") + 5
    b = max_batch_size(model, budget, "sgd")
    assert b == 100
    assert training_memory(model, b + 1, "sgd") > budget
    assert max_batch_size(model, budget, "sgd", cap=7) == 7


def test_budget_error_names_budget_and_need():
    model = FogNet((), (300, 100))
    need = training_memory(model, 1, "adam")
    with pytest.raises(BudgetError, match=f"{need} B") as err:
        max_batch_size(model, need - 1, "adam")
    assert str(need - 1) in str(err.value)
    assert isinstance(err.value, ValueError)
