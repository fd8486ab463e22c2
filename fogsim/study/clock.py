"""Accuracy against what a fleet's clock and its wide-area link pay for it.

Rounds are the wrong unit to compare a flat fleet, a fog tier and buffered rounds: a
cloud round of five fog rounds does five rounds of training, and a buffered "round" is
one merge of a few updates. What a researcher compares is accuracy against simulated
time (``sim_clock_s`` + ``sim_time_s``: :func:`fogsim.study.series.elapsed`) and
against the bytes that crossed the cloud link (``cloud_bytes``; a run without the
column, from before the fog tier, had every device talk to the cloud: its
``bytes_up + bytes_down``), and how much of each it took to reach a target accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fogsim.study.series import column, cumulative, elapsed


def cloud_traffic(run: dict[str, Any]) -> list[float | None]:
    """Cumulative bytes on the cloud link at the end of each round."""
    rounds = run["rounds"]
    per = column(rounds, "cloud_bytes")
    if per is None:
        up, down = column(rounds, "bytes_up") or [], column(rounds, "bytes_down") or []
        per = [(u or 0) + (d or 0) for u, d in zip(up, down, strict=False)] or None
    return cumulative(per) if per is not None else [None] * len(rounds)


def to_target(run: dict[str, Any], target: float) -> dict[str, Any] | None:
    """The first round whose global model reaches ``target``: its ``round``, the
    simulated ``time_s`` since the start and the ``cloud_bytes`` spent by its end;
    None if no round does."""
    acc = column(run["rounds"], "accuracy") or []
    clock, cloud = elapsed(run)[1], cloud_traffic(run)
    for i, a in enumerate(acc):
        if a is not None and a >= target:
            return {"round": run["rounds"][i]["round"], "time_s": clock[i], "cloud_bytes": cloud[i]}
    return None


def plot_time_and_cloud(run: dict[str, Any], path: Path, target: float) -> Path:
    """The global model's accuracy against simulated time and against cumulative
    cloud-link bytes, with the target accuracy."""
    from fogsim.study.plots import (  # matplotlib: only when drawing
        GLOBAL,
        bytes_axis,
        figure,
        finish,
        line,
        save_figure,
        scaled,
    )
    from fogsim.study.plots import time_unit as unit_of

    acc = column(run["rounds"], "accuracy")
    source, clock = elapsed(run)
    scale, unit = unit_of(clock)
    fig, (by_time, by_cloud) = figure(2)
    line(by_time, scaled(clock, scale), acc, "global model", **GLOBAL)
    line(by_cloud, cloud_traffic(run), acc, "global model", **GLOBAL)
    for ax in (by_time, by_cloud):
        ax.axhline(target, color="grey", linestyle=":", label=f"target {target:g}")
    bytes_axis(by_cloud, "x")
    what = "simulated" if source == "sim_time_s" else "wall-clock"
    finish(by_time, f"accuracy vs {what} time", f"{what} time ({unit})", "test accuracy")
    xlabel = "cumulative bytes on the cloud link"
    finish(by_cloud, "accuracy vs cloud-link bytes", xlabel, "test accuracy", "lower right")
    return save_figure(fig, path, integer_x=False)


def target_line(run: dict[str, Any], target: float) -> str:
    """One sentence for report.md: when and at what cloud cost the target was met."""
    hit = to_target(run, target)
    if hit is None:
        return f"Test accuracy {target:g} not reached."
    cloud, t = hit["cloud_bytes"], hit["time_s"]
    # MiB, as the plots' byte axes (the text once said MB beside them: 3.48 against 3.3)
    cloud_text = f", {cloud / 2**20:.2f} MiB on the cloud link" if cloud is not None else ""
    time_text = ""
    if t is not None:
        # 3 significant digits below 100 s (a small fleet's round takes 0.07 s: ".1f"
        # said 0.1), whole seconds above
        shown = f"{t:.3g}" if t < 100 else f"{t:.0f}"
        time_text = f" after {shown} s on the simulated clock"
    return f"Test accuracy {target:g} reached in round {hit['round']}{time_text}{cloud_text}."
