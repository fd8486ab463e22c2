"""Model factories for ``[model] factory`` (``fogsim.device.factory``), as a user
writes them: ``make(in_shape, num_classes) -> nn.Module``. Two that fogsim trains
(LeNet-5, a small ResNet-like CNN without skip connections) and some it must refuse,
each for a reason its message names."""

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


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.conv(x))


def with_skip(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Refused: a residual block ties the groups of its input and output, which the
    arrays do not show (both are 8 wide)."""
    c, h, w = in_shape
    return nn.Sequential(
        nn.Conv2d(c, 8, 3, padding=1),
        _Residual(8),
        nn.Flatten(),
        nn.Linear(8 * h * w, num_classes),
    )


def with_layernorm(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Refused: a layer fogsim cannot narrow (``nn.LayerNorm``)."""
    c, h, w = in_shape
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(c * h * w, 32),
        nn.LayerNorm(32),
        nn.Linear(32, num_classes),
    )


def wrong_classes(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Refused: three logits whatever ``num_classes`` is."""
    c, h, w = in_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 16), nn.ReLU(), nn.Linear(16, 3))


def not_a_module(in_shape: tuple[int, int, int], num_classes: int) -> str:
    """Refused: returns no module."""
    return "lenet"


NOT_CALLABLE = 3


def narrow_cnn(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """A very narrow CNN (2 and 3 channels, 4 hidden units), where oneDNN's blocked
    copies dominate a step's memory: 3x3 convs, max- and average-pooling."""
    c, h, w = in_shape
    return nn.Sequential(
        nn.Conv2d(c, 2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2, 3, 3, stride=2),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(3 * ((h // 2 - 3) // 2 + 1) // 2 * (((w // 2 - 3) // 2 + 1) // 2), 4),
        nn.ReLU(),
        nn.Linear(4, num_classes),
    )
