"""Model factories for ``[model] factory`` (``fogsim.device.factory``), as a user
writes them: ``make(in_shape, num_classes) -> nn.Module``. Two that fogsim trains
(LeNet-5, a small ResNet-like CNN without skip connections) and some it must refuse,
each for a reason its message names."""

from __future__ import annotations

import torch
from torch import nn

# shipped in fogsim.device.zoo (scenarios name them there); re-exported for the tests
from fogsim.device.zoo import lenet5, resnet_like  # noqa: F401


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


def reflect_padded(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Refused: a reflect-padded conv first copies its padded input (not replayed)."""
    c, h, w = in_shape
    return nn.Sequential(
        nn.Conv2d(c, 4, 3, padding=1, padding_mode="reflect"),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * h * w, num_classes),
    )


def even_same_padded(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Refused: ``padding="same"`` with an even kernel pads one side more, which PyTorch
    does on a padded copy of the input (not replayed)."""
    c, h, w = in_shape
    return nn.Sequential(
        nn.Conv2d(c, 4, 4, padding="same"),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * h * w, num_classes),
    )


class _FixedView(nn.Module):
    """The PyTorch tutorial's habit: a flatten to a hard-coded size."""

    def __init__(self, c: int, h: int, w: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, 8, 5)
        self.fc = nn.Linear(8 * (h - 4) * (w - 4), num_classes)
        self.flat = 8 * (h - 4) * (w - 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).view(-1, self.flat))


def fixed_view(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Refused: runs dense, but not narrowed (its view's size is the dense one)."""
    return _FixedView(*in_shape, num_classes)


class _Reshaped(nn.Module):
    def __init__(self, c: int, h: int, w: int, num_classes: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(c * h * w, 16), nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.reshape(x.shape[0], -1))))


def reshaped(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Refused: an op (``Tensor.reshape``) the memory replay has no rule for."""
    return _Reshaped(*in_shape, num_classes)


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
