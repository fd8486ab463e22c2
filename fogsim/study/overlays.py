"""Figures over several runs (``fogsim compare``, ``fogsim sweep``): one line per run,
drawn with the conventions of ``fogsim.study.plots`` (one colour per run here, since the
runs, not device classes, are what is compared)."""

from __future__ import annotations

from pathlib import Path

from fogsim.study.plots import bytes_axis, figure, finish, line, save_figure, scaled, time_unit


def plot_cost_overlay(runs: list[tuple], path: Path, target: float | None = None) -> Path:
    """Per run (label, global accuracy per round, cumulative bytes, cumulative time,
    time source, smallest class, its devices' mean accuracy per round): accuracy against
    traffic and against simulated time; the global model solid, the smallest class
    dashed in the same colour."""
    fig, (by_bytes, by_time) = figure(2)
    sources = set()
    scale, unit = time_unit([t for run in runs for t in run[3]])
    for i, (label, acc, traffic, clock, source, smallest, small_acc) in enumerate(runs):
        sources.add(source)
        color = f"C{i % 10}"
        clock = scaled(clock, scale)
        for ax, xs in ((by_bytes, traffic), (by_time, clock)):
            if not xs:
                continue
            line(ax, xs, acc, label, color=color)
            line(ax, xs, small_acc, f"{label}: {smallest} devices", color=color, ls="--")
    for ax in (by_bytes, by_time):
        if target is not None:
            ax.axhline(target, color="grey", linestyle=":")
    bytes_axis(by_bytes, "x")
    what = "simulated" if sources == {"sim_time_s"} else "round"
    xlabel = "cumulative bytes up + down"
    finish(by_bytes, "accuracy vs traffic", xlabel, "test accuracy", legend="lower right")
    xlabel = f"{what} time since the start ({unit})"
    finish(by_time, f"accuracy vs {what} time", xlabel, "test accuracy", legend=None)
    return save_figure(fig, path, integer_x=False)


Series = tuple[str, list[float], list[float | None], list[float] | None]


def plot_overlay(
    series: list[Series],
    path: Path,
    target: float | None = None,
    title: str = "global test accuracy per round",
    xlabel: str = "round",
    log_bytes: bool = False,
) -> Path:
    """One accuracy line per (label, x values, accuracies, std-or-None); std as a band."""
    fig, (ax,) = figure()
    for i, (label, xs, ys, std) in enumerate(series):
        spread = std or [0.0] * len(ys)
        pts = [(x, y, s) for x, y, s in zip(xs, ys, spread, strict=True) if None not in (x, y)]
        if not pts:
            continue
        px, py, ps = zip(*pts, strict=True)
        ax.plot(px, py, marker="o", markersize=3, label=label, color=f"C{i % 10}")
        if std is not None:
            lo = [y - s for y, s in zip(py, ps, strict=True)]
            hi = [y + s for y, s in zip(py, ps, strict=True)]
            ax.fill_between(px, lo, hi, alpha=0.2, color=f"C{i % 10}")
    if target is not None:
        ax.axhline(target, color="grey", linestyle=":", label=f"target {target:g}")
    if log_bytes:
        bytes_axis(ax, "x")
    finish(ax, title, xlabel, "global test accuracy", legend="lower right")
    return save_figure(fig, path, integer_x=xlabel == "round")
