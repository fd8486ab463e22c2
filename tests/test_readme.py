"""The README's result tables are rendered from benchmarks/results/*.json, never typed."""

import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import results_io  # noqa: E402


def test_every_results_file_is_in_the_readme_as_rendered() -> None:
    files = sorted(results_io.RESULTS.glob("*.json"))
    if not files:
        pytest.skip("no benchmark results yet")
    for module in ("dynhp_vs_competitors", "strategies", "scale", "fog"):
        __import__(module)  # each registers its renderer
    blocks = results_io.readme_blocks(results_io.README.read_text())
    for path in files:
        assert path.stem in blocks, f"README has no <!-- results:{path.stem} --> block"
        assert blocks[path.stem] == results_io.render(path.stem), (
            f"README's {path.stem} table differs from {path.name}: "
            "run python benchmarks/results_io.py --readme"
        )
