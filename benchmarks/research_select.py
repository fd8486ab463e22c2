"""Each strategy at the configuration and learning rate its validation samples choose,
per scenario, and mask-union against its rivals so tuned (the README's "Each strategy
at its own LR").

The fleet5 scenarios train every strategy at one ``train.lr`` (0.05) and with its own
defaults of gradient clipping, which suits some strategies better than others
(HeteroFL, clipped, does best at 0.1 on five of them by the test split). A fair
comparison lets each strategy choose its own, and choose without the test split:
every run also evaluates each device's own model on the fleet's *validation samples*
(what the nodes hold out of their training; ``fogsim.study.deployed``). Per scenario
and strategy, this picks from ``CHOOSING[strategy]`` x ``lr_grid(scenario, strategy)``
(the same 2 x 4 points for every strategy: its defaults and the other setting of
clipping, at the four LRs of ``LR_GRID``, widened past an edge where the choice sat
on one, ``WIDER``; mask-union's wider start, for every device or for the capped ones,
trials, 1 x 4) the point whose runs have the best validation score (the mean over seeds of the
mean over device classes of the class's mean validation accuracy), and reports the
test figures of those same runs: the choice never saw the test split.

It reads the runs of ``research_maskunion.py`` (its ``OUT/research_maskunion.json``
caches, one or more: their runs are pooled, a later file's run of the same scenario,
variant and seed replacing an earlier one's), so run that first, for the variants
``at_lr(configuration, lr)`` names::

    python benchmarks/research_maskunion.py --engine inprocess --fresh --no-publish \\
        --scenarios mnist-iid,... --variants mask-union-lr0.025,mask-union,... \\
        --seeds 1,2,3 --out runs/select
    python benchmarks/research_select.py runs/select/research_maskunion.json

and writes ``benchmarks/results/mask_union_tuned.json``: per (scenario, strategy) the
chosen configuration and LR, every point's validation score, and the chosen runs'
aggregates (as in ``mask_union_vs_rivals.json``). A strategy is chosen for a scenario
only where every point of its grid has runs of the same seeds, code and CPU kernels.
The scenarios the caches hold replace their rows in that file; the others keep theirs,
each row stamped with the command and memory model revision it was measured with. A
choice at an edge of its grid is warned about on stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from research_maskunion import aggregate
from research_tables import RIVALS, paired
from research_variants import CHOOSING, SCENARIOS, WIDER, at_lr, lr_grid
from results_io import MODEL_REVISION, RESULTS, renderer, revision_of
from results_io import write as write_results

PUBLISHED = "mask_union_tuned"


def validation_score(aggregate: dict[str, Any]) -> float | None:
    """The mean over seeds of the mean over device classes (those holding a model on
    every seed: a class's values carry no seed, so a class held on some seeds only
    cannot be paired with the others') of the class's mean validation accuracy; None
    without validation figures."""
    seeds = len(aggregate["seeds"])
    per_class = [
        c["validation_mean"]["values"]
        for c in aggregate["classes"].values()
        if "validation_mean" in c and c["validation_mean"]["n"] == seeds
    ]
    if not per_class:
        return None
    return statistics.fmean(statistics.fmean(seed) for seed in zip(*per_class, strict=True))


def choose(
    entries: dict[str, dict[str, Any]], scenario: str, strategy: str
) -> dict[str, Any] | None:
    """The row of ``strategy`` at its chosen configuration and LR, from ``scenario``'s
    variants (``entries``: variant -> its aggregate); None unless every configuration
    of ``CHOOSING[strategy]`` ran at every LR of its grid there (``lr_grid``), all on
    the same seeds with the same code and kernels, with validation figures."""
    lrs = lr_grid(scenario, strategy)
    grid = {
        (config, lr): entries.get(at_lr(config, lr)) for config in CHOOSING[strategy] for lr in lrs
    }
    if any(a is None for a in grid.values()):
        return None
    if len({(tuple(a["seeds"]), tuple(a["code"]), tuple(a["isa"])) for a in grid.values()}) != 1:
        return None
    scores = {point: validation_score(a) for point, a in grid.items()}
    if any(v is None for v in scores.values()):
        return None
    config, lr = max(grid, key=lambda point: scores[point])  # a tie: the first in the grid
    return {
        **grid[config, lr],
        "variant": strategy,
        "configuration": config,
        "lr": lr,
        "chosen": at_lr(config, lr),
        "validation": {c: {str(v): scores[c, v] for v in lrs} for c in CHOOSING[strategy]},
    }


def edge_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """A line for each row whose chosen LR is the lowest or highest of its grid: the
    best LR may lie beyond it, so the grid there wants widening (``WIDER``) before the
    choice is read as the strategy's best (an independent review once found 17 of 49
    choices at an edge)."""
    lines = []
    for r in rows:
        lrs = sorted(float(lr) for lr in r["validation"][r["configuration"]])
        if r["lr"] in (lrs[0], lrs[-1]):
            lines.append(
                f"warning: {r['scenario']} {r['variant']} chose LR {r['lr']:g}, an edge of its "
                f"grid ({lrs[0]:g}-{lrs[-1]:g}): the best may lie beyond it; add the next LR "
                "to WIDER in benchmarks/research_variants.py and run it"
            )
    return lines


def tuned_rows(caches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scenario (in ``SCENARIOS`` order) and strategy, the row at its chosen LR.
    The caches' runs are pooled per (scenario, variant, seed), a later cache's run of
    the same seed replacing an earlier one's, and aggregated over seeds."""
    runs: dict[str, dict[str, dict[str, Any]]] = {}
    for cache in caches:
        for name, variants in cache.items():
            for variant, entry in variants.items():
                runs.setdefault(name, {}).setdefault(variant, {}).update(entry.get("runs", {}))
    entries = {
        name: {
            v: aggregate(dict(sorted(r.items(), key=lambda kv: int(kv[0]))))
            for v, r in vs.items()
            if r
        }
        for name, vs in runs.items()
    }
    rows = []
    for name in [s for s in SCENARIOS if s in entries]:
        for strategy in CHOOSING:
            row = choose(entries[name], name, strategy)
            if row is not None:
                rows.append({"scenario": name, **row})
    return rows


@renderer(PUBLISHED)
def markdown(doc: dict[str, Any]) -> str:
    """Each strategy's validation scores over its grid (a row per configuration, a
    column per LR, the chosen point in bold), then mask-union minus each rival,
    paired by seed (and mask-union in HeteroFL's order minus each, where it ran)."""
    grid = doc["lr_grid"]
    head = ["scenario", "seeds", "strategy", "configuration", *(f"LR {v:g}" for v in grid)]
    lines = [
        "**What each strategy chose on the validation samples** (validation score in %: "
        "the mean over device classes of their devices' mean; the chosen point in bold)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in doc["rows"]:
        for config, scores in r["validation"].items():
            cells = [r["scenario"], str(len(r["seeds"])), r["variant"], config]
            for lr in grid:  # a blank: this strategy's grid did not go that far here
                v = scores.get(str(lr))
                chosen = config == r["configuration"] and lr == r["lr"]
                cells.append(
                    "" if v is None else f"**{100 * v:.2f}**" if chosen else f"{100 * v:.2f}"
                )
            lines.append("| " + " | ".join(cells) + " |")
    # mask-union in HeteroFL's neuron order, where it ran: against the rivals and the
    # default order, each at its own chosen point
    index = paired(doc, "mask-union-index", (*RIVALS, "mask-union"))
    # and with a wider start that DynHP prunes by the order (README, "Tried: a wider start")
    wide = paired(doc, "mask-union-wide8-order", (*RIVALS, "mask-union"))
    # ... for the capped devices only (the CNNs' cameras), where it ran
    capped = paired(doc, "mask-union-wide8-order-capped", (*RIVALS, "mask-union"))
    parts = ("\n".join(lines), paired(doc), index, wide, capped)
    return "\n\n".join(t for t in parts if t)


def merged(old: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The new rows, and the published file's (``old``) rows of the scenarios they do
    not choose for, each stamped with the command and memory model revision it was
    measured with: a scenario is chosen from its runs alone, so the table can be
    re-run a scenario at a time, and a scenario not re-run keeps its rows (flagged by
    their revision, ``results_io.stale``)."""
    command = " ".join(["python", "benchmarks/research_select.py", *sys.argv[1:]])
    redone = {r["scenario"] for r in rows}
    kept = [r for r in old.get("rows", []) if r["scenario"] not in redone]
    kept = [
        {**r, "command": r.get("command", old["command"]), "memory_model": revision_of(old, r)}
        for r in kept
    ]
    new = [{**r, "command": command, "memory_model": MODEL_REVISION} for r in rows]
    order = list(SCENARIOS)
    return sorted(
        kept + new,
        key=lambda r: (order.index(r["scenario"]), list(CHOOSING).index(r["variant"])),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("caches", nargs="+", help="research_maskunion.json files of the runs")
    args = ap.parse_args()
    caches = [json.loads(Path(p).read_text()) for p in args.caches]
    rows = tuned_rows(caches)
    if not rows:
        raise SystemExit("no (scenario, strategy) has runs at every point of its grid")
    for line in edge_warnings(rows):
        print(line, file=sys.stderr)
    path = RESULTS / f"{PUBLISHED}.json"
    rows = merged(json.loads(path.read_text()) if path.exists() else {}, rows)
    lrs = sorted({float(lr) for r in rows for scores in r["validation"].values() for lr in scores})
    print(markdown({"rows": rows, "lr_grid": lrs}))
    seeds = sorted({int(s) for r in rows for s in r["seeds"]})
    wider = {f"{s}/{strategy}": list(extra) for (s, strategy), extra in WIDER.items()}
    grid = {"lr_grid": lrs, "wider": wider, "configurations": CHOOSING}
    commands = " ; ".join(dict.fromkeys(r["command"] for r in rows))
    oldest = min(r["memory_model"] for r in rows)
    about = {**grid, "command": commands, "memory_model": oldest}
    print(f"wrote {write_results(PUBLISHED, rows, seeds, **about)}")


if __name__ == "__main__":
    main()
