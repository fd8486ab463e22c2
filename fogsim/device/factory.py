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
chain, and its output must have ``num_classes`` logits.

Its memory figure (:class:`FactoryArch`) is measured, not modelled: fogsim's memory
model replays FogNet's step op by op (``fogsim.device.replay``), and no such replay
exists for any chain yet, so the heap counter (``fogsim.device.heap``) measures the
dense model's step at a few batches once (``fogsim.device.heap.memory_table``) and a batch between
them is interpolated (:func:`interpolate`). That serves a dense model only: the
sub-model strategies and DynHP would need a figure at any widths, so they are refused
for factory models (``fogsim.scenario.model_section``).

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
from dataclasses import dataclass

import torch
from torch import nn

from fogsim.device.arch import Arch
from fogsim.device.chain import ChainError, ChainLayout, check_model
from fogsim.device.models import model_from_state

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
    num_params: int

    @property
    def widths(self) -> tuple[int, ...]:
        """Every neuron group's width in the dense model, in forward order."""
        return self.layout.widths


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
    n = sum(p.numel() for p in model.parameters())
    return FactoryModel(ref, in_shape, num_classes, tuple(shapes.items()), layout, n)


# --- the memory figure: the heap counter, measured once per model and kept ------------
MEMORY_MARGIN = 1.02  # over the interpolated heap: run-to-run spread (< 0.1 % seen)


def table_batches(largest: int) -> tuple[int, ...]:
    """The batches the heap is measured at: powers of two up to ``largest``, and it."""
    out, b = [], 1
    while b < largest:
        out.append(b)
        b *= 2
    return (*out, largest)


def interpolate(table: Sequence[tuple[int, int]], batch: int) -> int:
    """Modelled bytes at ``batch`` from measured ``(batch, bytes)`` points: linear
    between the two around it, times :data:`MEMORY_MARGIN`. A step's memory is the
    largest of affine functions of the batch (memory.py), so convex, and the chord
    between two measured batches lies above it: never under the heap between them.
    A batch outside the table is refused, as extrapolating a convex function can
    fall under it."""
    pts = sorted(table)
    if not pts[0][0] <= batch <= pts[-1][0]:
        raise ValueError(
            f"batch {batch}: the factory model's memory was measured for batches "
            f"{pts[0][0]}..{pts[-1][0]} only"
        )
    for (b0, m0), (b1, m1) in zip(pts, pts[1:] + pts[-1:], strict=True):
        if b0 <= batch <= b1:
            m = m0 if b1 == b0 else m0 + (m1 - m0) * (batch - b0) / (b1 - b0)
            return math.ceil(m * MEMORY_MARGIN)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class FactoryArch:
    """A factory model's shape facts where fogsim's own models have an ``Arch``
    (``fogsim.device.arch``): the memory model, the strategies and the clients ask it
    the same questions. Its memory figure is the heap counter's (:func:`interpolate`
    over ``table``, measured for optimizer ``kind``), not a replay of the step.

    Trained dense only: every width fraction is the dense model (:meth:`scaled`), as
    the sub-model strategies and DynHP are refused for factory models at validate."""

    ref: str
    in_shape: Shape
    num_classes: int
    kind: str
    table: tuple[tuple[int, int], ...]

    @property
    def model(self) -> FactoryModel:
        return checked(self.ref, self.in_shape, self.num_classes)

    @property
    def widths(self) -> list[int]:
        return list(self.model.widths)

    @property
    def output_names(self) -> tuple[str, str]:
        """The output layer's weight and bias in the model's ``state_dict`` (as
        ``Arch.output_names``; the bias's name even where the layer has none)."""
        weight = [k for k, shape in self.model.shapes if len(shape) in (2, 4)][-1]
        return weight, weight.rsplit(".", 1)[0] + ".bias"

    def scaled(self, fraction: float) -> FactoryArch:
        """The dense model, whatever ``fraction``: factory models are not narrowed."""
        return self

    def with_widths(self, widths: Sequence[int]) -> FactoryArch:
        if list(widths) != self.widths:
            raise ValueError(f"{self.ref}: factory models train dense only, not {list(widths)}")
        return self

    def param_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of every parameter, in ``model.parameters()`` order."""
        with torch.device("meta"):
            model = build(self.ref, self.in_shape, self.num_classes)
        return [tuple(p.shape) for p in model.parameters()]

    def num_params(self) -> int:
        return self.model.num_params

    def training_memory(self, batch: int, kind: str) -> int:
        """Modelled peak bytes of a training step at ``batch`` (class doc)."""
        if kind != self.kind:
            raise ValueError(f"{self.ref}: memory measured for {self.kind!r}, not {kind!r}")
        return interpolate(self.table, batch)

    @property
    def largest(self) -> int:
        """The largest batch measured."""
        return max(b for b, _ in self.table)

    def max_batch(self, budget: int, kind: str, cap: int) -> int:
        """Largest batch up to ``cap`` whose modelled memory fits ``budget`` (0: none)."""
        fits = [b for b in range(1, cap + 1) if self.training_memory(b, kind) <= budget]
        return fits[-1] if fits else 0

    def build(self, seed: int = 0) -> nn.Module:
        """A fresh dense model (the initial global model)."""
        return build(self.ref, self.in_shape, self.num_classes, seed)

    def from_state(self, state: Mapping[str, torch.Tensor]) -> nn.Module:
        """The model holding ``state``'s tensors as its parameters and buffers (no copy)."""
        with torch.device("meta"):  # no storage, no random init: the weights come from state
            model = build(self.ref, self.in_shape, self.num_classes)
        model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, assign=True)
        return model


def load_model(arch: Arch | FactoryArch, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """The model of ``arch``'s kind holding ``state`` (no copy): a FogNet of the
    widths ``state`` has, or the factory's model."""
    if isinstance(arch, FactoryArch):
        return arch.from_state(state)
    return model_from_state(state, arch.in_shape)


def macs_per_sample(model: nn.Module, in_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass of any chain model (its Linear and
    Conv2d layers, read with forward hooks on one zero image)."""
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
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *in_shape, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return macs
