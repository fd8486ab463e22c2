"""The figures' common ground: matplotlib without a display, one size, shared helpers.

Every figure is :data:`FIGSIZE` at :data:`DPI` (800x450 pixels, no "tight" cropping),
so plots of different runs line up side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

FIGSIZE, DPI = (8.0, 4.5), 100


def figure(ncols: int = 1) -> tuple[Any, list[Any]]:
    """A figure of ``ncols`` side-by-side axes."""
    fig, axes = plt.subplots(1, ncols, figsize=FIGSIZE, dpi=DPI, squeeze=False)
    return fig, list(axes[0])


def save_figure(fig: Any, path: Path) -> Path:
    for ax in fig.axes:  # rounds are whole numbers
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def line(ax: Any, xs: list[int], ys: list[float | None] | None, label: str, **kw: Any) -> None:
    """A line through the points that have a value (none at all: nothing drawn)."""
    if ys is None:
        return
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
    if pts:
        ax.plot(*zip(*pts, strict=True), marker="o", label=label, **kw)


def plot_overlay(
    series: list[tuple[str, list[int], list[float | None], list[float] | None]],
    path: Path,
    target: float | None = None,
    title: str = "accuracy per round",
) -> Path:
    """One accuracy line per (label, rounds, values, std-or-None); std as a band."""
    fig, (ax,) = figure()
    for i, (label, xs, ys, std) in enumerate(series):
        pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
        if not pts:
            continue
        px, py = zip(*pts, strict=True)
        ax.plot(px, py, marker="o", label=label, color=f"C{i % 10}")
        if std is not None:
            lo = [y - s for y, s in zip(ys, std, strict=True) if y is not None]
            hi = [y + s for y, s in zip(ys, std, strict=True) if y is not None]
            ax.fill_between(px, lo, hi, alpha=0.2, color=f"C{i % 10}")
    if target is not None:
        ax.axhline(target, color="grey", linestyle=":", label=f"target {target:g}")
    ax.set(title=title, xlabel="round", ylabel="global test accuracy")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
