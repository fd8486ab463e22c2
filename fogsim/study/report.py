"""``fogsim report``: plots and tables of one finished (or interrupted) run.

Everything is read from the run's files via :func:`fogsim.study.results.load`; a column that
a run does not have (older runs, other strategies) drops its plot or table entry
instead of being guessed, so numbers shown are always numbers measured.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fogsim.study.plots import figure, line, save_figure
from fogsim.study.results import TRAINED, load, strategy_name

NA = "n/a"


class ReportError(ValueError):
    """A directory that is not a readable run; the message says which and why."""


@dataclass
class Table:
    """Headers and already formatted cells, rendered to rich and to markdown alike."""

    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.headers) + " |", "|" + "---|" * len(self.headers)]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines)


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """``load()`` plus the checks a report needs: a directory with at least one round."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such run directory")
    if not (run_dir / "rounds.csv").exists():
        raise ReportError(f"{run_dir}: not a fogsim run (no rounds.csv)")
    run = load(run_dir)
    if not run.get("rounds"):
        raise ReportError(f"{run_dir}: rounds.csv holds no finished round yet")
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


def fmt(value: float | None, kind: str = "g") -> str:
    """Cells: accuracy/loss to 4 decimals, counts and bytes as integers, time to 0.01 s."""
    if value is None:
        return NA
    if kind == "acc":
        return f"{value:.4f}"
    if kind == "int":
        return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
    if kind == "s":
        return f"{value:.2f}"
    if kind == "%":
        return f"{100 * value:.0f}%"
    return f"{value:.4g}"


def round_table(run: dict[str, Any]) -> Table:
    rounds = run["rounds"]
    source, times = round_time(run)
    cols = [
        ("accuracy", "acc"),
        ("loss", "acc"),
        ("client_accuracy", "acc"),
        ("bytes_up", "int"),
        ("bytes_down", "int"),
    ]
    cols = [(c, k) for c, k in cols if column(rounds, c) is not None]
    if any(num(r.get("failed")) for r in rounds):  # clients that did not count
        cols.append(("failed", "int"))
    acc_cols = [c for c in rounds[0] if c.startswith("acc_") and column(rounds, c) is not None]
    table = Table(
        "per round",
        ["round"] + [c for c, _ in cols] + acc_cols + [f"round time ({source})"],
    )
    for i, r in enumerate(rounds):
        cells = [str(r["round"])] + [fmt(num(r.get(c)), k) for c, k in cols]
        cells += [fmt(num(r.get(c)), "acc") for c in acc_cols]
        table.rows.append(cells + [fmt(times[i], "s")])
    return table


def class_table(run: dict[str, Any]) -> Table:
    """Per device class: size, budget, final params and batch size, peak memory,
    participation (node-rounds trained / (rounds x class size)), and node-rounds whose
    update was not averaged (crashed, dropped, rejected, ...: ``status`` in nodes.csv)."""
    sizes = class_sizes(run)
    budgets: dict[str, list[float]] = defaultdict(list)
    for row in run["fleet"]:
        if (b := num(row.get("budget_bytes"))) is not None:
            budgets[row["class"]].append(b)
    n_rounds = len(run["rounds"])
    params = per_class_round(run, "params", "mean")
    batch = per_class_round(run, "batch_size", "mean")
    peak = per_class_round(run, "peak_memory", "max")
    use = per_class_round(run, "budget_share", "max")
    counts = per_class_round(run, "", "count")
    headers = ["class", "nodes", "budget bytes", "params (final mean)", "batch size (final)"]
    headers += ["peak memory (max)", "peak / own budget (max)", "node-rounds"]
    headers += ["participation", "devices' accuracy: mean (min)", "failed"]
    final = run.get("summary", {}).get("classes", {})
    table = Table("per device class", headers)
    for c, size in sizes.items():
        top = max(peak[c].values()) if peak.get(c) else None
        ratio = max(use[c].values()) if use.get(c) else None
        trained = int(sum(counts.get(c, {}).values()))
        share = trained / (n_rounds * size) if size else None
        failed = sum(n["class"] == c and n.get("status", "ok") != "ok" for n in run["nodes"])
        low, high = min(budgets[c], default=None), max(budgets[c], default=None)
        table.rows.append(
            [
                c,
                str(size),
                fmt(low, "int") + (f"..{fmt(high, 'int')}" if high != low else ""),
                fmt(last(params.get(c, {})), "int"),
                fmt(last(batch.get(c, {})), "int"),
                fmt(top, "int"),
                fmt(ratio, "%"),
                str(trained),
                fmt(share, "%"),
                own_cell(final.get(c, {}).get("mean"), final.get(c, {}).get("min")),
                str(failed),
            ]
        )
    return table


def own_cell(mean: float | None, low: float | None) -> str:
    """A class's devices' accuracy as ``mean (min)``."""
    return fmt(None) if mean is None else f"{fmt(mean, 'acc')} ({fmt(low, 'acc')})"


def round_classes(rounds: list[dict[str, Any]]) -> list[str]:
    """Device classes with per-class accuracy columns in rounds.csv."""
    return [c[4:] for c in rounds[0] if c.startswith("acc_") and not c.endswith("_min")]


def last(by_round: dict[int, float]) -> float | None:
    """The value in the last round that has one."""
    return by_round[max(by_round)] if by_round else None


def plot_accuracy(run: dict[str, Any], path: Path) -> Path:
    rounds = run["rounds"]
    xs = [r["round"] for r in rounds]
    fig, (acc, loss) = figure(2)
    line(acc, xs, column(rounds, "accuracy"), "global (test split)", linewidth=2)
    line(acc, xs, column(rounds, "client_accuracy"), "clients (mean)")
    for cls in round_classes(rounds):
        line(acc, xs, column(rounds, f"acc_{cls}"), f"{cls} devices (mean)", linestyle="--")
        line(acc, xs, column(rounds, f"acc_{cls}_min"), f"{cls} devices (min)", linestyle=":")
    for c, label in (("loss", "global"), ("client_loss", "clients"), ("train_loss", "train")):
        line(loss, xs, column(rounds, c), label)
    acc.set(title="accuracy", xlabel="round")
    loss.set(title="loss", xlabel="round")
    for ax in (acc, loss):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_traffic(run: dict[str, Any], path: Path) -> Path:
    rounds = run["rounds"]
    xs = [r["round"] for r in rounds]
    fig, (ax,) = figure()
    line(ax, xs, column(rounds, "bytes_up"), "up (clients → server)")
    line(ax, xs, column(rounds, "bytes_down"), "down (server → clients)", linestyle="--")
    ax.set(title="traffic per round", xlabel="round", ylabel="bytes")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_round_time(run: dict[str, Any], path: Path) -> Path:
    source, times = round_time(run)
    fig, (ax,) = figure()
    line(ax, [r["round"] for r in run["rounds"]], times, source)
    what = "simulated (modelled)" if source == "sim_time_s" else "wall-clock"
    ax.set(title=f"round time, {what}", xlabel="round", ylabel="seconds")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_classes(run: dict[str, Any], path: Path) -> Path | None:
    """Params held, batch size and peak memory over each node's own budget per class;
    only the panels whose nodes.csv columns exist, no figure at all when none does."""
    panels = [
        (name, title, how)
        for name, title, how in (
            ("params", "parameters held (mean)", "mean"),
            ("batch_size", "batch size (mean)", "mean"),
            ("budget_share", "peak memory / own budget (max)", "max"),
        )
        if column(run["nodes"], name) is not None
    ]
    if not panels:
        return None
    fig, axes = figure(len(panels))
    for ax, (name, title, how) in zip(axes, panels, strict=True):
        for i, (c, by) in enumerate(sorted(per_class_round(run, name, how).items())):
            xs = sorted(by)
            ax.plot(xs, [by[x] for x in xs], marker="o", label=c, color=f"C{i}")
        if name == "budget_share":
            ax.axhline(1.0, color="grey", linestyle=":", label="budget")
        ax.set(title=title, xlabel="round")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_participation(run: dict[str, Any], path: Path) -> Path | None:
    sizes = class_sizes(run)
    counts = per_class_round(run, "", "count")
    if not counts:
        return None
    xs = [r["round"] for r in run["rounds"]]
    fig, (ax,) = figure()
    for c, size in sorted(sizes.items()):
        if size:
            share = [counts.get(c, {}).get(x, 0) / size for x in xs]
            ax.plot(xs, share, marker="o", label=f"{c} ({size} nodes)")
    ax.set(title="participation: nodes trained / class size", xlabel="round", ylim=(0, 1.05))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


@dataclass
class Report:
    run_dir: Path
    tables: list[Table]
    plots: list[Path]
    markdown: Path


def write_report(run_dir: str | Path) -> Report:
    """Write the PNGs and ``report.md`` into ``run_dir``; return them and the tables."""
    run = load_run(run_dir)
    d = run["dir"]
    plots = [
        plot_accuracy(run, d / "accuracy.png"),
        plot_traffic(run, d / "traffic.png"),
        plot_round_time(run, d / "round_time.png"),
        plot_classes(run, d / "classes.png"),
        plot_participation(run, d / "participation.png"),
    ]
    plots = [p for p in plots if p is not None]
    tables = [round_table(run), class_table(run)]
    summary = run.get("summary", {})
    strategy = strategy_name(run)
    lines = [f"# fogsim run `{d.name}`", ""]
    lines.append(
        f"strategy **{strategy or NA}**, {len(run['rounds'])} rounds finished"
        + ("" if summary else " (run unfinished: no summary.json)")
        + f"; final accuracy {fmt(num(run['rounds'][-1].get('accuracy')), 'acc')}."
    )
    for t in tables:
        lines += ["", f"## {t.title}", "", t.markdown()]
    lines += ["", "## plots", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    md = d / "report.md"
    md.write_text("\n".join(lines) + "\n")
    return Report(d, tables, plots, md)
