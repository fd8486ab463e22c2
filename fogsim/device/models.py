"""The networks fogsim trains: an MLP or a small CNN with explicit hidden widths.

A pruned (sub-)model is the same class with smaller widths, so the widths of any
model can be read back from its ``state_dict`` shapes (:func:`model_from_state`).
That is what lets devices exchange compact models of different sizes.

Hidden "neuron groups" are numbered in forward order: the conv channels first, then
the hidden units of the fully connected layers; a FogNet is a chain, and its groups
are read from its arrays as any chain model's (``fogsim.device.chain.ChainLayout``).
The output layer is never a group, so it is never pruned.

**Scaler** (HeteroFL, Diao et al. 2021): a sub-model whose group ``g`` holds
``w_g`` of the global model's ``W_g`` neurons can be told the global widths
(:func:`set_scaler`); in training mode it then multiplies the pre-activation of
every hidden group by ``W_g / w_g``, so that the next layer, which sees only ``w_g``
of its ``W_g`` inputs, gets inputs of the magnitude the global model gives it. In
evaluation mode (a deployed model) it is the identity, as in HeteroFL's ``Scaler``.
The scaling is in place on the layer's output (which neither a conv nor a linear
backward needs), so it costs no memory (``fogsim.device.memory`` holds unchanged).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from fogsim.device.chain import layer_of, layout_of

IMAGE_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
KERNEL = 5


class FogNet(nn.Module):
    """Conv blocks (conv 5x5 same-padding, ReLU, 2x2 max-pool) then an MLP head."""

    def __init__(
        self,
        channels: Sequence[int] = (),
        hidden: Sequence[int] = (300, 100),
        in_shape: tuple[int, int, int] = IMAGE_SHAPE,
        num_classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.num_classes = num_classes
        c_in, h, w = in_shape
        self.convs = nn.ModuleList()
        for c in channels:
            self.convs.append(nn.Conv2d(c_in, c, KERNEL, padding=KERNEL // 2))
            c_in, h, w = c, h // 2, w // 2
        sizes = [c_in * h * w, *hidden, num_classes]
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:], strict=False))

    @property
    def channels(self) -> list[int]:
        return [conv.out_channels for conv in self.convs]

    @property
    def hidden(self) -> list[int]:
        # not self.fcs[:-1]: slicing a ModuleList builds a new Module (the memory model
        # reads this after every pruning step)
        return [fc.out_features for fc in list(self.fcs)[:-1]]

    @property
    def widths(self) -> list[int]:
        """Width of every prunable neuron group, in forward order."""
        return self.channels + self.hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = nn.functional.max_pool2d(torch.relu(conv(x)), 2)
        x = x.flatten(1)
        for fc in list(self.fcs)[:-1]:
            x = torch.relu(fc(x))
        return self.fcs[-1](x)


def set_scaler(model: nn.Module, global_widths: Sequence[int]) -> None:
    """HeteroFL's Scaler (module doc) on ``model``, a FogNet or any chain model: a
    forward hook on the layer producing each neuron group multiplies its output by
    ``global_widths[g] / width`` in training mode, where ``width`` is the group's
    width at that forward (DynHP may narrow it between steps)."""
    layout = layout_of(model)
    for g, full in enumerate(global_widths):
        layer_of(model, layout.members(g)[0]).register_forward_hook(_scaler(full))


def _scaler(full: int) -> Callable[[nn.Module, object, torch.Tensor], torch.Tensor | None]:
    def hook(layer: nn.Module, _inputs: object, out: torch.Tensor) -> torch.Tensor | None:
        width = out.shape[1]
        if not layer.training or width == full:
            return None
        return out.mul_(full / width)  # in place: neither backward needs the output

    return hook


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs_per_sample(model: FogNet) -> int:
    """Multiply-accumulates of one forward pass, from the widths alone (no forward:
    ``factory.macs_per_sample`` uses this for every FogNet on the client's hot path)."""
    macs, (_, h, w) = 0, model.in_shape
    for conv in model.convs:
        k = conv.kernel_size[0] * conv.kernel_size[1]
        macs += conv.in_channels * conv.out_channels * k * h * w
        h, w = h // 2, w // 2
    return macs + sum(fc.in_features * fc.out_features for fc in model.fcs)


def train_flops(macs: float, samples: int) -> float:
    """FLOPs to train on ``samples`` examples of a model of ``macs`` per forward pass:
    3x the forward pass (forward 1x, backward 2x: gradients w.r.t. inputs and
    weights), 2 FLOPs per MAC."""
    return 6.0 * macs * samples


def model_from_state(
    state: Mapping[str, torch.Tensor],
    in_shape: tuple[int, int, int] = IMAGE_SHAPE,
) -> FogNet:
    """Build the FogNet whose widths match ``state`` and load it. The model adopts
    ``state``'s tensors as its parameters (no copy, no random init: a client builds
    one per message, so this is on the hot path)."""

    def weights(prefix: str) -> list[str]:
        keys = [k for k in state if k.startswith(prefix) and k.endswith(".weight")]
        return sorted(keys, key=lambda k: int(k.split(".")[1]))

    convs, fcs = weights("convs."), weights("fcs.")
    channels = [state[k].shape[0] for k in convs]
    widths = [state[k].shape[0] for k in fcs]
    with torch.device("meta"):  # no storage, no random init: the weights come from state
        model = FogNet(channels, widths[:-1], in_shape, num_classes=widths[-1])
    model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, assign=True)
    return model
