"""Simulated cost of a client's round: compute from FLOPs, transfer from bytes.

A device's round time is download + local training + upload, each from the device
class's link bandwidth and compute speed; the round takes as long as its slowest
sampled client (synchronous FL). Training FLOPs are counted as 3x the forward pass
(forward 1x, backward 2x: gradients w.r.t. inputs and weights), 2 FLOPs per MAC.
"""

from __future__ import annotations

from fogsim.models import FogNet
from fogsim.scenario import DeviceClass


def macs_per_sample(model: FogNet) -> int:
    """Multiply-accumulates of one forward pass."""
    macs, (_, h, w) = 0, model.in_shape
    for conv in model.convs:
        k = conv.kernel_size[0] * conv.kernel_size[1]
        macs += conv.in_channels * conv.out_channels * k * h * w
        h, w = h // 2, w // 2
    return macs + sum(fc.in_features * fc.out_features for fc in model.fcs)


def train_flops(model: FogNet, samples: int) -> float:
    """FLOPs to train ``model`` on ``samples`` examples (one pass each)."""
    return 6.0 * macs_per_sample(model) * samples


def simulated_seconds(device: DeviceClass, bytes_down: int, bytes_up: int, flops: float) -> float:
    """Download + compute + upload time of one client round on ``device``."""
    down = bytes_down * 8 / (device.down_mbps * 1e6)
    up = bytes_up * 8 / (device.up_mbps * 1e6)
    return down + flops / device.flops + up
