"""Models as a user writes them for ``[model] factory`` (``fogsim.device.factory``):
``make(in_shape, num_classes) -> nn.Module``. LeNet-5 and a ResNet-like CNN without
the skips, shipped so that scenarios can name them (``factory =
"fogsim.device.zoo:lenet5"``) and as examples of what fogsim narrows."""

from __future__ import annotations

import torch
from torch import nn


def lenet5(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling: conv 6 and 16 (5x5),
    then 120, 84 and the classes; the first conv pads 2 so 28x28 images work."""
    c, h, w = in_shape
    convs = nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )
    with torch.no_grad():
        flat = convs(torch.zeros(1, c, h, w)).numel()
    return nn.Sequential(
        *convs,
        nn.Flatten(),
        nn.Linear(flat, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )


def _block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


def resnet_like(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """A ResNet-like CNN without the skips: 3x3 conv + batch norm + ReLU blocks, a
    stride-2 block halving the image at each stage (8, 16, 32 channels), global
    average pooling and one linear layer."""
    return nn.Sequential(
        *_block(in_shape[0], 8, 1),
        *_block(8, 16, 2),
        *_block(16, 16, 1),
        *_block(16, 32, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, num_classes),
    )
