"""The shape of a FogNet as plain numbers: what the memory model and the strategies need.

An :class:`Arch` is cheaper to pass around and to hash than a model: the memory model
(``fogsim.device.memory``) evaluates it per client and round, and strategies cache
per-budget answers on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fogsim.device.models import IMAGE_SHAPE, NUM_CLASSES, FogNet


@dataclass(frozen=True)
class Arch:
    """The shape facts the memory model needs; cheaper to pass around than a model."""

    channels: tuple[int, ...]
    hidden: tuple[int, ...]
    in_shape: tuple[int, int, int] = IMAGE_SHAPE
    num_classes: int = NUM_CLASSES

    @classmethod
    def of(cls, model: FogNet | Arch) -> Arch:
        if isinstance(model, Arch):
            return model
        return cls(tuple(model.channels), tuple(model.hidden), model.in_shape, model.num_classes)

    @property
    def output_names(self) -> tuple[str, str]:
        """The output layer's weight and bias in a FogNet's ``state_dict``."""
        return f"fcs.{len(self.hidden)}.weight", f"fcs.{len(self.hidden)}.bias"

    @property
    def widths(self) -> list[int]:
        """Every prunable neuron group's width, conv channels first (as FogNet)."""
        return [*self.channels, *self.hidden]

    def with_widths(self, widths: list[int] | tuple[int, ...]) -> Arch:
        n = len(self.channels)
        return Arch(tuple(widths[:n]), tuple(widths[n:]), self.in_shape, self.num_classes)

    def scaled(self, fraction: float) -> Arch:
        """Every group cut to ``ceil(fraction * width)`` neurons (at least 1)."""
        return self.with_widths([max(1, math.ceil(fraction * w)) for w in self.widths])

    def param_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of every parameter, in ``model.parameters()`` order."""
        c_in, h, w = self.in_shape
        shapes: list[tuple[int, ...]] = []
        for c in self.channels:
            shapes += [(c, c_in, 5, 5), (c,)]
            c_in, h, w = c, h // 2, w // 2
        sizes = [c_in * h * w, *self.hidden, self.num_classes]
        for a, b in zip(sizes, sizes[1:], strict=False):
            shapes += [(b, a), (b,)]
        return shapes

    def num_params(self) -> int:
        return sum(math.prod(s) for s in self.param_shapes())

    def object_counts(self) -> tuple[int, int]:
        """(modules, parameter and buffer tensors) of the FogNet: itself, its two
        ModuleLists and a module of two parameters per layer (the memory model counts
        their objects, ``memory.object_bytes``)."""
        layers = len(self.channels) + len(self.hidden) + 1
        return 3 + layers, 2 * layers
