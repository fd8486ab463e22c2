"""Every figure of one run fogsim draws, for a reader of a paper (figures over several
runs: ``fogsim.study.overlays``).

Conventions, kept in every figure: one colour per device class (in the scenario's
class order, :func:`class_colors`), the global model in black and drawn last so no
class line hides it; axes labelled with their units; memory and parameter counts on
log axes (memory in KiB/MiB); legends where they cover no data. Every figure is
:data:`FIGSIZE` at :data:`DPI` (800x450 pixels, no "tight" cropping), so plots of
different runs line up side by side.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator, MultipleLocator  # noqa: E402

from fogsim.study.series import (  # noqa: E402
    PARTS,
    buffered,
    class_energy,
    class_order,
    class_sizes,
    column,
    cumulative,
    elapsed,
    per_class_round,
    round_classes,
    round_time,
    slowest_class,
)
from fogsim.units import format_bytes  # noqa: E402

FIGSIZE, DPI = (8.0, 4.5), 100
GLOBAL = {"color": "black", "linewidth": 2.2, "zorder": 5}


def class_colors(names: list[str]) -> dict[str, str]:
    """One colour per class, by position in ``names`` (the scenario's order)."""
    return {name: f"C{i % 10}" for i, name in enumerate(names)}


def figure(ncols: int = 1) -> tuple[Any, list[Any]]:
    """A figure of ``ncols`` side-by-side axes."""
    fig, axes = plt.subplots(1, ncols, figsize=FIGSIZE, dpi=DPI, squeeze=False)
    return fig, list(axes[0])


def save_figure(fig: Any, path: Path, integer_x: bool = True) -> Path:
    if integer_x:  # rounds are whole numbers
        for ax in fig.axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins="auto"))
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def line(ax: Any, xs: list[float], ys: list[float | None] | None, label: str, **kw: Any) -> None:
    """A line through the points that have a value (none at all: nothing drawn)."""
    if ys is None:
        return
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None and x is not None]
    if pts:
        kw.setdefault("marker", "o")
        kw.setdefault("markersize", 3)
        ax.plot(*zip(*pts, strict=True), label=label, **kw)


def finish(ax: Any, title: str, xlabel: str, ylabel: str, legend: str | None = "best") -> None:
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc=legend, framealpha=0.85)


def bytes_axis(ax: Any, axis: str = "y") -> None:
    """A log axis of byte counts, ticks in B/KiB/MiB/GiB."""
    getattr(ax, f"set_{axis}scale")("log", base=2)
    getattr(ax, f"{axis}axis").set_major_formatter(FuncFormatter(lambda v, _: format_bytes(v)))


# --- one run (fogsim report) -----------------------------------------------------
def plot_accuracy(run: dict[str, Any], path: Path) -> Path:
    """Test accuracy per round: the global model, each class's devices (mean dashed,
    minimum dotted) and the clients' own held-out data; loss beside it."""
    rounds = run["rounds"]
    xs = [r["round"] for r in rounds]
    fig, (acc, loss) = figure(2)
    class_accuracy_lines(acc, run, xs, with_min=True)
    line(acc, xs, column(rounds, "client_accuracy"), "clients' held-out data", color="grey")
    line(acc, xs, column(rounds, "accuracy"), "global model", **GLOBAL)
    line(loss, xs, column(rounds, "train_loss"), "training (clients)", color="C1")
    line(loss, xs, column(rounds, "client_loss"), "clients' held-out data", color="grey")
    line(loss, xs, column(rounds, "loss"), "global model", **GLOBAL)
    low, high = acc.get_ylim()
    acc.set_ylim(low - 0.4 * (high - low), high)  # room for the legend below the lines
    finish(acc, "test accuracy", "round", "accuracy", legend="lower right")
    finish(loss, "cross-entropy loss", "round", "loss (nats)", legend="upper right")
    return save_figure(fig, path)


def same_model_groups(rounds: list[dict[str, Any]], kinds: tuple[str, ...]) -> list[tuple]:
    """Classes grouped when their devices' accuracy columns (``acc_<class><kind>``) agree
    in every round where both have a value (they hold the same model: all of it);
    each group as (class names, {kind: merged values})."""
    groups: list[tuple[list[str], dict[str, list[float | None]]]] = []
    for cls in round_classes(rounds):
        series = {k: column(rounds, f"acc_{cls}{k}") or [None] * len(rounds) for k in kinds}
        for names, merged in groups:
            pairs = [p for k in kinds for p in zip(merged[k], series[k], strict=True)]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            if pairs and all(abs(a - b) < 1e-9 for a, b in pairs):
                names.append(cls)
                for k in kinds:
                    both = zip(merged[k], series[k], strict=True)
                    merged[k] = [b if a is None else a for a, b in both]
                break
        else:
            groups.append(([cls], series))
    return groups


def class_accuracy_lines(
    ax: Any, run: dict[str, Any], xs: list[float | None], with_min: bool = False
) -> None:
    """Each class's devices' mean accuracy (dashed; minimum dotted) against ``xs``.
    Classes whose devices hold the same model share one grey line naming them all,
    instead of identical lines hiding each other."""
    colors = class_colors(class_order(run))
    kinds = ("", "_min") if with_min else ("",)
    for names, series in same_model_groups(run["rounds"], kinds):
        color = colors.get(names[0], "grey") if len(names) == 1 else "grey"
        who = " = ".join(names) + " devices"
        line(ax, xs, series[""], f"{who}, mean", color=color, ls="--")
        if with_min:
            line(ax, xs, series["_min"], f"{who}, min", color=color, ls=":")


def accuracy_lines(ax: Any, run: dict[str, Any], xs: list[float | None]) -> None:
    """The classes' devices' mean accuracy and the global model against ``xs``."""
    class_accuracy_lines(ax, run, xs)
    line(ax, xs, column(run["rounds"], "accuracy"), "global model", **GLOBAL)


def time_unit(seconds: list[float | None]) -> tuple[float, str]:
    """(seconds per unit, unit) that reads best for these times: s, min or h."""
    top = max((s for s in seconds if s is not None), default=0.0)
    return (3600.0, "h") if top > 3 * 3600 else (60.0, "min") if top > 300 else (1.0, "s")


def scaled(values: list[float | None], by: float) -> list[float | None]:
    return [None if v is None else v / by for v in values]


def plot_accuracy_cost(run: dict[str, Any], path: Path) -> Path | None:
    """Accuracy against what it cost: cumulative bytes on the wire and simulated time
    since the run's start (the global model and each class's devices)."""
    rounds = run["rounds"]
    up, down = column(rounds, "bytes_up"), column(rounds, "bytes_down")
    source, clock = elapsed(run)
    if up is None and down is None:
        return None
    traffic = cumulative([(u or 0) + (d or 0) for u, d in zip(up or [], down or [], strict=False)])
    scale, unit = time_unit(clock)
    clock = scaled(clock, scale)
    fig, (by_bytes, by_time) = figure(2)
    for ax, xs in ((by_bytes, traffic), (by_time, clock)):
        accuracy_lines(ax, run, xs)
    bytes_axis(by_bytes, "x")
    right = "lower right"
    finish(by_bytes, "accuracy vs traffic", "cumulative bytes up + down", "test accuracy", right)
    what = "simulated" if source == "sim_time_s" else "wall-clock"
    xlabel = f"{what} time since the start ({unit})"
    finish(by_time, f"accuracy vs {what} time", xlabel, "test accuracy", legend=right)
    return save_figure(fig, path, integer_x=False)


def plot_traffic(run: dict[str, Any], path: Path) -> Path:
    rounds = run["rounds"]
    xs = [r["round"] for r in rounds]
    fig, (ax,) = figure()
    mib = {
        c: [v / 2**20 if v is not None else None for v in (column(rounds, c) or [])]
        for c in ("bytes_up", "bytes_down")
    }
    line(ax, xs, mib["bytes_up"] or None, "up (devices → server)", color="C0")
    line(ax, xs, mib["bytes_down"] or None, "down (server → devices)", color="C1", ls="--")
    finish(ax, "traffic per round (array payloads)", "round", "MiB per round")
    return save_figure(fig, path)


def plot_round_time(run: dict[str, Any], path: Path) -> Path:
    """Round time; each simulated round's marker in the colour of the class of the node
    that set it (lock-step: the slowest; buffered: the merge's reply, the last to
    arrive), named in the legend."""
    source, times = round_time(run)
    xs = [r["round"] for r in run["rounds"]]
    fig, (ax,) = figure()
    line(ax, xs, times, "round", color="lightgrey", marker="")
    slowest = slowest_class(run) if source == "sim_time_s" else {}
    setter = "last reply (the merge)" if buffered(run) else "slowest node"
    colors = class_colors(class_order(run))
    for cls in dict.fromkeys(slowest.values()):
        pts = [(x, t) for x, t in zip(xs, times, strict=True) if slowest.get(x) == cls and t]
        if not pts:  # the class set only rounds of 0 s (a buffered merge at its opening)
            continue
        ax.scatter(
            *zip(*pts, strict=True),
            color=colors.get(cls, "grey"),
            zorder=3,
            s=18,
            label=f"{setter}: {cls}",
        )
    what = "simulated (download + compute + upload)" if source == "sim_time_s" else "wall-clock"
    finish(ax, f"round time, {what}", "round", "seconds")
    return save_figure(fig, path)


def plot_classes(run: dict[str, Any], path: Path) -> Path | None:
    """Per class: parameters held, batch size, and peak memory over each node's own
    budget (the honest check: above 100% a node went over its budget); only the panels
    whose nodes.csv columns exist, no figure at all when none does."""
    panels = [
        (name, title, ylabel, how)
        for name, title, ylabel, how in (
            ("params", "parameters held (mean)", "parameters (log)", "mean"),
            ("batch_size", "batch size (mean)", "samples per batch", "mean"),
            ("budget_share", "peak memory / budget", "max over nodes, each its own", "max"),
        )
        if column(run["nodes"], name) is not None
    ]
    if not panels:
        return None
    colors = class_colors(class_order(run))
    fig, axes = figure(len(panels))
    for ax, (name, title, ylabel, how) in zip(axes, panels, strict=True):
        by_class = per_class_round(run, name, how)
        for cls in (c for c in class_order(run) if c in by_class):
            xs = sorted(by_class[cls])
            line(ax, xs, [by_class[cls][x] for x in xs], cls, color=colors[cls])
        if name == "params":
            ax.set_yscale("log")
        if name == "budget_share":
            ax.axhline(1.0, color="red", linestyle=":", label="budget")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.0f}%"))
        finish(ax, title, "round", ylabel, legend="best" if name == "params" else None)
    return save_figure(fig, path)


def plot_memory(run: dict[str, Any], path: Path) -> Path | None:
    """Peak training memory per class (the largest node-round) on a log axis, with each
    class's budget range as a band: memory is what limits these devices."""
    peak = per_class_round(run, "peak_memory", "max")
    if not peak:
        return None
    colors = class_colors(class_order(run))
    budgets: dict[str, list[float]] = {}
    for row in run["fleet"]:
        budgets.setdefault(row["class"], []).append(float(row["budget_bytes"]))
    fig, (ax,) = figure()
    for cls in (c for c in class_order(run) if c in peak):
        xs = sorted(peak[cls])
        line(ax, xs, [peak[cls][x] for x in xs], f"{cls}: peak", color=colors[cls])
        if cls in budgets:
            low, high = min(budgets[cls]), max(budgets[cls])
            ax.axhspan(low * 0.98, high * 1.02, color=colors[cls], alpha=0.12)
    bytes_axis(ax)
    finish(ax, "peak training memory (bands: each class's budgets)", "round", "bytes (log)")
    return save_figure(fig, path)


HATCHES = {"compute": "", "radio": "///", "idle": ".."}


def plot_energy(run: dict[str, Any], path: Path) -> Path | None:
    """Where the energy goes and what it buys: per class, the mean energy of one
    node-round by part (compute, radio, idle; log axis, total above); and test accuracy
    against the cumulative energy of the sampled nodes. None without energy columns."""
    spent = class_energy(run)
    if not spent:
        return None
    fleet_j = column(run["rounds"], "energy_j")
    fig, axes = figure(2 if fleet_j else 1)
    classes = [c for c in class_order(run) if c in spent]
    colors, width = class_colors(class_order(run)), 0.8 / len(PARTS)
    for k, part in enumerate(PARTS):
        xs = [i + (k - 1) * width for i in range(len(classes))]
        heights, face = [spent[c][part] for c in classes], [colors[c] for c in classes]
        axes[0].bar(xs, heights, width, color=face, hatch=HATCHES[part], edgecolor="black")
        axes[0].bar(0, 0, color="white", hatch=HATCHES[part], edgecolor="black", label=part)
    for i, c in enumerate(classes):
        total = spent[c]["mean"]
        text = f"{total / 1e3:.3g} kJ" if total >= 1e3 else f"{total:.3g} J"
        axes[0].annotate(text, (i, total), ha="center", va="bottom", fontsize=7)
    axes[0].set_yscale("log")
    axes[0].set_ylim(top=3 * max(spent[c]["mean"] for c in classes))  # room for the totals
    ticks = [f"{c}\nn = {spent[c]['n']:.0f}" for c in classes]
    axes[0].set_xticks(range(len(classes)), ticks, fontsize=7)
    xlabel = "device class (n = node-rounds with a known energy)"
    finish(axes[0], "energy of a node-round (mean), by part", xlabel, "joules (log)", "upper left")
    if fleet_j:
        accuracy_lines(axes[1], run, scaled(cumulative(fleet_j), 1e3))
        xlabel = "cumulative energy of the sampled nodes (kJ)"
        finish(axes[1], "accuracy vs energy", xlabel, "test accuracy", legend="lower right")
    return save_figure(fig, path, integer_x=False)


def plot_availability(run: dict[str, Any], path: Path) -> Path | None:
    """When nodes were on: per class, the share of its nodes up at each round's start
    (trace, diurnal model and per-round probability), against the simulated clock's
    time of day; a cross where nodes of the class departed mid-round (their number).
    None for runs without these columns or with every node on in every round."""
    rounds, sizes = run["rounds"], class_sizes(run)
    starts = column(rounds, "sim_clock_s")
    classes = [c for c in class_order(run) if sizes.get(c) and column(rounds, f"up_{c}")]
    ups = {c: column(rounds, f"up_{c}") or [] for c in classes}
    if starts is None or all(u == sizes[c] for c in classes for u in ups[c]):
        return None  # no column, or every node on in every round: nothing to show
    gone = Counter((n["class"], n["round"]) for n in run["nodes"] if n["status"] == "departed")
    hours = scaled(starts, 3600.0)
    colors = class_colors(class_order(run))
    fig, (ax,) = figure()
    for c in classes:
        share = [None if u is None else u / sizes[c] for u in ups[c]]
        line(ax, hours, share, f"{c} ({sizes[c]} nodes)", color=colors[c])
        for r, x, y in zip(rounds, hours, share, strict=True):
            if (k := gone[(c, r["round"])]) and y is not None:
                ax.scatter(x, y, marker="x", s=60, color="black", zorder=6)
                ax.annotate(
                    f"{k} left", (x, y), xytext=(3, 3), textcoords="offset points", fontsize=7
                )
    if gone:
        ax.scatter([], [], marker="x", color="black", label="departed mid-round")
    span = max(h for h in hours if h is not None) - min(h for h in hours if h is not None)
    ax.xaxis.set_major_locator(MultipleLocator(max(1, round(span / 8))))
    ax.xaxis.set_major_formatter(
        FuncFormatter(lambda h, _: f"{int(h) % 24:02d}:{round(h % 1 * 60):02d}")
    )
    ax.set_ylim(0, 1.05)
    finish(
        ax,
        "nodes on at each round's start",
        "simulated clock (time of day)",
        "nodes on / class size",
    )
    return save_figure(fig, path, integer_x=False)


def plot_participation(run: dict[str, Any], path: Path) -> Path | None:
    sizes = class_sizes(run)
    counts = per_class_round(run, "", "count")
    if not counts:
        return None
    xs = [r["round"] for r in run["rounds"]]
    colors = class_colors(class_order(run))
    fig, (ax,) = figure()
    for cls in (c for c in class_order(run) if sizes.get(c)):
        share = [counts.get(cls, {}).get(x, 0) / sizes[cls] for x in xs]
        line(ax, xs, share, f"{cls} ({sizes[cls]} nodes)", color=colors[cls])
    ax.set_ylim(0, 1.05)
    finish(ax, "participation per round", "round", "nodes trained / class size")
    return save_figure(fig, path)
