"""A run's files read as series to tabulate and plot.

Everything comes from the run's files via :func:`fogsim.study.results.load`; a column
that a run does not have (older runs, other strategies) is ``None`` here, so a table
shows ``n/a`` and a plot leaves the line out instead of guessing: numbers shown are
always numbers measured.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from fogsim.study.results import TRAINED, load


class ReportError(ValueError):
    """A directory that is not a readable run; the message says which and why."""


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """``load()`` plus the checks a report needs: a directory with at least one round,
    every cell of rounds.csv a number (or blank), and a summary.json, where there is
    one, of as many rounds: a file edited or cut by hand is refused, naming it, rather
    than read as a blank (a text cell once moved "reached in round 2" to round 3)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ReportError(f"{run_dir}: not a directory (give the run's directory)")
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such run directory")
    if not (run_dir / "rounds.csv").exists():
        raise ReportError(f"{run_dir}: not a fogsim run (no rounds.csv)")
    try:
        run = load(run_dir)
    except json.JSONDecodeError as e:
        raise ReportError(f"{run_dir}: a JSON file there is not readable ({e})") from None
    if not run.get("rounds"):
        raise ReportError(f"{run_dir}: rounds.csv holds no finished round yet")
    for line, row in enumerate(run["rounds"], start=2):
        for name, value in row.items():
            text = isinstance(value, str) and value
            if text or "acc" in name and isinstance(value, float) and math.isnan(value):
                raise ReportError(
                    f"{run_dir / 'rounds.csv'}: line {line}, column {name}: {value!r} is not "
                    "a number (fogsim writes numbers or blanks there)"
                )
    summary = run.get("summary", {})
    if "rounds" in summary and summary["rounds"] != len(run["rounds"]):
        raise ReportError(
            f"{run_dir}: summary.json says {summary['rounds']} rounds, rounds.csv holds "
            f"{len(run['rounds'])}: the run's files disagree (one was cut or edited)"
        )
    run.setdefault("nodes", [])
    run.setdefault("fleet", [])
    run["dir"] = run_dir
    for n in run["nodes"]:  # each node against its own budget (budgets differ per node)
        peak, budget = num(n.get("peak_memory")), num(n.get("budget_bytes"))
        n["budget_share"] = peak / budget if peak is not None and budget else None
    return run


def num(value: Any) -> float | None:
    """A CSV cell as a number, or None for blanks (a column a row did not fill)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def column(rows: list[dict[str, Any]], name: str) -> list[float | None] | None:
    """Values of ``name`` per row, or None when no row has a number there."""
    if not rows or name not in rows[0]:
        return None
    values = [num(r.get(name)) for r in rows]
    return values if any(v is not None for v in values) else None


def round_time(run: dict[str, Any]) -> tuple[str, list[float | None]]:
    """Per-round time and its source: modelled ``sim_time_s`` when the run has it
    (rounds.csv, else the slowest node per round), otherwise measured ``wall_s``."""
    rounds = run["rounds"]
    if (sim := column(rounds, "sim_time_s")) is not None:
        return "sim_time_s", sim
    if column(run["nodes"], "sim_time_s") is not None:
        slowest: dict[int, float] = {}
        for n in run["nodes"]:
            if (t := num(n.get("sim_time_s"))) is not None:
                slowest[n["round"]] = max(slowest.get(n["round"], 0.0), t)
        return "sim_time_s", [slowest.get(r["round"]) for r in rounds]
    return "wall_s", column(rounds, "wall_s") or [None] * len(rounds)


def class_sizes(run: dict[str, Any]) -> dict[str, int]:
    sizes: dict[str, int] = defaultdict(int)
    for row in run["fleet"]:
        sizes[row["class"]] += 1
    for n in run["nodes"]:  # classes seen training but missing from fleet.csv
        sizes.setdefault(n["class"], 0)
    return dict(sizes)


def per_class_round(run: dict[str, Any], name: str, how: str) -> dict[str, dict[int, float]]:
    """class → round → mean (``how="mean"``), max or count of a nodes.csv column."""
    groups: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for n in run["nodes"]:
        if how == "count" and n.get("status", "ok") not in TRAINED:
            continue  # a node that crashed, dropped out or refused did not train
        value = 1.0 if how == "count" else num(n.get(name))
        if value is not None:
            groups[n["class"]][n["round"]].append(value)
    agg = {"mean": lambda v: sum(v) / len(v), "max": max, "count": len}[how]
    return {c: {r: float(agg(v)) for r, v in by.items()} for c, by in groups.items()}


def round_classes(rounds: list[dict[str, Any]]) -> list[str]:
    """Device classes with per-class accuracy columns in rounds.csv."""
    return [c[4:] for c in rounds[0] if c.startswith("acc_") and not c.endswith("_min")]


def last(by_round: dict[int, float]) -> float | None:
    """The value in the last round that has one."""
    return by_round[max(by_round)] if by_round else None


def class_order(run: dict[str, Any]) -> list[str]:
    """The run's device classes in the scenario's order (then any others seen), so every
    table and plot lists them, and colours them, the same way."""
    declared = [c["name"] for c in run.get("scenario", {}).get("fleet", {}).get("classes", [])]
    seen = [r["class"] for r in run["fleet"]] + [n["class"] for n in run["nodes"]]
    return list(dict.fromkeys([*declared, *seen]))


def cumulative(values: list[float | None]) -> list[float | None]:
    """Running sum; from the first missing value on, None (the sum is unknown)."""
    out: list[float | None] = []
    total: float | None = 0.0
    for v in values:
        total = None if v is None or total is None else total + v
        out.append(total)
    return out


def buffered(run: dict[str, Any]) -> bool:
    """Whether the run's rounds are buffered merges (its nodes say when each reply
    arrived, ``sim_end_s``)."""
    return column(run["nodes"], "sim_end_s") is not None


def slowest_class(run: dict[str, Any]) -> dict[int, str]:
    """round -> the class of the node that set the round's simulated time: in lock-step
    rounds the slowest; in buffered rounds the last reply (the latest ``sim_end_s``),
    whose arrival is the merge: not the longest training, which may have started
    versions earlier."""
    key = "sim_end_s" if buffered(run) else "sim_time_s"
    slowest: dict[int, tuple[float, str]] = {}
    for n in run["nodes"]:
        t = num(n.get(key)) if n.get("status") != "unfinished" else None  # merged by none
        if t is not None and t > slowest.get(n["round"], (-1.0, ""))[0]:
            slowest[n["round"]] = (t, n["class"])
    return {r: c for r, (_, c) in slowest.items()}


def elapsed(run: dict[str, Any]) -> tuple[str, list[float | None]]:
    """Simulated seconds from the run's start to the end of each round and their
    source: the clock (``sim_clock_s``: rounds may wait for a schedule or for nodes to
    come on), else cumulative round times (simulated, or wall-clock)."""
    source, times = round_time(run)
    starts = column(run["rounds"], "sim_clock_s")
    if starts is None or starts[0] is None:
        return source, cumulative(times)
    return source, [
        None if s is None or t is None else s - starts[0] + t
        for s, t in zip(starts, times, strict=True)
    ]


PARTS = ("compute", "radio", "idle")


def class_energy(run: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per class, from nodes.csv: node-rounds with a known energy (``n``), their mean
    energy in all and by part (J), and the class's total (J)."""
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for row in run["nodes"]:
        if (total := num(row.get("energy_j"))) is None:
            continue
        s = sums[row["class"]]
        s["n"] += 1
        s["total"] += total
        for part in PARTS:
            s[part] += num(row.get(f"energy_{part}_j")) or 0.0
    return {
        c: {"n": s["n"], "total": s["total"], "mean": s["total"] / s["n"]}
        | {part: s[part] / s["n"] for part in PARTS}
        for c, s in sums.items()
    }
