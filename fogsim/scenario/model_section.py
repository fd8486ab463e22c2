"""``[model]``: fogsim's own network (``arch``, ``hidden``, ``channels``: a FogNet) or
your own (``factory``, ``fogsim.device.factory``), and what each can be trained with.

A factory model is checked here, where the data's image shape is known: a model
that cannot be narrowed safely, or does not import, is refused at ``validate``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, model_validator

from fogsim.device.arch import Arch
from fogsim.device.factory import FACTORY_PATTERN, FactoryArch, FactoryError, checked
from fogsim.device.models import KERNEL
from fogsim.scenario.base import Section

if TYPE_CHECKING:
    from fogsim.scenario.data_section import DataSection

MAX_PARAMS = 100_000_000  # the dense model lives on the server and on every client


def conv_blocks(h: int, w: int) -> int:
    """How many conv blocks a FogNet may have on ``h x w`` images: each 2x2 pool halves
    the image, and every conv's input must be at least as large as its kernel. Below
    that oneDNN trains the conv's weights with its gemm kernel, whose scratch buffers the
    memory model does not count (the heap: 1.1-1.9x the model for a 16-32 channel CNN
    on the 8x8 digits, and DynHP runs 8-13% over their budgets), where the blocked
    kernel it models runs for every input at least the kernel's size."""
    blocks = 0
    while min(h, w) >> blocks >= KERNEL:
        blocks += 1
    return blocks


class ModelSection(Section):
    arch: Literal["mlp", "cnn"] = "mlp"
    hidden: list[Annotated[int, Field(ge=1)]] = [300, 100]
    channels: list[Annotated[int, Field(ge=1)]] = [16, 32]
    factory: str | None = Field(
        None,
        pattern=FACTORY_PATTERN,
        description="your own model instead of arch: 'module:function', called as "
        "function(in_shape, num_classes) -> torch.nn.Module (fogsim.device.factory)",
    )

    @model_validator(mode="after")
    def _one_model(self) -> ModelSection:
        # a field set to other than its default (a resolved scenario, as scenario.json
        # and the clients' spec hold it, lists every field at its default)
        given = sorted(
            f
            for f in ("arch", "hidden", "channels")
            if getattr(self, f) != type(self).model_fields[f].default
        )
        if self.factory is not None and given:
            raise ValueError(
                f"factory = {self.factory!r} and {', '.join(given)}: the factory builds the "
                "whole model; give one of them"
            )
        return self

    @property
    def conv_channels(self) -> tuple[int, ...]:
        return tuple(self.channels) if self.arch == "cnn" else ()

    def shape_for(self, data: DataSection) -> Arch | FactoryArch:
        """The dense global architecture on ``data``'s images, as the memory model sees
        it (``Scenario.arch``): a FogNet's, or the factory model's."""
        in_shape = (data.image_shape[0], data.image_shape[1], data.image_shape[2])
        if self.factory is not None:
            return FactoryArch(self.factory, in_shape, data.num_classes)
        return Arch(self.conv_channels, tuple(self.hidden), in_shape, data.num_classes)

    def num_params(self, data: DataSection) -> int:
        """Parameters of the dense model on ``data``'s images."""
        if self.factory is not None:
            in_shape = (data.image_shape[0], data.image_shape[1], data.image_shape[2])
            return checked(self.factory, in_shape, data.num_classes).num_params
        return self.shape_for(data).num_params()

    def problems(self, data: DataSection) -> list[str]:
        """Why the model cannot be built on ``data``'s images (none: it can)."""
        if self.factory is not None:
            return self._factory_problems(data)
        h, w = data.image_shape[1:]
        if len(self.conv_channels) > (blocks := conv_blocks(h, w)):
            n = len(self.channels)
            return [
                f"model.channels: {n} conv blocks on the {h}x{w} image give conv {n} a "
                f"{h >> (n - 1)}x{w >> (n - 1)} input, smaller than its {KERNEL}x{KERNEL} "
                f"kernel, which the memory model does not cover; at most {blocks}"
            ]
        if (n := self.shape_for(data).num_params()) > MAX_PARAMS:
            return [f"model: the dense model has {n:,} parameters; at most {MAX_PARAMS:,}"]
        return []

    def _factory_problems(self, data: DataSection) -> list[str]:
        in_shape = (data.image_shape[0], data.image_shape[1], data.image_shape[2])
        try:
            model = checked(self.factory, in_shape, data.num_classes)
        except FactoryError as e:
            return [f"model.factory: {self.factory!r}: {str(e).removeprefix(self.factory + ': ')}"]
        if model.num_params > MAX_PARAMS:
            return [
                f"model.factory: the dense model has {model.num_params:,} parameters; "
                f"at most {MAX_PARAMS:,}"
            ]
        return []
