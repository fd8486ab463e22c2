"""``fogsim report``: the tables, plots and report.md of one finished (or interrupted)
run, all from its files (``fogsim.study.series``): a column a run lacks shows as
``n/a``, never as an estimate."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fogsim.study import clock
from fogsim.study.results import FAILED, strategy_name
from fogsim.study.series import (
    class_energy,
    class_order,
    class_sizes,
    column,
    last,
    load_run,
    num,
    per_class_round,
    round_time,
)
from fogsim.units import format_bytes

NA = "n/a"


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
        return f"{100 * value:.1f}%"
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
        ("energy_j", "int"),
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
    participation (node-rounds trained / (rounds x class size)), node-rounds whose
    update was not averaged (crashed, dropped, rejected, ...: ``status`` in nodes.csv;
    not those whose update no merge took by a buffered run's end, ``unfinished``),
    and energy (per node-round and in all, over node-rounds whose energy is known)."""
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
    headers += ["participation", "devices' accuracy: mean (min) [devices]", "failed"]
    # over the node-rounds with an energy, a departed node's included: they may
    # outnumber "node-rounds" (its update came, ok or late), so the cell says how many
    headers += ["energy J per node-round (mean) [node-rounds]", "energy J (total)"]
    energy = class_energy(run)
    final = run.get("summary", {}).get("classes", {})
    idle = idle_reasons(run, budgets)
    table = Table("per device class", headers)
    for c in class_order(run):
        size = sizes.get(c, 0)
        top = max(peak[c].values()) if peak.get(c) else None
        ratio = max(use[c].values()) if use.get(c) else None
        trained = int(sum(counts.get(c, {}).values()))
        share = trained / (n_rounds * size) if size else None
        failed = sum(n["class"] == c and n.get("status", "ok") in FAILED for n in run["nodes"])
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
                fmt(share, "%") + (f" ({idle[c]})" if trained == 0 and c in idle else ""),
                own_cell(*(final.get(c, {}).get(k) for k in ("mean", "min", "devices"))),
                str(failed),
                f"{fmt(energy[c]['mean'])} [{energy[c]['n']:.0f}]" if c in energy else NA,
                fmt(energy[c]["total"], "int") if c in energy else NA,
            ]
        )
    return table


def idle_reasons(run: dict[str, Any], budgets: dict[str, list[float]]) -> dict[str, str]:
    """Why a class's nodes could not train, from the run's scenario and budgets: no
    model fits (below the narrowest, beside DynHP's arrays where the strategy's
    clients run DynHP), or the strategy trains only the full model."""
    from fogsim.device.memory import training_memory  # torch: only when reporting this
    from fogsim.scenario import Scenario
    from fogsim.strategies.build import runs_dynhp

    try:
        sc = Scenario.model_validate(run.get("scenario", {}))
    except ValueError:  # an older or edited scenario.json: no reason rather than a guess
        return {}
    dynhp = runs_dynhp(sc)
    narrowest = sc.narrowest_need(dynhp)
    what = "the narrowest model" + (" with DynHP's arrays" if dynhp else "")
    full = training_memory(sc.arch, sc.dynhp.min_batch, sc.train.memory_kind)
    out = {}
    for name, bs in budgets.items():
        top = max(bs, default=0)
        if top < narrowest:
            out[name] = f"budget ≤ {format_bytes(top)} < {format_bytes(narrowest)}, {what}"
        elif (sc.strategy.name == "fedavg-feasible" or sc.strategy.flower) and top < full:
            out[name] = f"budget ≤ {format_bytes(top)} < {format_bytes(full)}, the full model"
    return out


def own_cell(mean: float | None, low: float | None, held: int | None = None) -> str:
    """A class's devices' accuracy as ``mean (min)``, with ``[n]``, the devices
    holding a model that the figures cover, when known (a device that never completed
    a participation holds none and is not in them)."""
    if mean is None:
        return fmt(None)
    return f"{fmt(mean, 'acc')} ({fmt(low, 'acc')})" + (f" [{held}]" if held is not None else "")


@dataclass
class Report:
    run_dir: Path
    tables: list[Table]
    plots: list[Path]
    markdown: Path


def write_report(run_dir: str | Path, target: float = 0.9) -> Report:
    """Write the PNGs and ``report.md`` into ``run_dir``; return them and the tables
    (``target``: the test accuracy whose simulated time and cloud bytes it reports)."""
    from fogsim.study import plots  # matplotlib: imported by the commands that draw only

    run = load_run(run_dir)
    d = run["dir"]
    drawn = [
        plots.plot_accuracy(run, d / "accuracy.png"),
        clock.plot_time_and_cloud(run, d / "accuracy_time_cloud.png", target),
        plots.plot_accuracy_cost(run, d / "accuracy_cost.png"),
        plots.plot_traffic(run, d / "traffic.png"),
        plots.plot_round_time(run, d / "round_time.png"),
        plots.plot_classes(run, d / "classes.png"),
        plots.plot_memory(run, d / "memory.png"),
        plots.plot_participation(run, d / "participation.png"),
        plots.plot_availability(run, d / "availability.png"),
        plots.plot_energy(run, d / "energy.png"),
    ]
    drawn = [p for p in drawn if p is not None]
    tables = [round_table(run), class_table(run)]
    summary = run.get("summary", {})
    strategy = strategy_name(run)
    lines = [f"# fogsim run `{d.name}`", ""]
    lines.append(
        f"strategy **{strategy or NA}**, {len(run['rounds'])} rounds finished"
        + ("" if summary else " (run unfinished: no summary.json)")
        + f"; final accuracy {fmt(num(run['rounds'][-1].get('accuracy')), 'acc')}. "
        + clock.target_line(run, target)
    )
    for t in tables:
        lines += ["", f"## {t.title}", "", t.markdown()]
    lines += ["", "## plots", ""]
    lines += [f"![{p.stem}]({p.name})" for p in drawn]
    md = d / "report.md"
    md.write_text("\n".join(lines) + "\n")
    return Report(d, tables, drawn, md)
