"""The README's tables of ``benchmarks/results/mask_union_vs_rivals.json`` (written by
``research_maskunion.py``), and its console table.

Two views of the same runs: per scenario, every variant's figures (mean ± std over
seeds); then mask-union against each rival *paired by seed*. The same seed draws the
same fleet, partition and initial model for every strategy, so the per-seed difference
removes what the seed adds to both, which the spread of each side's mean keeps (on
Fashion-MNIST Dirichlet the partition alone moves every strategy by ± 3-6 pt).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from results_io import pm, renderer, revision_of

RIVALS = ("heterofl", "fedrolex")  # the bar: mask-union >= each, every class


def table(name: str, results: dict[str, dict[str, Any]]) -> str:
    """One markdown table: a row per variant, per class 'mean' and 'min' columns."""
    variants = [v for v in results if results[v].get("aggregate")]
    if not variants:
        return ""
    classes = list(results[variants[0]]["aggregate"]["classes"])
    head = ["variant", "seeds", "global"]
    head += [f"{c} {k}" for c in classes for k in ("mean", "min")]
    head += ["up MB", "down MB"]
    lines = [f"### {name}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in variants:
        agg = results[v]["aggregate"]
        cells = [v, str(len(agg["seeds"])), pm(agg["final_accuracy"], 100)]
        for c in classes:
            cells += [pm(agg["classes"][c]["mean"], 100), pm(agg["classes"][c]["min"], 100)]
        cells += [pm(agg["bytes_up"], 1e-6, 1), pm(agg["bytes_down"], 1e-6, 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@renderer("mask_union_vs_rivals")
def markdown(doc: dict[str, Any]) -> str:
    """Per scenario, one table: a row per variant; per class its devices' mean and
    minimum accuracy (each the mean ± std over seeds), global accuracy, MB up, the
    code its runs were made with and the memory model revision they ran under; then
    the engine checks, then :func:`paired`."""
    out = []
    for name in dict.fromkeys(r["scenario"] for r in doc["rows"]):
        rows = [r for r in doc["rows"] if r["scenario"] == name]
        classes = list(rows[0]["classes"])
        engines = ", ".join(dict.fromkeys(r.get("engine", doc.get("engine", "?")) for r in rows))
        n = ", ".join(dict.fromkeys(str(len(r["seeds"])) for r in rows))
        head = ["variant", "global", *(f"{c} mean (min)" for c in classes)]
        head += ["MB up", "code", "memory model"]
        lines = [
            f"**{name}** ({n} seeds, engine `{engines}`)",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
        for r in rows:
            cells = [r["variant"], pm(r["final_accuracy"], 100)]
            for c in classes:
                cls = r["classes"][c]
                cells.append(f"{pm(cls['mean'], 100)} ({pm(cls['min'], 100)})")
            cells.append(pm(r["bytes_up"], 1e-6, 0))
            cells.append(", ".join(r.get("code", ["unrecorded"])))
            cells.append(str(revision_of(doc, r)))
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    for c in doc.get("engine_checks", []):
        wall = c["wall_s"]
        out.append(
            f"Engine check, {c['scenario']} {c['variant']} seed {c['seed']}: `flower` and "
            f"`inprocess` differ by at most {100 * c['max_abs_diff']:.2f} pt in the global "
            f"and every class mean and minimum; bytes up "
            f"{'equal' if c['bytes_up_equal'] else 'different'}; "
            f"{wall['flower']:.0f} s against {wall['inprocess']:.0f} s."
        )
    out.append(paired(doc))
    out.append(paired(doc, "mask-union-linear", ("heterofl", "mask-union")))
    # the wider start for the capped devices: at equal rounds (against HeteroFL, HeteroFL
    # sized at the same batch and the default), then at no more bytes than HeteroFL's
    capped = "mask-union-wide8-order-capped"
    out.append(paired(doc, capped, ("heterofl", "heterofl-minbatch8", "mask-union")))
    out.append(paired(doc, f"{capped}-rounds17", ("heterofl",)))
    out.append(paired(doc, f"{capped}-rounds18", ("heterofl",)))
    out.append(paired(doc, "mask-union-minbatch8", ("heterofl-minbatch8",)))  # both at 8
    return "\n\n".join(out)


def paired(doc: dict[str, Any], ours: str = "mask-union", rivals: tuple = RIVALS) -> str:
    """Per rival, a table: per scenario and class, ``ours`` minus the rival in pt,
    mean ± std over the seeds both ran, and on how many of them ``ours`` was ahead or
    level; the class minimum too where either side's differs from its mean. The last
    column says whether the issue's bar holds (every class's mean difference, and
    minimum difference, >= 0) and if not, the classes behind (``*``: behind by more
    than one std of the difference). A scenario whose two rows were made with different
    code says so (a code change moves figures as a seed does)."""
    rows = {(r["scenario"], r["variant"]): r for r in doc["rows"]}
    out = []
    for rival in rivals:
        scenarios = [
            s
            for s in dict.fromkeys(r["scenario"] for r in doc["rows"])
            if (s, ours) in rows and (s, rival) in rows
        ]
        if not scenarios:
            continue
        classes = list(dict.fromkeys(c for s in scenarios for c in rows[(s, ours)]["classes"]))
        head = ["scenario", "seeds", *classes, "bar"]
        lines = [
            f"**{ours} minus {rival}, paired by seed** (pt; mean ± std over seeds, "
            f"[seeds {ours} ahead or level / seeds]; bar: every class >= {rival}, "
            "`*` behind by more than one std)",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
        for s in scenarios:
            a, b = rows[(s, ours)], rows[(s, rival)]
            seeds = [k for k in a["seeds"] if k in b["seeds"]]
            name = s if a.get("code") == b.get("code") else f"{s} (rows of different code)"
            cells, behind = [name, str(len(seeds))], []
            for c in classes:
                if c not in a["classes"] or a["classes"][c]["mean"]["mean"] is None:
                    cells.append("–")
                    continue
                parts = []
                for key in ("mean", "min"):
                    if key == "min" and _same(a, c, seeds) and _same(b, c, seeds):
                        break  # nested masks: the minimum is the mean
                    d = _diffs(a, b, c, key, seeds)
                    parts.append(("" if key == "mean" else "min ") + _cell(d))
                    if statistics.fmean(d) < 0:
                        far = len(d) > 1 and -statistics.fmean(d) > statistics.stdev(d)
                        behind.append(f"{c}{'' if key == 'mean' else ' min'}{'*' if far else ''}")
                cells.append("; ".join(parts))
            cells.append("met" if not behind else "missed: " + ", ".join(dict.fromkeys(behind)))
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _values(row: dict[str, Any], c: str, key: str, seeds: list[str]) -> list[float]:
    by_seed = dict(zip(row["seeds"], row["classes"][c][key]["values"], strict=True))
    return [by_seed[k] for k in seeds]


def _diffs(a: dict[str, Any], b: dict[str, Any], c: str, key: str, seeds: list[str]) -> list:
    pairs = zip(_values(a, c, key, seeds), _values(b, c, key, seeds), strict=True)
    return [100 * (x - y) for x, y in pairs]


def _same(row: dict[str, Any], c: str, seeds: list[str]) -> bool:
    """Whether the class's minimum equals its mean on every seed (every device of the
    class holds the same model)."""
    pairs = zip(_values(row, c, "mean", seeds), _values(row, c, "min", seeds), strict=True)
    return all(math.isclose(m, lo, abs_tol=1e-9) for m, lo in pairs)


def _cell(d: list[float]) -> str:
    sd = f" ± {statistics.stdev(d):.2f}" if len(d) > 1 else ""
    return f"{statistics.fmean(d):+.2f}{sd} [{sum(x >= 0 for x in d)}/{len(d)}]"
