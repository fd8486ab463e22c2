"""``[model]``: fogsim's own network (``arch``, ``hidden``, ``channels``: a FogNet) or
your own (``factory``, ``fogsim.device.factory``), and what each can be trained with.

A factory model is checked here, where the data's image shape is known: a model
that cannot be narrowed safely, or does not import, is refused at ``validate``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, model_validator

from fogsim.device.arch import Arch
from fogsim.device.factory import FACTORY_PATTERN, FactoryArch, FactoryError, checked
from fogsim.scenario.base import Section

if TYPE_CHECKING:
    from fogsim.scenario.data_section import DataSection

MAX_PARAMS = 100_000_000  # the dense model lives on the server and on every client


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
        blocks = int(math.log2(min(h, w)))  # each 2x2 pool halves the image
        if len(self.conv_channels) > blocks:
            return [
                f"model.channels: {len(self.channels)} conv blocks pool the {h}x{w} image "
                f"away; at most {blocks}"
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
