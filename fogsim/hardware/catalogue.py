"""The device catalogue shipped with fogsim (``catalogue.toml``): devices and radios
with datasheet-derived figures, each with a note saying where it comes from.

A researcher starts from the hardware they have, not from a FLOP/s figure they must
invent: a device class names a catalogue ``device`` and ``radio`` and gets their
figures (:func:`class_figures`), overriding any of them. The figures are approximate
(order of magnitude, see the file's header); the catalogue says so, and every figure
has a source note, checked when the file is loaded.
"""

from __future__ import annotations

import difflib
import functools
import tomllib
from importlib import resources
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from fogsim.units import parse_bytes

CATALOGUE_FILE = "catalogue.toml"
KINDS = ("microcontroller", "single-board computer", "edge accelerator", "phone", "cloudlet")
# the figures a device gives a class, and those a radio gives it
DEVICE_FIGURES = ("memory", "flops", "active_w", "idle_w")
RADIO_FIGURES = (
    "up_mbps",
    "down_mbps",
    "latency_ms",
    "tx_j_per_byte",
    "rx_j_per_byte",
    "connect_j",
)
Note = Annotated[str, Field(min_length=10)]  # a source, not a placeholder


class Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DeviceSources(Entry):
    memory: Note
    flops: Note
    power: Note


class Device(Entry):
    description: str = Field(min_length=1)
    kind: Literal[KINDS]  # type: ignore[valid-type]
    radio: str = Field(description="the radio it has built in: its class's default radio")
    memory: Annotated[int, BeforeValidator(parse_bytes)] = Field(
        description="bytes a training step may use (the rest holds OS, firmware, stacks)"
    )
    flops: float = Field(gt=0, description="sustained FLOP/s of small fp32 training")
    active_w: float = Field(gt=0, description="whole device while training, W")
    idle_w: float = Field(ge=0, description="whole device while waiting, radio off, W")
    source: DeviceSources


class RadioSources(Entry):
    rate: Note
    latency: Note
    energy: Note


class Radio(Entry):
    description: str = Field(min_length=1)
    up_mbps: float = Field(gt=0)
    down_mbps: float = Field(gt=0)
    latency_ms: float = Field(ge=0, description="fixed time added to each transfer")
    tx_j_per_byte: float = Field(ge=0)
    rx_j_per_byte: float = Field(ge=0)
    connect_j: float = Field(ge=0, description="energy to set up one transfer")
    source: RadioSources


class Catalogue(Entry):
    devices: dict[str, Device] = Field(min_length=1)
    radios: dict[str, Radio] = Field(min_length=1)

    def device(self, name: str) -> Device:
        return self.devices[_known(name, self.devices, "device")]

    def radio(self, name: str) -> Radio:
        return self.radios[_known(name, self.radios, "radio")]


class CatalogueError(ValueError):
    """The shipped catalogue file is broken (a fogsim bug, not a user mistake)."""


def _known(name: Any, entries: dict[str, Any], what: str) -> str:
    """``name`` if the catalogue has it; else a ValueError with a close match."""
    if isinstance(name, str) and name in entries:
        return name
    close = difflib.get_close_matches(str(name), entries, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(
        f"{name!r} is not a {what} in fogsim's catalogue; {hint}allowed: "
        f"{', '.join(entries)} (fogsim devices lists them)"
    )


@functools.cache
def catalogue() -> Catalogue:
    """The shipped catalogue, read and checked once per process."""
    text = resources.files("fogsim.hardware").joinpath(CATALOGUE_FILE).read_text("utf-8")
    try:
        cat = Catalogue.model_validate(tomllib.loads(text))
    except (tomllib.TOMLDecodeError, ValidationError) as e:
        raise CatalogueError(f"fogsim/hardware/{CATALOGUE_FILE}: {e}") from None
    for name, dev in cat.devices.items():
        if dev.radio not in cat.radios:
            raise CatalogueError(f"{CATALOGUE_FILE}: devices.{name}.radio {dev.radio!r} unknown")
    return cat


def class_figures(data: dict[str, Any]) -> dict[str, Any]:
    """A device class's fields (as written) with the figures of its catalogue ``device``
    and ``radio`` (default: the device's built-in radio) filled in where the class does
    not give them; raises ValueError ``"device: ..."`` / ``"radio: ..."`` for a name the
    catalogue lacks."""
    cat, figures = catalogue(), {}
    if data.get("device") is not None:
        try:
            device = cat.device(data["device"])
        except ValueError as e:
            raise ValueError(f"device: {e}") from None
        figures |= {f: getattr(device, f) for f in DEVICE_FIGURES}
        data = {"radio": device.radio, **data}
    if data.get("radio") is not None:
        try:
            radio = cat.radio(data["radio"])
        except ValueError as e:
            raise ValueError(f"radio: {e}") from None
        figures |= {f: getattr(radio, f) for f in RADIO_FIGURES}
    return {**figures, **data}
