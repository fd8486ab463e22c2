"""What a round costs a device in time and energy.

A sampled node's round is three phases, one after the other (its *timeline*):
download (``latency + bytes_down * 8 / down``), compute (``FLOPs / flops``: training
time at the device's sustained FLOP/s) and upload (``latency + bytes_up * 8 / up``);
then it waits, idle, until the synchronous round ends. Its energy, per part:

- compute: ``P_active * FLOPs / flops`` (training time x whole-device active power:
  equivalently FLOPs x J/FLOP with J/FLOP = P_active / flops);
- radio: ``bytes_down * rx_j_per_byte + bytes_up * tx_j_per_byte + connect_j`` per
  transfer begun (the radio's own energy on top of the device's);
- idle: ``P_idle * (download + upload + wait)``: the device awake but not computing,
  while it transfers and while it waits for the round to end.

A node that drops out mid-round (its availability window ends) spends each phase's
energy up to that moment, and does not wait. Figures come from the device class (the
catalogue's, or the scenario's own); a class missing any of them has no energy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class Speeds(Protocol):
    """What the timeline needs from a device class (``DeviceClass``)."""

    flops: float
    up_mbps: float
    down_mbps: float
    latency_ms: float


class Figures(Speeds, Protocol):
    """What the timeline and the energy need from a device class (``DeviceClass``)."""

    active_w: float | None
    idle_w: float | None
    tx_j_per_byte: float | None
    rx_j_per_byte: float | None
    connect_j: float | None


@dataclass(frozen=True)
class Timeline:
    """A node's own round: seconds of download, compute and upload."""

    down_s: float
    compute_s: float
    up_s: float

    @property
    def total_s(self) -> float:
        return self.down_s + self.compute_s + self.up_s


def timeline(dev: Speeds, bytes_down: int, bytes_up: int, flops: float) -> Timeline:
    """Download + compute + upload time of one client round on ``dev``."""
    latency = dev.latency_ms / 1000.0
    return Timeline(
        down_s=latency + bytes_down * 8 / (dev.down_mbps * 1e6),
        compute_s=flops / dev.flops,
        up_s=(latency + bytes_up * 8 / (dev.up_mbps * 1e6)) if bytes_up else 0.0,
    )


@dataclass(frozen=True)
class Energy:
    """Joules one node spent in one round, by part."""

    compute_j: float
    radio_j: float
    idle_j: float

    @property
    def total_j(self) -> float:
        return self.compute_j + self.radio_j + self.idle_j


def has_energy(dev: Figures) -> bool:
    """Whether ``dev`` gives every figure energy needs."""
    needed = (dev.active_w, dev.idle_w, dev.tx_j_per_byte, dev.rx_j_per_byte, dev.connect_j)
    return all(v is not None for v in needed)


def _done(start: float, length: float, stop: float) -> float:
    """The share of a phase ``[start, start + length)`` done by time ``stop``."""
    if stop <= start:
        return 0.0
    return 1.0 if length <= 0 or stop >= start + length else (stop - start) / length


def node_energy(
    dev: Figures,
    tl: Timeline,
    bytes_down: int,
    bytes_up: int,
    wait_s: float = 0.0,
    stop_s: float | None = None,
) -> Energy | None:
    """Energy of one node's round: its timeline, then ``wait_s`` idle; a node that went
    away ``stop_s`` seconds into its round spends only what it did by then. None if the
    class lacks a figure (energy is never guessed)."""
    if not has_energy(dev):
        return None
    assert dev.active_w is not None and dev.idle_w is not None
    assert dev.tx_j_per_byte is not None and dev.rx_j_per_byte is not None
    assert dev.connect_j is not None
    stop = tl.total_s if stop_s is None else min(stop_s, tl.total_s)
    down = _done(0.0, tl.down_s, stop)
    compute = _done(tl.down_s, tl.compute_s, stop)
    up = _done(tl.down_s + tl.compute_s, tl.up_s, stop) if bytes_up else 0.0
    transfers = int(stop > 0) + int(up > 0)  # numpy booleans would add up to True, i.e. 1
    wait = wait_s if stop_s is None else 0.0
    return Energy(
        compute_j=dev.active_w * tl.compute_s * compute,
        radio_j=bytes_down * dev.rx_j_per_byte * down
        + bytes_up * dev.tx_j_per_byte * up
        + dev.connect_j * transfers,
        idle_j=dev.idle_w * (tl.down_s * down + tl.up_s * up + wait),
    )
