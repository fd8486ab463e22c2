"""The model and data of the example: LeNet-5 (a user's own ``nn.Module``, not
fogsim's FogNet) on MNIST, read offline by fogsim's loader; each node a seeded
IID share of ``samples-per-node`` images."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fogsim.data import load_dataset
from fogsim.device.factory import FactoryArch

# the run config's defaults, as in pyproject.toml (run_simulation passes no run config)
DEFAULTS = {
    "num-server-rounds": 3,
    "strategy": "mask-union",
    "fraction-train": 1.0,
    "budgets": "4MiB,2560KiB,2MiB",
    "dynhp": False,
    "samples-per-node": 600,
    "local-epochs": 1,
    "lr": 0.05,
}


def settings(run_config: dict) -> dict:
    """The run config over :data:`DEFAULTS`."""
    return {**DEFAULTS, **run_config}


def lenet5(in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10) -> nn.Module:
    """LeNet-5 for 28x28 inputs (padding 2 on the first convolution); the arguments
    make it a factory fogsim's memory model can narrow (:data:`ARCH`)."""
    return nn.Sequential(
        nn.Conv2d(in_shape[0], 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )


# the model as fogsim's memory model and DynHP see it: a factory reference they can
# narrow to any widths (the server's memory_fn, the client's DynHP)
ARCH = FactoryArch("fogapp.task:lenet5", (1, 28, 28), 10)
BATCH = 32  # the batch train() uses, at which the server sizes each node's sub-model


def node_data(partition_id: int, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``samples`` training images of node ``partition_id`` (a seeded draw)."""
    ds = load_dataset("mnist")
    pick = np.random.default_rng([0, partition_id]).choice(len(ds.train_y), samples, replace=False)
    return ds.tensors(ds.train_x[pick], ds.train_y[pick])


def test_data(samples: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    ds = load_dataset("mnist")
    return ds.tensors(ds.test_x[:samples], ds.test_y[:samples])


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float) -> float:
    """SGD with momentum 0.9, batch 32; the mean loss of the last epoch."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    total = 0.0
    for _ in range(epochs):
        total = 0.0
        for idx in torch.randperm(len(x)).split(BATCH):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
    return total / len(x)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())
