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


def test_each_strategy_gets_the_point_its_validation_samples_choose() -> None:
    """A by-hand case: per scenario and strategy the configuration and LR of the best
    validation score (mean over seeds of the mean over classes) is chosen, and its
    runs' test figures are the row; runs of one variant are pooled over caches; a
    strategy lacking one point of its grid is left out."""
    import research_select
    from research_variants import CHOOSING, LR_GRID, at_lr

    def run(test: float, validation: tuple[float, float]) -> dict:
        # one seed's run; validation: per class (big, small)
        classes = {
            c: {"mean": test, "min": test, "validation_mean": v, "validation_min": v}
            for c, v in zip(("big", "small"), validation, strict=True)
        }
        figures = {"final_accuracy": test, "bytes_up": 1, "bytes_down": 1}
        return {"classes": classes, "code": "abc", "isa": "AVX2", "engine": "inprocess", **figures}

    # per (configuration, LR), per seed: validation (big, small). mask-union's default
    # at 0.1 scores (0.9 + 0.8 + 0.7 + 0.8) / 4 = 0.80, its clipped one at 0.2 0.85,
    # the best, though the default at 0.025 is the best on the test split
    default, clipped = CHOOSING["mask-union"]
    scores = {
        (default, 0.025): [(0.9, 0.5), (0.5, 0.5)],
        (default, 0.1): [(0.9, 0.8), (0.7, 0.8)],
        (clipped, 0.2): [(0.9, 0.9), (0.8, 0.8)],
    }
    flat = [(0.6, 0.6), (0.6, 0.6)]

    def test_of(point: tuple[str, float]) -> float:
        return {(default, 0.025): 0.99, (clipped, 0.2): 0.7}.get(point, 0.5)

    points = [(config, lr) for config in (default, clipped) for lr in LR_GRID]
    seed1, seed2 = (
        {at_lr(*p): {"runs": {str(i + 1): run(test_of(p), scores.get(p, flat)[i])}} for p in points}
        for i in range(2)
    )
    heterofl = [(c, lr) for c in CHOOSING["heterofl"] for lr in LR_GRID][1:]
    seed2 |= {at_lr(*p): {"runs": {"1": run(0.5, flat[0])}} for p in heterofl}
    rows = research_select.tuned_rows([{"mnist-iid": seed1}, {"mnist-iid": seed2}])
    chosen = [(r["variant"], r["configuration"], r["lr"], r["seeds"]) for r in rows]
    assert chosen == [("mask-union", clipped, 0.2, ["1", "2"])]
    assert rows[0]["validation"][default]["0.1"] == pytest.approx(0.80)
    assert rows[0]["validation"][clipped]["0.2"] == pytest.approx(0.85)
    assert rows[0]["classes"]["big"]["mean"]["mean"] == 0.7  # the test figure of that point


def test_the_tuned_table_can_be_re_run_a_scenario_at_a_time() -> None:
    """Publishing the choices of re-run scenarios replaces those scenarios' rows and
    keeps the others', stamped with the command and the (older) memory model revision
    they were measured with, so the note above the table counts them."""
    import research_select

    def row(scenario: str, variant: str, **stamp: object) -> dict:
        return {"scenario": scenario, "variant": variant, "validation": {}, **stamp}

    old = {
        "command": "python benchmarks/research_select.py old.json",
        "rows": [row("mnist-iid", "heterofl"), row("mnist-dirichlet", "mask-union")],
    }
    new = [row("mnist-iid", "heterofl"), row("mnist-iid", "mask-union")]
    rows = research_select.merged(old, new)
    now = results_io.MODEL_REVISION
    assert [(r["scenario"], r["variant"], r["memory_model"]) for r in rows] == [
        ("mnist-iid", "mask-union", now),
        ("mnist-iid", "heterofl", now),
        ("mnist-dirichlet", "mask-union", 1),
    ]
    assert rows[2]["command"] == old["command"] != rows[0]["command"]
    note = results_io.stale({"memory_model": 1, "rows": rows})
    assert "1 of 3 rows were measured under revision 1" in note


def test_a_table_partly_re_run_says_which_rows_are_older() -> None:
    """A results file that merges rows of several runs (mask_union_vs_rivals) stamps
    each row's memory model revision: the note above its table counts the older rows,
    and none is written once every row is current (the file's own revision, the oldest
    row's, would otherwise mark re-run rows stale or old rows current)."""
    now = results_io.MODEL_REVISION
    doc = {"memory_model": 1, "rows": [{"memory_model": 1}, {"memory_model": now}, {}]}
    note = results_io.stale(doc)
    assert "Partly re-run" in note and "2 of 3 rows were measured under revision 1" in note
    assert results_io.stale({"memory_model": now, "rows": [{"memory_model": now}, {}]}) == ""
    # a revision that moves no benchmark's figure (3-channel images only) stales nothing
    same = {"memory_model": results_io.BENCHMARKS_REVISION}
    assert now > same["memory_model"] and results_io.stale({**same, "rows": [same]}) == ""
    assert "Not yet re-run" in results_io.stale({"rows": [{}, {}]})
