"""``benchmarks/research_select.py``: a choice at an edge of its LR grid is flagged."""

import sys

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from research_select import edge_warnings  # noqa: E402


def _row(lr: float, grid: tuple[float, ...]) -> dict:
    scores = {str(v): 0.9 for v in grid}
    return {
        "scenario": "s",
        "variant": "fedrolex",
        "configuration": "fedrolex-plain",
        "lr": lr,
        "validation": {"fedrolex": dict(scores), "fedrolex-plain": dict(scores)},
    }


def test_a_choice_at_either_edge_of_its_grid_is_warned_about() -> None:
    grid = (0.025, 0.05, 0.1, 0.2)
    (low,) = edge_warnings([_row(0.025, grid)])
    assert "s fedrolex chose LR 0.025" in low and "0.025-0.2" in low
    assert len(edge_warnings([_row(0.2, grid)])) == 1
    # inside the grid, or inside once it was widened past the old edge: no warning
    assert edge_warnings([_row(0.05, grid), _row(0.025, (0.0125, *grid))]) == []
