"""``fogsim compare``: one row of headline numbers per run, and overlay plots.

The numbers come from the run files (via :mod:`fogsim.study.report`'s loaders), so a run
without a column (e.g. no ``params``) gets a blank cell, never an estimate. What would
make a row read wrongly is said beside the table (:func:`notes`): a run that did not
finish, runs of different data, models, fleets or lengths.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from fogsim.study.clock import cloud_traffic, to_target
from fogsim.study.report import Table, fmt, own_cell
from fogsim.study.results import read_csv, scenario_changes, strategy_name
from fogsim.study.series import (
    class_order,
    column,
    cumulative,
    elapsed,
    load_run,
    num,
    round_time,
)

COLUMNS = [
    "run",
    "strategy",
    "rounds",
    "planned_rounds",
    "finished",
    "final_accuracy",
    "best_accuracy",
    "rounds_to_target",
    "bytes_to_target",
    "time_to_target_s",
    "cloud_bytes_to_target",
    "total_cloud_bytes",
    "energy_to_target_j",
    "total_bytes",
    "total_energy_j",
    "mean_round_time_s",
    "round_time_source",
    "compression",
    "dir",
]
# scenario fields in which runs compared side by side should agree (a note names them)
SETTINGS = ("data.", "model.", "fleet.", "run.rounds ")


def dense_params(scenario: dict[str, Any]) -> int | None:
    """Parameters of the unpruned model the scenario describes (None if unknown)."""
    model = scenario.get("model")
    if not model:
        return None
    from fogsim.scenario import DataSection, ModelSection  # torch: only when needed

    data = DataSection.model_validate(scenario.get("data") or {})
    return ModelSection.model_validate(model).num_params(data)


def run_metrics(run: str | Path | dict[str, Any], target: float) -> dict[str, Any]:
    """Headline numbers of one run (its directory, or the run ``load_run`` read);
    ``None`` where the run has no data for one."""
    run = run if isinstance(run, dict) else load_run(run)
    rounds = run["rounds"]
    acc = column(rounds, "accuracy") or []
    reached = [
        r["round"] for r, a in zip(rounds, acc, strict=True) if a is not None and a >= target
    ]
    up, down = column(rounds, "bytes_up"), column(rounds, "bytes_down")
    total = None
    if up is not None or down is not None:
        total = sum(v or 0 for v in (up or []) + (down or []))
        total = int(total) if total.is_integer() else total
    source, times = round_time(run)
    traffic = cumulative([(u or 0) + (d or 0) for u, d in zip(up or [], down or [], strict=False)])
    clock = elapsed(run)[1]
    energy = cumulative(column(rounds, "energy_j") or [None] * len(rounds))
    hit = next((i for i, a in enumerate(acc) if a is not None and a >= target), None)
    smallest = class_order(run)[-1] if class_order(run) else None
    times = [t for t in times if t is not None]
    compression = None
    held = [p for d in run.get("devices", []) if (p := num(d.get("params"))) is not None]
    if held and (dense := dense_params(run.get("scenario", {}))):
        compression = dense / (sum(held) / len(held))
    hit_cloud = to_target(run, target)
    return {
        "run": run["dir"].name,
        "dir": str(Path(run["dir"]).resolve()),
        "strategy": strategy_name(run) or "",
        "rounds": len(rounds),
        "planned_rounds": run.get("scenario", {}).get("run", {}).get("rounds"),
        "finished": "summary" in run,
        "final_accuracy": acc[-1] if acc else None,
        "best_accuracy": max((a for a in acc if a is not None), default=None),
        "rounds_to_target": reached[0] if reached else None,
        "bytes_to_target": traffic[hit] if hit is not None and traffic else None,
        "time_to_target_s": clock[hit] if hit is not None else None,
        "energy_to_target_j": energy[hit] if hit is not None else None,
        "cloud_bytes_to_target": hit_cloud["cloud_bytes"] if hit_cloud else None,
        "total_cloud_bytes": cloud_traffic(run)[-1],
        "total_bytes": total,
        "total_energy_j": energy[-1] if energy else None,
        "mean_round_time_s": sum(times) / len(times) if times else None,
        "round_time_source": source,
        "compression": compression,
        **own_accuracy_columns(run.get("summary", {}).get("classes", {})),
        "series": ([r["round"] for r in rounds], acc),
        "cost": (traffic, clock, source, smallest, column(rounds, f"acc_{smallest}")),
        "energy": energy,
        "cloud": cloud_traffic(run),
    }


def own_accuracy_columns(classes: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """``acc_<class>`` and ``acc_<class>_min``: mean and minimum accuracy of the models
    the class's devices hold at the end (summary.json, from devices.csv); ``val_<class>``
    and ``val_<class>_min``: the same on the fleet's validation samples, where the run
    has them (what to choose a sweep's point by, leaving the test split alone)."""
    out = {}
    for name, c in classes.items():
        out[f"acc_{name}"], out[f"acc_{name}_min"] = c.get("mean"), c.get("min")
        out[f"held_{name}"] = c.get("devices")  # the devices those figures cover
    for name, c in classes.items():
        if "validation_mean" in c:
            out[f"val_{name}"], out[f"val_{name}_min"] = c["validation_mean"], c["validation_min"]
    return out


def class_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The per-class columns of any of ``rows`` (test accuracy, devices holding a model,
    validation accuracy), in first-seen order."""
    prefixes = ("acc_", "held_", "val_")
    return list({k: None for p in prefixes for m in rows for k in m if k.startswith(p)})


def metrics_table(rows: list[dict[str, Any]], target: float, title: str = "runs") -> Table:
    classes = [
        c[4:] for c in class_columns(rows) if c.startswith("acc_") and not c.endswith("_min")
    ]
    table = Table(
        title,
        ["run", "strategy", "rounds", "final acc", "best acc", f"rounds to {target:g}"]
        + [f"sim time to {target:g} (s)", f"cloud bytes to {target:g}", "cloud bytes"]
        + ["bytes up+down", "mean round time (s)", "compression", f"energy to {target:g} (J)"]
        + [f"{c} devices: mean (min) [devices]" for c in classes],
    )
    for m, name in zip(rows, names_of(rows), strict=True):
        table.rows.append(
            [
                name,
                m["strategy"],
                rounds_cell(m),
                fmt(m["final_accuracy"], "acc"),
                fmt(m["best_accuracy"], "acc"),
                "" if m["rounds_to_target"] is None else str(m["rounds_to_target"]),
                fmt(m["time_to_target_s"], "s"),
                fmt(m["cloud_bytes_to_target"], "int"),
                fmt(m["total_cloud_bytes"], "int"),
                fmt(m["total_bytes"], "int"),
                fmt(m["mean_round_time_s"], "s") + f" ({m['round_time_source']})",
                fmt_ratio(m["compression"]),
                fmt(m["energy_to_target_j"], "int"),
                *(
                    own_cell(m.get(f"acc_{c}"), m.get(f"acc_{c}_min"), m.get(f"held_{c}"))
                    for c in classes
                ),
            ]
        )
    return table


def rounds_cell(m: dict[str, Any]) -> str:
    """Rounds run, and for an unfinished run of how many (its final figures are the
    last round's, not the run's end)."""
    if m["finished"]:
        return str(m["rounds"])
    return f"{m['rounds']}/{m['planned_rounds'] or '?'} (unfinished)"


def notes(runs: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[str]:
    """What a reader of the table should know: runs that did not finish, and the
    data, model, fleet and length settings in which the runs differ from the first
    (same-named classes of other fleets share a column)."""
    said = [
        f"{m['run']}: unfinished ({m['rounds']} of {m['planned_rounds'] or '?'} rounds, no "
        "summary.json): its figures are its last round's, its classes' n/a"
        for m in rows
        if not m["finished"]
    ]
    first = runs[0].get("scenario", {})
    for run, m in zip(runs[1:], rows[1:], strict=True):
        changed = scenario_changes(first, run.get("scenario", {}))
        differ = [c if len(c) < 60 else c.split(" (")[0] for c in changed if c.startswith(SETTINGS)]
        if differ:
            said.append(f"{m['run']} differs from {rows[0]['run']} in " + "; ".join(differ))
    return said


def names_of(rows: list[dict[str, Any]]) -> list[str]:
    """Each run's name in tables and legends: its directory's name, with its parent's
    where two runs share a name (the same point of two sweeps)."""
    names = [m["run"] for m in rows]
    return [
        f"{Path(m['dir']).parent.name}/{n}" if names.count(n) > 1 else n
        for m, n in zip(rows, names, strict=True)
    ]


def fmt_ratio(value: float | None) -> str:
    return fmt(value) + "x" if value is not None else fmt(None)


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    """Blank cells for missing values, so the CSV loads back with ``read_csv``."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows([{k: "" if r.get(k) is None else r[k] for k in columns} for r in rows])
    return path


def compared_dirs(out_dir: Path) -> set[str] | None:
    """The run directories a ``compare.csv`` in ``out_dir`` compares (None if there is
    none; an empty set for one written before it named them)."""
    path = out_dir / "compare.csv"
    if not path.exists():
        return None
    return {str(r.get("dir") or "") for r in read_csv(path)} - {""}


def compare(
    run_dirs: list[Path], out_dir: Path, target: float
) -> tuple[list[dict[str, Any]], list[Path], list[str]]:
    """Write ``compare.csv``, ``compare_accuracy.png`` (per round),
    ``compare_cost.png`` (against cumulative bytes and simulated time),
    ``compare_cloud.png`` (against cumulative cloud-link bytes) and, where a run has
    energy figures, ``compare_energy.png`` into ``out_dir``; returns the rows, every
    file written and the :func:`notes` on them."""
    from fogsim.study.overlays import plot_cost_overlay, plot_overlay  # matplotlib, when drawing

    runs = [load_run(d) for d in run_dirs]
    rows = [run_metrics(run, target) for run in runs]
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = write_csv(out_dir / "compare.csv", rows, COLUMNS + class_columns(rows))
    labels = [
        name if m["run"] == m["strategy"] else f"{name} ({m['strategy']})"
        for name, m in zip(names_of(rows), rows, strict=True)
    ]
    series = [(label, *m["series"], None) for label, m in zip(labels, rows, strict=True)]
    written = [csv_path, plot_overlay(series, out_dir / "compare_accuracy.png", target)]
    labelled = [(label, m["series"][1], *m["cost"]) for label, m in zip(labels, rows, strict=True)]
    written.append(plot_cost_overlay(labelled, out_dir / "compare_cost.png", target))
    by_cloud = [
        (label, m["cloud"], m["series"][1], None) for label, m in zip(labels, rows, strict=True)
    ]
    title, xlabel = "global test accuracy vs cloud-link bytes", "cumulative bytes on the cloud link"
    cloud_png = out_dir / "compare_cloud.png"
    written.append(plot_overlay(by_cloud, cloud_png, target, title, xlabel, log_bytes=True))
    by_energy = [
        (label, [None if e is None else e / 1e3 for e in m["energy"]], m["series"][1], None)
        for label, m in zip(labels, rows, strict=True)
        if any(e is not None for e in m["energy"])
    ]
    if by_energy:
        title, xlabel = "global test accuracy vs energy", "cumulative energy of sampled nodes (kJ)"
        energy_png = out_dir / "compare_energy.png"
        written.append(plot_overlay(by_energy, energy_png, target, title, xlabel))
    return rows, written, notes(runs, rows)
