"""Your own model: ``[model] factory = "module:function"``, checked before any run.

The function is called as ``make(in_shape, num_classes) -> torch.nn.Module``:
``in_shape`` is ``(channels, height, width)`` of one image (``[data] image_shape``),
``num_classes`` the labels (``[data] num_classes``), so one factory serves every data
set; it must return a fresh, randomly initialised module (fogsim seeds torch before
calling it) whose forward maps a float batch ``(B, C, H, W)`` to logits
``(B, num_classes)``.

Why the check is strict: every part of fogsim that narrows a model (the sub-model
strategies, DynHP) reads its neuron groups from its arrays alone, as a chain
(``fogsim.device.chain.ChainLayout``); a model whose arrays look like a chain but
are not one (a skip connection between layers of equal width, shared weights,
a grouped convolution) would be sliced wrongly without any error. So the module is
traced with ``torch.fx`` (``fogsim.device.chain.check_model``) and refused, naming
the layer, unless it is ``Linear``, ``Conv2d`` and ``BatchNorm`` layers in a line with
activations, pooling, flatten and dropout between them; its arrays must then form a
chain, and its output must have ``num_classes`` logits. Its memory must be known too:
every op has a rule in the replay, no conv pads a copy of its input (a non-zero
``padding_mode``, an uneven ``padding="same"``), and the model runs narrowed (every
group at one neuron: a ``view`` to a size written into the model does not).

Its memory figure (:class:`FactoryArch`) is modelled as FogNet's is, by replaying a
training step allocation by allocation on the model's own layers at any widths
(``fogsim.device.chain_replay``, checked against the process heap), so the sub-model
strategies and DynHP narrow a factory model as they narrow a FogNet: pruning and
slicing read its neuron groups from its arrays (``fogsim.device.pruning``).

The module is imported from ``sys.path`` and the current directory (a user's models
live beside their scenario), as ``[strategy] module`` is. A check builds the model
once per (factory, image shape, classes) and process (:func:`checked`).
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from fogsim.device.arch import Arch
from fogsim.device.chain import ChainError, ChainLayout, assign, check_model
from fogsim.device.chain_replay import chain_phases
from fogsim.device.chain_trace import fx_trace
from fogsim.device.models import FogNet, model_from_state
from fogsim.device.models import macs_per_sample as fognet_macs

FACTORY_PATTERN = r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$"
Shape = tuple[int, int, int]


class FactoryError(ValueError):
    """The factory cannot be imported or called, or its module is not one fogsim can
    narrow (the message says which and why)."""


@dataclass(frozen=True)
class FactoryModel:
    """What the check learnt of a factory's dense model: its arrays' shapes
    (``state_dict`` order), its neuron groups' layout and its parameter count."""

    ref: str
    in_shape: Shape
    num_classes: int
    shapes: tuple[tuple[str, tuple[int, ...]], ...]
    layout: ChainLayout
    params: tuple[str, ...]  # the arrays that are parameters (the rest are buffers)
    modules: int  # how many modules it is built of, itself included

    @property
    def widths(self) -> tuple[int, ...]:
        """Every neuron group's width in the dense model, in forward order."""
        return self.layout.widths

    @property
    def num_params(self) -> int:
        shapes = dict(self.shapes)
        return sum(math.prod(shapes[k]) for k in self.params)


def load_factory(ref: str) -> Callable[..., nn.Module]:
    """The function ``ref`` (``"module:function"``) names."""
    module_name, _, attr = ref.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # a missing module or one that fails while importing
        raise FactoryError(f"cannot import {module_name!r}: {type(e).__name__}: {e}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise FactoryError(f"module {module_name!r} has no function {attr!r}")
    return fn


def build(ref: str, in_shape: Sequence[int], num_classes: int, seed: int = 0) -> nn.Module:
    """A fresh dense model from factory ``ref``, torch seeded with ``seed`` first (the
    initial global model is the same on every run of a scenario)."""
    fn = load_factory(ref)
    torch.manual_seed(seed)
    try:
        model = fn(tuple(in_shape), num_classes)
    except Exception as e:
        raise FactoryError(
            f"{ref}(in_shape={tuple(in_shape)}, num_classes={num_classes}) raised "
            f"{type(e).__name__}: {e}"
        ) from None
    if not isinstance(model, nn.Module):
        raise FactoryError(f"{ref} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


@functools.lru_cache(maxsize=32)
def checked(ref: str, in_shape: Shape, num_classes: int) -> FactoryModel:
    """Build factory ``ref``'s model and check it (module doc); raises
    :class:`FactoryError` saying why it cannot be used."""
    model = build(ref, in_shape, num_classes)
    try:
        check_model(model, in_shape)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        layout = ChainLayout.of(shapes)
    except ChainError as e:
        raise FactoryError(f"{ref}: {e}") from None
    except Exception as e:  # torch.fx cannot trace it (data-dependent control flow, ...)
        why = f"{type(e).__name__}: {e}"
        raise FactoryError(f"{ref}: cannot be traced with torch.fx: {why}") from None
    with torch.no_grad():
        out = model.eval()(torch.zeros(2, *in_shape))
    if tuple(out.shape) != (2, num_classes):
        raise FactoryError(
            f"{ref}: gives outputs of shape {tuple(out.shape)[1:]} per image; "
            f"expected ({num_classes},) logits (num_classes = {num_classes})"
        )
    _check_narrowed(ref, in_shape, num_classes, shapes, layout)
    try:  # every op has a memory rule (the replay's trace)
        fx_trace(model, tuple(in_shape))
    except ChainError as e:
        raise FactoryError(f"{ref}: {e}") from None
    params = tuple(name for name, _ in model.named_parameters())
    modules = sum(1 for _ in model.modules())
    return FactoryModel(ref, in_shape, num_classes, tuple(shapes.items()), layout, params, modules)


def meta_model(
    ref: str, in_shape: Shape, num_classes: int, shapes: Mapping[str, tuple[int, ...]]
) -> nn.Module:
    """Factory ``ref``'s model with arrays of ``shapes`` on the meta device (shapes
    only, no storage)."""
    with torch.device("meta"):
        model = build(ref, in_shape, num_classes)
        return assign(model, {k: torch.empty(v) for k, v in shapes.items()})


def _check_narrowed(
    ref: str, in_shape: Shape, num_classes: int, shapes: dict, layout: ChainLayout
) -> None:
    """Refuse a model that runs dense but not narrowed, as strategies and DynHP
    narrow it (every neuron group at 1 neuron, on the meta device: shapes only), e.g.
    a ``view`` to a hard-coded size."""
    narrowest = layout.shapes_at(shapes, [1] * len(layout.widths))
    try:
        with torch.device("meta"):
            meta_model(ref, in_shape, num_classes, narrowest)(torch.zeros(2, *in_shape))
    except RuntimeError as e:
        raise FactoryError(
            f"{ref}: does not run narrowed (every neuron group at 1, as fogsim narrows "
            f"models to fit budgets): {e}; a size written into the model (e.g. "
            "x.view(-1, 256)) is the usual cause: use torch.flatten(x, 1)"
        ) from None


@dataclass(frozen=True)
class FactoryArch:
    """A factory model's shape facts where fogsim's own models have an ``Arch``
    (``fogsim.device.arch``): the memory model, the strategies and DynHP ask it the
    same questions, at the dense widths or narrowed ones (``sub``: one width per
    neuron group, as a sub-model strategy or DynHP makes them)."""

    ref: str
    in_shape: Shape
    num_classes: int
    sub: tuple[int, ...] | None = None  # the widths of a narrowed model; None: dense

    @property
    def model(self) -> FactoryModel:
        return checked(self.ref, self.in_shape, self.num_classes)

    @property
    def widths(self) -> list[int]:
        return list(self.sub if self.sub is not None else self.model.widths)

    @property
    def output_names(self) -> tuple[str, str]:
        """The output layer's weight and bias in the model's ``state_dict`` (as
        ``Arch.output_names``; the bias's name even where the layer has none)."""
        weight = [k for k, shape in self.model.shapes if len(shape) in (2, 4)][-1]
        return weight, weight.rsplit(".", 1)[0] + ".bias"

    def with_widths(self, widths: Sequence[int]) -> FactoryArch:
        widths = tuple(int(w) for w in widths)
        dense = self.model.widths
        fits = len(widths) == len(dense) and all(map(int.__le__, widths, dense))
        if not fits or min(widths, default=1) < 1:
            raise ValueError(f"{self.ref}: widths {list(widths)} do not narrow {list(dense)}")
        return replace(self, sub=None if widths == dense else widths)

    def scaled(self, fraction: float) -> FactoryArch:
        """Every group cut to ``ceil(fraction * width)`` neurons (at least 1)."""
        return self.with_widths(self.model.layout.scaled(fraction))

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every array's shape at these widths (``state_dict`` order)."""
        return self.model.layout.shapes_at(dict(self.model.shapes), self.widths)

    def param_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of every parameter, in ``model.parameters()`` order."""
        shapes = self.shapes()
        return [shapes[k] for k in self.model.params]

    def num_params(self) -> int:
        return sum(math.prod(s) for s in self.param_shapes())

    def object_counts(self) -> tuple[int, int]:
        """(modules, parameter and buffer tensors) of the model, as ``Arch``'s."""
        return self.model.modules, len(self.model.shapes)

    def phases(
        self, optimizer: str, dtype_bytes: int = 4, batch: int | None = None
    ) -> list[tuple[int, int]]:
        """``(fixed_bytes, bytes_per_sample)`` of one training step at every moment it
        may peak, replayed on the model's own layers (``fogsim.device.chain_replay``):
        at ``batch`` exactly, or (None) bounding every batch (a conv's algorithm
        depends on the batch: ``chain_replay.chain_phases``)."""
        return _phases(self, optimizer, dtype_bytes, batch)

    def meta_model(self) -> nn.Module:
        """The model at these widths on the meta device (shapes only, no storage)."""
        return meta_model(self.ref, self.in_shape, self.num_classes, self.shapes())

    def build(self, seed: int = 0) -> nn.Module:
        """A fresh dense model (the initial global model)."""
        return build(self.ref, self.in_shape, self.num_classes, seed)

    def from_state(self, state: Mapping[str, torch.Tensor]) -> nn.Module:
        """The model holding ``state``'s tensors, dense or narrowed, as its parameters
        and buffers (no copy)."""
        with torch.device("meta"):  # no storage, no random init: the weights come from state
            model = build(self.ref, self.in_shape, self.num_classes)
        return assign(model, state)


@functools.lru_cache(maxsize=4096)
def _phases(
    arch: FactoryArch, optimizer: str, dtype_bytes: int, batch: int | None
) -> list[tuple[int, int]]:
    """:meth:`FactoryArch.phases`, kept: a strategy asks per budget, DynHP per pruning."""
    return chain_phases(arch.meta_model(), arch.in_shape, optimizer, dtype_bytes, batch)


def load_model(arch: Arch | FactoryArch, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """The model of ``arch``'s kind holding ``state`` (no copy): a FogNet of the
    widths ``state`` has, or the factory's model."""
    if isinstance(arch, FactoryArch):
        return arch.from_state(state)
    return model_from_state(state, arch.in_shape)


def macs_per_sample(model: nn.Module, in_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass of any model fogsim trains: a FogNet's
    from its widths (the client counts every node's model twice a round, and on a
    54-image sensor a forward pass to count them costs ~19% of its training), any
    other chain model's with :func:`counted_macs`."""
    if isinstance(model, FogNet):
        return fognet_macs(model)
    return counted_macs(model, in_shape)


def counted_macs(model: nn.Module, in_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass of any chain model, read with forward
    hooks on its Linear and Conv2d layers over one zero image in evaluation mode (the
    model's mode is kept)."""
    macs = 0

    def count(layer: nn.Module, _inp: object, out: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(layer, nn.Linear):
            macs += layer.in_features * layer.out_features
        else:
            k = layer.kernel_size[0] * layer.kernel_size[1] * layer.in_channels // layer.groups
            macs += out[0].numel() * k

    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    hooks = [m.register_forward_hook(count) for m in layers]
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *in_shape, device=next(model.parameters()).device))
    finally:
        model.train(training)
        for h in hooks:
            h.remove()
    return macs
