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


WIDE = 130  # terminal columns below which kinds and descriptions are left out


def device_table(describe: bool = True) -> Table:
    """The devices; names and figures never wrap (a narrow terminal loses the kinds
    and descriptions instead: see :data:`WIDE`)."""
    table = Table(title="devices (device = ...)", caption="memory: what training may use")
    cols = ("name", "kind", "memory", "speed", "active", "idle", "radio")
    for col in cols if describe else [c for c in cols if c != "kind"]:
        left = col in ("name", "kind", "radio")
        table.add_column(col, justify="left" if left else "right", no_wrap=True)
    if describe:
        table.add_column("description", overflow="fold")
    for name, d in catalogue().devices.items():
        figures = (format_bytes(d.memory), si(d.flops, "FLOP/s"), si(d.active_w, "W"))
        row = [name, *([d.kind] if describe else []), *figures, si(d.idle_w, "W"), d.radio]
        table.add_row(*row, *([d.description] if describe else []))
    return table


def radio_table(describe: bool = True) -> Table:
    table = Table(title="radios (radio = ...)", caption=CAPTION)
    for col in ("name", "Mbit/s up/down", "latency", "TX per B", "RX per B", "per transfer"):
        table.add_column(col, justify="left" if col == "name" else "right", no_wrap=True)
    if describe:
        table.add_column("description", overflow="fold")
    for name, r in catalogue().radios.items():
        row = [name, f"{r.up_mbps:g} / {r.down_mbps:g}", si(r.latency_ms / 1000, "s")]
        row += [si(r.tx_j_per_byte, "J"), si(r.rx_j_per_byte, "J"), si(r.connect_j, "J")]
        table.add_row(*row, *([r.description] if describe else []))
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
    describe = out.width >= WIDE
    out.print(device_table(describe))
    out.print(radio_table(describe))  # its caption (CAPTION) is about both tables
    if not describe:
        out.print(f"(descriptions shown in a terminal of {WIDE}+ columns)")
