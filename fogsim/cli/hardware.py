"""``fogsim devices``: the device catalogue a device class can name."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from fogsim.cli.common import out
from fogsim.hardware.catalogue import catalogue
from fogsim.units import format_bytes

CAPTION = (
    "approximate figures derived from datasheets and published measurements: read them "
    "as order of magnitude; fogsim devices --sources says where each comes from"
)


PREFIXES = (
    (1e12, "T"),
    (1e9, "G"),
    (1e6, "M"),
    (1e3, "k"),
    (1.0, ""),
    (1e-3, "m"),
    (1e-6, "µ"),
    (1e-9, "n"),
)


def si(value: float, unit: str) -> str:
    """``5e9`` → ``5 G<unit>``, ``0.004`` → ``4 m<unit>``: at most three significant
    digits (the catalogue gives one or two), no false precision."""
    if value == 0:
        return f"0 {unit}"
    for factor, prefix in PREFIXES:
        if value >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.2g} {unit}"


def device_table() -> Table:
    table = Table(title="devices (device = ...)", caption=CAPTION)
    for col in ("name", "kind", "training memory", "speed", "active", "idle", "radio"):
        table.add_column(col, justify="left" if col in ("name", "kind", "radio") else "right")
    table.add_column("description", overflow="fold")
    for name, d in catalogue().devices.items():
        table.add_row(
            name,
            d.kind,
            format_bytes(d.memory),
            si(d.flops, "FLOP/s"),
            si(d.active_w, "W"),
            si(d.idle_w, "W"),
            d.radio,
            d.description,
        )
    return table


def radio_table() -> Table:
    table = Table(title="radios (radio = ...)", caption=CAPTION)
    for col in ("name", "up Mbit/s", "down Mbit/s", "latency", "TX", "RX", "per transfer"):
        table.add_column(col, justify="left" if col == "name" else "right")
    table.add_column("description", overflow="fold")
    for name, r in catalogue().radios.items():
        table.add_row(
            name,
            f"{r.up_mbps:g}",
            f"{r.down_mbps:g}",
            si(r.latency_ms / 1000, "s"),
            si(r.tx_j_per_byte, "J/B"),
            si(r.rx_j_per_byte, "J/B"),
            si(r.connect_j, "J"),
            r.description,
        )
    return table


def source_table() -> Table:
    table = Table(title="where each figure comes from")
    for col in ("entry", "figures"):
        table.add_column(col)
    table.add_column("source", overflow="fold")
    cat = catalogue()
    for kind, entries in (("device", cat.devices), ("radio", cat.radios)):
        for name, entry in entries.items():
            for figure, note in entry.source.model_dump().items():
                table.add_row(f"{kind} {name}", figure, note)
    return table


def devices(
    sources: Annotated[
        bool, typer.Option("--sources", help="Show where each figure comes from.")
    ] = False,
) -> None:
    """List the device catalogue: devices (memory for training, FLOP/s, power) and
    radios (bandwidth, latency, energy per byte and per connection).

    A device class names them with device = "..." and radio = "..." and may override
    any figure (memory, flops, up_mbps, active_w, ...).

    Examples:

      fogsim devices

      fogsim devices --sources
    """
    if sources:
        out.print(source_table())
        return
    out.print(device_table())
    out.print(radio_table())
