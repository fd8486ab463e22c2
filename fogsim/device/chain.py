"""Neuron groups of any chain network, read from its arrays alone (no model class).

A stock Flower ``ServerApp`` holds only an ``ArrayRecord`` (a ``state_dict``), so the
sub-model strategies of ``fogsim.flower.strategies`` find the prunable neuron groups
from the arrays' order and shapes, as a chain: every weight (2-D ``Linear``, 4-D
``Conv2d``) in ``state_dict`` order is one layer; the output rows of every layer but
the last form a group, read by the next layer's input columns (a whole number of
columns each: several where a flatten turns a conv channel into pixels). The 1-D
arrays after a layer (its bias; a batch norm's weight, bias, running mean and
variance) of the group's width belong to the group; 0-D ones (``num_batches_tracked``)
are whole. The last layer's outputs (the classes) are never pruned.

This covers what PyTorch builds from ``Linear``, ``Conv2d``, ``BatchNorm``,
activations, pooling and ``Flatten`` in a line (an MLP, LeNet-5, a VGG-like or
skip-less ResNet-like CNN); a network whose arrays break the chain (a skip
connection, grouped convolutions, a weight whose input matches no group) is refused,
naming the array. A skip connection between groups of equal widths leaves no trace in
the arrays: :func:`check_model` traces the model itself with ``torch.fx`` and refuses
it, naming the layer.

``kept`` is one sorted int array of global indices per group, as everywhere in
fogsim (``fogsim.device.pruning``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

Kept = list[np.ndarray]


class ChainError(ValueError):
    """The arrays are not a chain of layers this module can slice."""


@dataclass(frozen=True)
class Role:
    """How one array is sliced: along axis 0 by group ``out`` (None: whole), along
    axis 1 by group ``inp`` with ``span`` columns per neuron (None: whole)."""

    out: int | None
    inp: int | None = None
    span: int = 1


@dataclass(frozen=True)
class ChainLayout:
    """Each array's :class:`Role`, and every group's global width."""

    roles: dict[str, Role]
    widths: tuple[int, ...]

    @classmethod
    def of(cls, shapes: Mapping[str, Sequence[int]]) -> ChainLayout:
        """The layout of arrays named and shaped ``shapes`` (``state_dict`` order)."""
        layers = [k for k, s in shapes.items() if len(s) in (2, 4)]
        if len(layers) < 2:
            raise ChainError(f"need at least two Linear/Conv2d weights, found {layers}")
        roles: dict[str, Role] = {}
        widths: list[int] = []
        group: int | None = None  # the group the arrays seen last produce
        for name, shape in shapes.items():
            if len(shape) in (2, 4):
                roles[name], group = cls._layer(name, tuple(shape), widths, group, layers)
            elif len(shape) == 0:
                roles[name] = Role(None)
            elif len(shape) == 1:
                roles[name] = cls._vector(name, shape[0], widths, group, layers)
            else:
                raise ChainError(f"array {name!r} of shape {tuple(shape)}: not a layer")
        return cls(roles, tuple(widths))

    @staticmethod
    def _layer(
        name: str, shape: tuple[int, ...], widths: list[int], group: int | None, layers: list[str]
    ) -> tuple[Role, int | None]:
        last = name == layers[-1]
        inp, span = None, 1
        if group is not None:
            if shape[1] % widths[group]:
                raise ChainError(
                    f"array {name!r} of shape {shape}: its {shape[1]} inputs are not a "
                    f"whole number per neuron of the {widths[group]} before it (a skip "
                    "connection or grouped convolution breaks the chain)"
                )
            inp, span = group, shape[1] // widths[group]
            if len(shape) == 4 and span != 1:
                raise ChainError(f"array {name!r}: a conv reading {span} columns per channel")
        if last:
            return Role(None, inp, span), None
        widths.append(shape[0])
        return Role(len(widths) - 1, inp, span), len(widths) - 1

    @staticmethod
    def _vector(
        name: str, size: int, widths: list[int], group: int | None, layers: list[str]
    ) -> Role:
        if group is None:
            if name.rsplit(".", 1)[0] == layers[-1].rsplit(".", 1)[0] or not widths:
                return Role(None)  # the output layer's bias (or an input norm)
            raise ChainError(f"array {name!r} follows no layer's neurons")
        if size != widths[group]:
            raise ChainError(
                f"array {name!r} has {size} entries after a layer of {widths[group]} neurons"
            )
        return Role(group)

    def members(self, group: int) -> list[str]:
        """The arrays sliced along axis 0 by ``group``: its producer layer's weight
        first, then its bias and any batch norm's arrays after it."""
        return [k for k, r in self.roles.items() if r.out == group]

    def reader(self, group: int) -> tuple[str, int]:
        """The next layer's weight, which reads ``group``, and its columns per neuron."""
        name = next(k for k, r in self.roles.items() if r.inp == group)
        return name, self.roles[name].span

    def shapes_at(
        self, shapes: Mapping[str, Sequence[int]], widths: Sequence[int]
    ) -> dict[str, tuple[int, ...]]:
        """The arrays' shapes when every group ``g`` is ``widths[g]`` wide."""
        out = {}
        for name, shape in shapes.items():
            role, shape = self.roles[name], list(shape)
            if role.out is not None:
                shape[0] = widths[role.out]
            if role.inp is not None:
                shape[1] = widths[role.inp] * role.span
            out[name] = tuple(shape)
        return out

    def scaled(self, fraction: float) -> list[int]:
        """Every group cut to ``ceil(fraction * width)`` neurons (at least 1)."""
        return [max(1, math.ceil(fraction * w)) for w in self.widths]

    def axes(self, name: str, shape: Sequence[int], kept: Kept) -> list[np.ndarray]:
        """Global indices along each axis of array ``name`` (global ``shape``)."""
        role = self.roles[name]
        axes = [np.arange(n) for n in shape]
        if role.out is not None:
            axes[0] = np.asarray(kept[role.out])
        if role.inp is not None:
            k = np.asarray(kept[role.inp])
            axes[1] = (k[:, None] * role.span + np.arange(role.span)[None, :]).reshape(-1)
        return axes

    def index(self, shapes: Mapping[str, Sequence[int]], kept: Kept) -> dict[str, tuple]:
        """Per array, the numpy index of the global elements a sub-model holds."""
        out = {}
        for name, shape in shapes.items():
            axes = self.axes(name, shape, kept)
            picked = [d for d, a in enumerate(axes) if len(a) != shape[d]]
            grids = dict(zip(picked, np.ix_(*(axes[d] for d in picked)), strict=True))
            out[name] = tuple(grids.get(d, slice(None)) for d in range(len(shape)))
        return out

    def extract(self, state: Mapping[str, np.ndarray], kept: Kept) -> dict[str, np.ndarray]:
        """The sub-model of ``state`` holding the neurons ``kept``: compact copies of the
        arrays it narrows, views of those it holds whole (whoever keeps them copies)."""
        index = self.index({k: v.shape for k, v in state.items()}, kept)
        return {k: np.asarray(v[index[k]], order="C") for k, v in state.items()}

    def sub_shapes(self, shapes: Mapping[str, Sequence[int]], kept: Kept) -> dict[str, tuple]:
        """The shapes of the sub-model holding ``kept``."""
        return {k: tuple(len(a) for a in self.axes(k, s, kept)) for k, s in shapes.items()}


def assign(model: nn.Module, state: Mapping[str, torch.Tensor | np.ndarray]) -> nn.Module:
    """Make ``state``'s arrays ``model``'s parameters and buffers, whatever their shapes
    (``load_state_dict`` refuses other shapes): a chain model built at its dense widths
    (on the meta device: no storage, no random init) becomes the sub-model ``state``
    holds, without a copy. The layers' size attributes (``in_features``,
    ``out_channels``, ``num_features``, ...) follow the new shapes, so ``repr`` and
    code reading them see the sub-model. Returns ``model``."""
    for name, value in state.items():
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner)
        tensor = torch.as_tensor(value)
        if leaf in module._parameters:
            grad = tensor.is_floating_point()
            module._parameters[leaf] = nn.Parameter(tensor, requires_grad=grad)
        elif leaf in module._buffers:
            module._buffers[leaf] = tensor
        else:
            raise ChainError(f"array {name!r} is not a parameter or buffer of the model")
    for module in model.modules():
        resize(module)
    return model


def resize(module: nn.Module) -> None:
    """Set a layer's size attributes from its arrays' shapes (after narrowing)."""
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.Conv2d):
        module.out_channels, module.in_channels = module.weight.shape[:2]
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        sized = module.weight if module.weight is not None else module.running_mean
        if sized is not None:
            module.num_features = sized.shape[0]


@functools.lru_cache(maxsize=1024)
def _layout(shapes: tuple[tuple[str, tuple[int, ...]], ...]) -> ChainLayout:
    return ChainLayout.of(dict(shapes))


def layout_of(shapes: Mapping[str, Sequence[int]] | nn.Module) -> ChainLayout:
    """The :class:`ChainLayout` of arrays shaped ``shapes`` (or of a model's
    ``state_dict``), cached: the same shapes come back every round and every step."""
    if isinstance(shapes, nn.Module):
        shapes = {k: v.shape for k, v in shapes.state_dict().items()}
    return _layout(tuple((k, tuple(s)) for k, s in shapes.items()))


def widths_of(model: nn.Module) -> tuple[int, ...]:
    """Every neuron group's width in ``model`` as it is now (narrowed or not)."""
    return layout_of(model).widths


def layer_of(model: nn.Module, array: str) -> nn.Module:
    """The module holding array ``array`` (a ``state_dict`` name)."""
    return model.get_submodule(array.rpartition(".")[0])


# what a chain may hold between its layers: one tensor in, one out, no weights to tie
PASS_THROUGH = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Identity,
)
LAYERS = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)


def check_model(model: nn.Module, input_shape: Sequence[int]) -> None:
    """Refuse, naming the layer, a model whose arrays :class:`ChainLayout` would slice
    wrongly: traced with ``torch.fx`` on a batch of ``input_shape`` inputs, every
    module must be a :data:`LAYERS` or :data:`PASS_THROUGH` one (a convolution not
    grouped), used once, every operation must read one tensor (an ``add`` or ``cat``
    of two is a skip connection, which ties neuron groups the arrays do not show),
    and the layers must run in their ``state_dict`` order. The arrays alone cannot
    tell a residual block from a chain whose widths happen to match: call this where
    the model is known (the example ``ServerApp`` does)."""
    graph = fx.symbolic_trace(model)
    example = torch.zeros(2, *input_shape)
    training = {m: m.training for m in model.modules()}
    graph.eval()  # a shape check must not move batch norm's running statistics (it did)
    try:
        with torch.no_grad():
            ShapeProp(graph).propagate(example)
    except RuntimeError as e:
        cause = e.__cause__ or e
        raise ChainError(
            f"the model does not run on inputs of shape {tuple(example.shape)}: {cause}"
        ) from None
    finally:
        for m, mode in training.items():
            m.training = mode
    modules = dict(graph.named_modules())
    used: list[str] = []
    for node in graph.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        tensors = [a for a in node.all_input_nodes if _is_tensor(a)]
        if len(tensors) > 1:
            names = ", ".join(str(a) for a in tensors)
            raise ChainError(
                f"{node.name} ({node.target}){_where(node)} joins {names}: a skip connection"
            )
        if node.op != "call_module":
            continue
        module = modules[node.target]
        if not isinstance(module, LAYERS + PASS_THROUGH):
            raise ChainError(f"layer {node.target!r} ({type(module).__name__}) is not supported")
        if isinstance(module, nn.Conv2d):
            _check_conv(node.target, module)
        if isinstance(module, LAYERS):
            if node.target in used:
                raise ChainError(f"layer {node.target!r} is used twice (shared weights)")
            used.append(node.target)
    order = [name for name, m in model.named_modules() if isinstance(m, LAYERS)]
    if used != order:
        raise ChainError(f"layers run in the order {used}, their arrays are stored as {order}")


def _check_conv(name: str, conv: nn.Conv2d) -> None:
    """Refuse a convolution whose memory the replay does not know: grouped, or padded
    on a copy of its input (PyTorch pads ``padding_mode`` other than zeros, and
    ``padding="same"`` that is uneven, as with an even kernel, by copying the input
    first, and the conv keeps the copy for backward: an independent heap check
    measured a reflect-padded CNN 10-15% above the replay, and DynHP over budget)."""
    if conv.groups != 1:
        raise ChainError(f"layer {name!r}: a grouped convolution")
    if conv.padding_mode != "zeros":
        raise ChainError(
            f"layer {name!r}: padding_mode {conv.padding_mode!r} pads a copy of the input, "
            "whose memory is not modelled; use padding_mode='zeros'"
        )
    spans = zip(conv.kernel_size, conv.dilation, strict=True)
    if conv.padding == "same" and any(d * (k - 1) % 2 for k, d in spans):
        raise ChainError(
            f"layer {name!r}: padding='same' with kernel {conv.kernel_size} pads one side "
            "more, on a copy of the input whose memory is not modelled; use an odd kernel "
            "or explicit padding"
        )


def _where(node: fx.Node) -> str:
    """`` in layer 'name' (Class)``: the innermost module whose forward holds ``node``
    (what a user can find in their model), or nothing at the top level."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, cls = list(stack.values())[-1]
    return f" in layer {path!r} ({getattr(cls, '__name__', cls)})"


def _is_tensor(node: fx.Node) -> bool:
    return isinstance(node.meta.get("tensor_meta"), TensorMetadata)
