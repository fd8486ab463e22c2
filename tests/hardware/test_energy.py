"""A round's time and energy on a device, against a case computed by hand."""

import numpy as np
import pytest

from fogsim.hardware.energy import node_energy, timeline
from fogsim.scenario import DeviceClass

DEV = DeviceClass(
    name="d",
    count=1,
    memory="1MiB",
    flops=1e9,
    up_mbps=10,
    down_mbps=50,
    latency_ms=100,
    active_w=5.0,
    idle_w=1.0,
    tx_j_per_byte=1e-6,
    rx_j_per_byte=5e-7,
    connect_j=0.5,
)
MB = 1_250_000  # 10 Mbit: 0.2 s down at 50 Mbit/s, 1 s up at 10 Mbit/s


def test_timeline_by_hand() -> None:
    tl = timeline(DEV, MB, MB, 2e9)
    assert tl.down_s == pytest.approx(0.1 + 0.2)
    assert tl.compute_s == pytest.approx(2.0)  # 2 GFLOP at 1 GFLOP/s
    assert tl.up_s == pytest.approx(0.1 + 1.0)
    assert tl.total_s == pytest.approx(3.4)


def test_energy_of_a_full_round_by_hand() -> None:
    e = node_energy(DEV, timeline(DEV, MB, MB, 2e9), MB, MB, wait_s=10.0 - 3.4)
    assert e is not None
    assert e.compute_j == pytest.approx(5.0 * 2.0)
    # received 1.25 MB at 0.5 uJ/B, sent 1.25 MB at 1 uJ/B, two transfers set up
    assert e.radio_j == pytest.approx(0.625 + 1.25 + 2 * 0.5)
    # idle while transferring (0.3 + 1.1 s) and waiting for the round (6.6 s)
    assert e.idle_j == pytest.approx(1.0 * (0.3 + 1.1 + 6.6))
    assert e.total_j == pytest.approx(10.0 + 2.875 + 8.0)


def test_a_node_that_goes_away_spends_only_what_it_did() -> None:
    tl = timeline(DEV, MB, MB, 2e9)
    mid_compute = node_energy(DEV, tl, MB, MB, wait_s=5.0, stop_s=1.3)
    assert mid_compute is not None  # downloaded, half the training, no upload, no wait
    assert mid_compute.compute_j == pytest.approx(5.0 * 1.0)
    assert mid_compute.radio_j == pytest.approx(0.625 + 0.5)
    assert mid_compute.idle_j == pytest.approx(0.3)
    mid_upload = node_energy(DEV, tl, MB, MB, stop_s=2.3 + 0.55)  # half the upload
    assert mid_upload is not None
    assert mid_upload.compute_j == pytest.approx(10.0)
    assert mid_upload.radio_j == pytest.approx(0.625 + 0.5 + 1.25 / 2 + 0.5)
    assert mid_upload.idle_j == pytest.approx(0.3 + 0.55)
    at_once = node_energy(DEV, tl, MB, MB, stop_s=0.0)
    assert at_once is not None and at_once.total_j == 0.0


def test_no_energy_without_every_figure() -> None:
    """A class without power figures gets no energy: never a guess."""
    plain = DeviceClass(name="p", count=1, memory="1MiB", active_w=5.0)
    assert node_energy(plain, timeline(plain, MB, MB, 1e9), MB, MB) is None


def test_smaller_models_cost_less() -> None:
    """What DynHP's pruning buys: fewer bytes and FLOPs, less energy and time."""
    dense = node_energy(DEV, timeline(DEV, MB, MB, 2e9), MB, MB)
    pruned = node_energy(DEV, timeline(DEV, MB // 4, MB // 4, 5e8), MB // 4, MB // 4)
    assert dense is not None and pruned is not None
    assert pruned.total_j < dense.total_j / 2


def test_a_numpy_stop_in_the_upload_still_counts_both_transfers() -> None:
    """A clock that has taken an availability time holds numpy floats: the two
    transfers' set-up (``connect_j`` each) once added as numpy booleans, True + True =
    True, one transfer (an audit found an upload cut by the run's end 0.1 J short)."""
    tl = timeline(DEV, MB, MB, 2e9)
    stop = np.float64(tl.down_s + tl.compute_s + 0.5)  # half-way through the upload
    e = node_energy(DEV, tl, MB, MB, stop_s=stop)
    assert e is not None
    assert e.radio_j == pytest.approx(0.625 + 1.25 * (0.5 / 1.1) + 2 * 0.5)
