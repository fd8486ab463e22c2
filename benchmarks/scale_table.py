"""The scale benchmark's table (``scale.py`` measures its rows): printed after a run,
written as a results file's rows (mean and std over the repeats), rendered in the
README."""

from __future__ import annotations

import os
from typing import Any

from results_io import pm, renderer, stats

MB = 1 << 20


def print_table(results: list[dict[str, Any]], rounds: int) -> None:
    head = (
        "nodes", "per rnd", "msgs", "strategy", "smp/cl", "s/round", "cl/s", "RSS MB",
        "PSS MB", "work s", "floor s", "/floor", "Flower s", "/Flower", "Flwr RSS", "wall s",
    )  # fmt: skip
    lines = [head]
    for r in results:
        fl = r["flower"]
        for strategy in ("mask-union", "fedavg"):
            m = r[strategy]
            dense = strategy == "fedavg" and fl is not None
            lines.append(
                (
                    f"{r['nodes']:,}",
                    str(r["per_round"]),
                    f"{r['messages']}x{r['cohort']}",
                    strategy,
                    f"{m['samples']:.0f}",
                    f"{m['sec']:.2f}",
                    f"{r['per_round'] / m['sec']:.0f}",
                    f"{m['rss'] / MB:.0f}",
                    f"{m['pss'] / MB:.0f}",
                    f"{m['work']:.2f}",
                    f"{m['floor']:.2f}",
                    f"{m['sec'] / m['floor']:.2f}",
                    f"{fl['sec']:.2f}" if dense else "",
                    f"{m['sec'] / fl['sec']:.2f}" if dense else "",
                    f"{fl['rss'] / MB:.0f}" if dense else "",
                    f"{m['wall']:.0f}",
                )
            )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    print(f"\nscale benchmark: {rounds} rounds per run, {os.cpu_count()} CPUs, s/round = median "
          "after round 1; /floor and /Flower = fogsim s/round over theirs")  # fmt: skip
    for i, line in enumerate(lines):
        print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def json_rows(repeats: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One object per (row, strategy), each figure's mean over the repeats and its std
    (``vs_*``: fogsim over the floor / plain Flower, per repeat, then averaged)."""
    out = []
    for i, first in enumerate(repeats[0]):
        runs = [rep[i] for rep in repeats]
        for strategy in ("mask-union", "fedavg"):
            dense = strategy == "fedavg" and first["flower"] is not None
            figures = {
                "s_per_round": [r[strategy]["sec"] for r in runs],
                "floor_s": [r[strategy]["floor"] for r in runs],
                "vs_floor": [r[strategy]["sec"] / r[strategy]["floor"] for r in runs],
                "flower_s": [r["flower"]["sec"] for r in runs] if dense else None,
                "vs_flower": [r[strategy]["sec"] / r["flower"]["sec"] for r in runs]
                if dense
                else None,
                "rss_mb": [r[strategy]["rss"] / MB for r in runs],
                "pss_mb": [r[strategy]["pss"] / MB for r in runs],
                "work_s": [r[strategy]["work"] for r in runs],
                "samples_per_client": [r[strategy]["samples"] for r in runs],
            }
            row: dict[str, Any] = {
                "nodes": first["nodes"],
                "per_round": first["per_round"],
                "in_flight": first["in_flight"] or min(first["per_round"], 100),
                "samples_per_node": first["samples_per_node"],
                "messages": first["messages"],
                "cohort": first["cohort"],
                "strategy": strategy,
                "repeats": len(runs),
            }
            for name, values in figures.items():
                s = stats(values) if values is not None else None
                row[name] = s["mean"] if s else None
                row[f"{name}_std"] = s["std"] if s else None
            out.append(row)
    return out


@renderer("scale_registered")  # 1,000 nodes, 1,000 per round
@renderer("scale_fleets")  # 10,000 and 100,000 nodes, 1,000 per round
@renderer("scale")
def markdown(doc: dict[str, Any]) -> str:
    head = (
        "| nodes | per round | messages × cohort | strategy | s/round | vs floor | vs Flower "
        "| PSS MB |"
    )
    lines = [head, "|---" * 8 + "|"]
    for r in doc["rows"]:
        cell = {k: {"mean": r[k], "std": r[f"{k}_std"]} for k in ("s_per_round", "vs_floor")}
        flower = {"mean": r["vs_flower"], "std": r["vs_flower_std"]}
        pss = {"mean": r["pss_mb"], "std": r["pss_mb_std"]}
        lines.append(
            f"| {r['nodes']:,} | {r['per_round']} | {r['messages']} × {r['cohort']} | "
            f"{r['strategy']} | "
            f"{pm(cell['s_per_round'])} | {pm(cell['vs_floor'])}x | "
            f"{pm(flower) + 'x' if r['vs_flower'] is not None else '–'} | {pm(pss, digits=0)} |"
        )
    return "\n".join(lines)
