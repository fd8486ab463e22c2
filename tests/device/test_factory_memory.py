"""A factory model's memory figure against the process heap: measured heap peak <=
modelled <= 1.15 x measured at batches between the measured table's (the figure is
the heap counter's table, interpolated, ``fogsim.device.factory.interpolate``).

The grid runs in one heap-counted process (~1 min on a busy 2-core machine);
``FOGSIM_FACTORY_GRID=full`` runs the README's grid (batches to 128, more optimizers)."""

import os

import pytest

from fogsim.device import heap
from fogsim.device.factory import interpolate, table_batches
from fogsim.device.heap import memory_table

MOD = "tests.example_models"
FULL = os.environ.get("FOGSIM_FACTORY_GRID") == "full"
if FULL:
    LARGEST, BETWEEN = 128, (3, 6, 12, 24, 48, 96)
    COMBOS = [(m, k) for m in ("lenet5", "resnet_like", "narrow_cnn")
              for k in ("sgd", "sgd-momentum", "adam")]  # fmt: skip
else:
    LARGEST, BETWEEN = 64, (3, 24, 48)
    COMBOS = [("lenet5", "sgd"), ("lenet5", "adam"), ("resnet_like", "sgd-momentum"),
              ("narrow_cnn", "sgd")]  # fmt: skip


@pytest.fixture(scope="module")
def grid() -> dict[tuple[str, str], dict[int, int]]:
    try:
        heap.library()
    except heap.HeapCounterUnavailable as e:
        pytest.skip(str(e))
    batches = sorted({*table_batches(LARGEST), *BETWEEN})
    points = [
        {"factory": f"{MOD}:{m}", "in_shape": [1, 28, 28], "num_classes": 10,
         "optimizer": k, "batch": b}
        for m, k in COMBOS for b in batches
    ]  # fmt: skip
    out: dict[tuple[str, str], dict[int, int]] = {}
    for p in heap.measure_steps(points):
        assert p["mmap_delta"] == 0  # nothing bypasses the count
        out.setdefault((p["factory"].split(":")[1], p["optimizer"]), {})[p["batch"]] = p["measured"]
    return out


def test_the_interpolated_table_bounds_the_heap_within_15_percent(grid) -> None:
    ratios = {}
    for combo, measured in grid.items():
        table = [(b, measured[b]) for b in table_batches(LARGEST)]
        for b in BETWEEN:
            ratios[(*combo, b)] = interpolate(table, b) / measured[b]
    print("modelled / measured:", {k: round(r, 3) for k, r in ratios.items()})
    low, high = min(ratios.values()), max(ratios.values())
    print(f"range {low:.3f} .. {high:.3f}")
    assert 1.0 <= low and high <= 1.15, ratios


def test_the_table_a_run_uses_bounds_this_processes_heap(grid) -> None:
    """The table a scenario uses is measured in another process (or read from the
    disk cache): the 2% margin covers the spread between processes."""
    measured = grid[("lenet5", "sgd")]
    table = memory_table(f"{MOD}:lenet5", (1, 28, 28), 10, "sgd", LARGEST)
    for b in sorted(measured):
        assert 1.0 <= interpolate(table, b) / measured[b] <= 1.15, b
