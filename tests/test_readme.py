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
    for module in results_io.BENCHMARKS:
        __import__(module)  # each registers its renderer
    blocks = results_io.readme_blocks(results_io.README.read_text())
    for path in files:
        assert path.stem in blocks, f"README has no <!-- results:{path.stem} --> block"
        assert blocks[path.stem] == results_io.render(path.stem), (
            f"README's {path.stem} table differs from {path.name}: "
            "run python benchmarks/results_io.py --readme"
        )


def _row(variant: str, seeds: list[str], means: dict[str, list], mins: dict | None = None) -> dict:
    mins = mins or means
    return {
        "scenario": "s",
        "variant": variant,
        "seeds": seeds,
        "classes": {
            c: {"mean": {"mean": sum(v) / len(v), "values": v}, "min": {"values": mins[c]}}
            for c, v in means.items()
        },
    }


def test_paired_table_differences_are_per_seed_and_name_the_classes_behind() -> None:
    """A by-hand case: differences are taken seed by seed over the seeds both ran."""
    import research_tables

    ours = _row(
        "mask-union", ["1", "2", "3"], {"big": [0.90, 0.92, 0.50], "small": [0.80, 0.81, 0]}
    )
    rival = _row(
        "heterofl",
        ["1", "2"],  # seed 3 missing: not compared
        {"big": [0.89, 0.925], "small": [0.82, 0.83]},
        {"big": [0.89, 0.925], "small": [0.70, 0.70]},  # devices differ: the minimum shows
    )
    table = research_tables.paired({"rows": [ours, rival]}, rivals=("heterofl",))
    line = next(x for x in table.splitlines() if x.startswith("| s |"))
    # big: +1, -0.5 pt -> +0.25 ± 1.06, ahead on 1 of 2 seeds
    # small: mean -2, -2 -> -2.00 ± 0.00 (behind beyond its std); min +10, +11
    assert line == (
        "| s | 2 | +0.25 ± 1.06 [1/2] | -2.00 ± 0.00 [0/2]; min +10.50 ± 0.71 [2/2] "
        "| missed: small* |"
    )
