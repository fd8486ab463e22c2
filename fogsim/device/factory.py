"""Your own model: ``[model] factory = "module:function"``, checked before any run.

The function is called as ``make(in_shape, num_classes) -> torch.nn.Module``:
``in_shape`` is ``(channels, height, width)`` of one image (``[data] image_shape``),
``num_classes`` the labels (``[data] num_classes``), so one factory serves every data
set; it must return a fresh, randomly initialised module (fogsim seeds torch before
calling it) whose forward maps a float batch ``(B, C, H, W)`` to logits
``(B, num_classes)``.

Why the check is strict: every part of fogsim that narrows a model (the sub-model
strategies, DynHP) reads its neuron groups from its arrays alone, as a chain
(``fogsim.flower.chain.ChainLayout``); a model whose arrays look like a chain but
are not one (a skip connection between layers of equal width, shared weights,
a grouped convolution) would be sliced wrongly without any error. So the module is
traced with ``torch.fx`` (``fogsim.flower.chain.check_model``) and refused, naming
the layer, unless it is ``Linear``, ``Conv2d`` and ``BatchNorm`` layers in a line with
activations, pooling, flatten and dropout between them; its arrays must then form a
chain, and its output must have ``num_classes`` logits.

The module is imported from ``sys.path`` and the current directory (a user's models
live beside their scenario), as ``[strategy] module`` is. A check builds the model
once per (factory, image shape, classes) and process (:func:`checked`).
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fogsim.flower.chain import ChainError, ChainLayout, check_model

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
