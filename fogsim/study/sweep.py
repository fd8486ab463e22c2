"""``fogsim sweep``: a grid of scenario overrides x repeats, one run directory each.

Run names are the overrides themselves (``train.lr=0.1__seed=8``), so a sweep
directory reads without a key and an interrupted sweep run again finds its finished
runs (those with ``summary.json``) and skips them. Every grid point is validated before
the first run starts: a typo in the last grid value must not cost an hour of runs.
"""

from __future__ import annotations

import itertools
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from fogsim.checks import load_checked
from fogsim.scenario import Scenario, ScenarioError
from fogsim.study.compare import COLUMNS, class_columns, run_metrics, write_csv
from fogsim.study.report import Table, fmt
from fogsim.study.results import holds_run, stored_scenario_changes


class SweepError(ValueError):
    """A malformed or invalid ``--grid``; the message names the key and value."""


@dataclass(frozen=True)
class Point:
    """One run of the sweep: its grid assignment, seed, and the overrides it runs with."""

    grid: tuple[tuple[str, str], ...]
    seed: int

    @property
    def name(self) -> str:
        parts = [f"{k}={v}" for k, v in self.grid if k != "run.seed"]
        return "__".join([*parts, f"seed={self.seed}"]).replace("/", "_")

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.grid] + [f"run.seed={self.seed}"]


def split_values(raw: str) -> list[str]:
    """``"0.05,0.1"`` → two values; commas inside brackets/quotes (``[64,32]``) stay."""
    values, depth, quote, cur = [], 0, "", ""
    for ch in raw:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            values.append(cur.strip())
            cur = ""
            continue
        cur += ch
    values.append(cur.strip())
    return values


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """``["train.lr=0.05,0.1"]`` → ``[("train.lr", ["0.05", "0.1"])]``; repeated values
    are dropped (they would name the same run directory)."""
    grid: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        values = list(dict.fromkeys(v for v in split_values(raw) if v))
        if not sep or not key or not values:
            raise SweepError(
                f"--grid {item!r}: expected section.key=v1,v2,... e.g. train.lr=0.05,0.1"
            )
        if key in dict(grid):
            raise SweepError(f"--grid {key}: given twice; list all its values in one --grid")
        grid.append((key, values))
    return grid


def plan(
    scenario_path: Path, sets: list[str], grid: list[tuple[str, list[str]]], repeat: int
) -> list[tuple[Point, Scenario]]:
    """Every run of the sweep with its validated scenario, or :class:`SweepError` naming
    the first grid key and value that makes an invalid scenario."""
    try:
        base = load_checked(scenario_path, sets)
    except ScenarioError as e:
        raise SweepError(str(e)) from None
    for key, values in grid:  # each value alone first, so the error names it
        for value in values:
            try:
                load_checked(scenario_path, [*sets, f"{key}={value}"])
            except ScenarioError as e:
                raise SweepError(f"--grid {key}={value}: {e}") from None
    runs = []
    for combo in itertools.product(*[[(k, v) for v in vs] for k, vs in grid]):
        seed0 = base.run.seed
        try:
            seed0 = load_checked(scenario_path, [*sets, *[f"{k}={v}" for k, v in combo]]).run.seed
        except ScenarioError as e:
            shown = " ".join(f"{k}={v}" for k, v in combo)
            raise SweepError(f"--grid combination {shown}: {e}") from None
        for i in range(repeat):
            point = Point(tuple(combo), seed0 + i)
            sc = load_checked(scenario_path, [*sets, *point.overrides])
            sc.run.name = point.name
            runs.append((point, sc))
    return runs


def is_finished(run_dir: Path) -> bool:
    return (run_dir / "summary.json").exists()


def mismatched_runs(runs: list[tuple[Point, Scenario]], sweep_dir: Path) -> dict[str, list[str]]:
    """Runs already in ``sweep_dir`` (finished or not) made with another scenario than
    the sweep asks for now, each with the fields that differ: reusing or resuming
    them would hand back results of a different experiment."""
    found = {}
    for point, sc in runs:
        run_dir = sweep_dir / point.name
        if holds_run(run_dir) and (changed := stored_scenario_changes(run_dir, sc)):
            found[point.name] = changed
    return found


def run_all(
    runs: list[tuple[Point, Scenario]],
    sweep_dir: Path,
    simulate: Callable[[Scenario, Path, bool], None],
    on_run: Callable[[int, Point, bool], None] | None = None,
) -> list[Path]:
    """Run what is not finished yet; an unfinished run is resumed from its checkpoint
    (``simulate(scenario, run_dir, resume)``). ``on_run(index, point, skipped)`` is
    called before each run (for progress)."""
    dirs = []
    for i, (point, sc) in enumerate(runs):
        run_dir = sweep_dir / point.name
        dirs.append(run_dir)
        done = is_finished(run_dir)
        if on_run:
            on_run(i, point, done)
        if done:
            continue
        simulate(sc, run_dir, run_dir.exists())
    return dirs


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample std over the repeats (std blank for one); both blank unless
    every repeat has a value: a mean over the seeds that reached the target (or whose
    class held a model) once put a point reaching it on 1 of 2 seeds level with one
    reaching it on both."""
    if not values or any(v is None for v in values):
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def plus_minus(row: dict[str, Any], col: str, kind: str) -> str:
    """``mean ± std`` cell (just the mean when std is blank)."""
    mean, std = row[f"{col}_mean"], row[f"{col}_std"]
    return fmt(mean, kind) + ("" if std is None else f" ± {fmt(std, kind)}")


AGGREGATED = ["final_accuracy", "best_accuracy", "rounds_to_target", "time_to_target_s"]
AGGREGATED += ["cloud_bytes_to_target", "total_bytes", "total_cloud_bytes", "total_energy_j"]
AGGREGATED += ["mean_round_time_s", "compression"]


def summarize(
    runs: list[tuple[Point, Scenario]], dirs: list[Path], out_dir: Path, target: float
) -> tuple[list[dict[str, Any]], Table]:
    """Write ``compare.csv`` (per run), ``sweep.csv`` (mean/std per grid point) and
    ``sweep_accuracy.png`` (mean accuracy per round, std band) into ``out_dir``."""
    from fogsim.study.overlays import plot_overlay  # matplotlib, when drawing

    metrics = [run_metrics(d, target) for d in dirs]
    per_class = class_columns(metrics)
    write_csv(out_dir / "compare.csv", metrics, COLUMNS + per_class)
    groups: dict[tuple[tuple[str, str], ...], list[dict[str, Any]]] = {}
    for (point, _), m in zip(runs, metrics, strict=True):
        groups.setdefault(point.grid, []).append(m)
    keys = [k for k, _ in runs[0][0].grid] if runs else []
    rows, series = [], []
    for grid, ms in groups.items():
        row: dict[str, Any] = dict(grid)
        row["repeats"] = len(ms)
        row["strategy"] = ms[0]["strategy"]
        row["reached_target"] = sum(m["rounds_to_target"] is not None for m in ms)
        for col in AGGREGATED + per_class:
            row[f"{col}_mean"], row[f"{col}_std"] = mean_std([m.get(col) for m in ms])
        rows.append(row)
        n_rounds = min(len(m["series"][0]) for m in ms)  # rounds all repeats finished
        per_round = [mean_std([m["series"][1][r] for m in ms]) for r in range(n_rounds)]
        label = " ".join(f"{k}={v}" for k, v in grid) or "base"
        std = [s or 0.0 for _, s in per_round] if len(ms) > 1 else None
        series.append((label, list(range(1, n_rounds + 1)), [m for m, _ in per_round], std))
    columns = [*keys, "strategy", "repeats", "reached_target"]
    columns += [f"{c}_{s}" for c in AGGREGATED + per_class for s in ("mean", "std")]
    write_csv(out_dir / "sweep.csv", rows, columns)
    repeats = max((len(ms) for ms in groups.values()), default=1)
    title = "global test accuracy per round" + (
        f" (mean ± std over {repeats} seeds)" if repeats > 1 else " (one seed each)"
    )
    plot_overlay(series, out_dir / "sweep_accuracy.png", target, title)
    table = Table("sweep (mean ± std over repeats)", [*keys, "n", "final acc", "best acc"])
    table.headers += [f"reached {target:g}", "bytes up+down", "round time (s)"]
    for row in rows:
        pm = partial(plus_minus, row)
        table.rows.append(
            [str(row[k]) for k in keys]
            + [str(row["repeats"]), pm("final_accuracy", "acc"), pm("best_accuracy", "acc")]
            + [f"{row['reached_target']}/{row['repeats']}", pm("total_bytes", "int")]
            + [pm("mean_round_time_s", "s")]
        )
    manifest = {
        "target": target,
        "runs": [{"name": p.name, "overrides": p.overrides} for p, _ in runs],
    }
    (out_dir / "sweep.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return rows, table
