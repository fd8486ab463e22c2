"""``fogsim validate`` and ``scenarios``, and the fleet table ``run`` prints too: a
scenario looked at before it runs (what each class of device can train, who sits out)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fogsim.cli.common import SCENARIO_DIR, ScenarioArg, SetOpt, load, load_data, out, source_of
from fogsim.device.memory import widest_fraction
from fogsim.fleet import Fleet, build_fleet
from fogsim.scenario import Scenario
from fogsim.strategies.build import build_strategy, dense_notice, runs_dynhp, strategy_class
from fogsim.strategies.fedavg import FedAvgFeasible
from fogsim.strategies.submodel import SubModelStrategy
from fogsim.units import format_bytes


def fleet_table(sc: Scenario, fleet: Fleet) -> Table:
    """Per class: size, device and radio, budgets, links, availability, and the widest
    model each budget trains at the minimum batch (``[dynhp] min_batch``) under the
    scenario's strategy (a sub-model, or the dense model or none for one that trains
    only that); nodes that can train nothing, and why (a Flower plug-in's table once
    offered sub-models and "cannot train 0" while 36 nodes sat out)."""
    arch = sc.arch
    kind, batch = sc.train.memory_kind, sc.dynhp.min_batch
    dense = "x".join(map(str, arch.widths))
    table = Table(
        title=f"fleet: {sc.fleet.nodes} nodes",
        caption=f"widest model: what the class's smallest budget trains at batch {batch} "
        f"({kind}): its share of the dense width and its neurons per layer (dense: {dense}); "
        "cannot train: nodes whose budget holds no model at all (they sit out)",
    )
    cols = ("class", "nodes", "device / radio", "budget", "FLOP/s", "up/down Mbit/s", "avail.")
    for col in (*cols, "widest model", "cannot train"):
        left = col in ("class", "device / radio", "avail.", "widest model")
        table.add_column(col, justify="left" if left else "right")
    counts = fleet.counts()
    sub_models = issubclass(strategy_class(sc), SubModelStrategy)
    dynhp = runs_dynhp(sc)  # its clients hold DynHP's arrays beside training
    if sub_models:  # below width 1 a node trains nothing
        need = sc.narrowest_need(dynhp)
        what = "width 1" + (" with DynHP" if dynhp else "")
        takes_part = fleet.budgets >= need
    else:  # the dense model only: built for its need and who takes part (cheap)
        strategy = build_strategy(sc, fleet)
        extra = strategy.extra_bytes() if isinstance(strategy, FedAvgFeasible) else 0
        need, what = strategy.budget_for(1.0) + extra, "the dense model"
        takes_part = strategy.takes_part
    for i, c in enumerate(sc.fleet.classes):
        budgets = fleet.budgets[fleet.node_class == i]
        low = int(budgets.min()) if len(budgets) else c.memory
        high = int(budgets.max()) if len(budgets) else c.memory_max or c.memory
        f = widest_fraction(arch, low, kind, batch, dynhp) if sub_models else float(low >= need)
        widest = f"{f:.0%} " + "x".join(map(str, arch.scaled(f).widths)) if f > 0 else "none"
        if not sub_models and f == 0 and strategy.mode == "dense":
            widest = f"100% {dense}, over budget"  # fedavg-dense trains it regardless
        stuck = int((~takes_part[fleet.node_class == i]).sum())
        why = f"{stuck} ({what} needs {format_bytes(need)})" if stuck else "0"
        table.add_row(
            escape(c.name),
            str(counts[c.name]),
            escape(f"{c.device or '-'} / {c.radio or '-'}"),
            format_bytes(low) + (f"..{format_bytes(high)}" if high > low else ""),
            f"{c.flops:.3g}",
            f"{c.up_mbps:g}/{c.down_mbps:g}",
            availability_text(sc, fleet, i),
            widest,
            why,
        )
    return table


def availability_text(sc: Scenario, fleet: Fleet, i: int) -> str:
    """A class's availability: its per-round probability, then its windows in time
    (the trace's, or its diurnal model's)."""
    c = sc.fleet.classes[i]
    text = f"{c.availability:g}"
    mine = np.flatnonzero(fleet.node_class == i)
    traced = sum(fleet.availability.windows[n] is not None for n in mine)
    if traced:
        text += ", trace" + (f" ({traced} of {len(mine)} nodes)" if traced < len(mine) else "")
    if c.diurnal is not None and traced < len(mine):
        d = c.diurnal
        text += f", {d.share:.0%} of the day from {d.from_h:g}h ±{d.jitter_h:g}h"
    return text


def print_fleet(sc: Scenario, console: Console) -> None:
    """The fleet table, and a warning naming the classes with nodes that sit out."""
    fleet, dynhp = build_fleet(sc.fleet, sc.run.seed), runs_dynhp(sc)
    need = sc.narrowest_need(dynhp)
    console.print(fleet_table(sc, fleet))
    stuck = {
        c.name: int((fleet.budgets[fleet.node_class == i] < need).sum())
        for i, c in enumerate(sc.fleet.classes)
    }
    if any(stuck.values()):
        listed = ", ".join(f"{n} of {name!r}" for name, n in stuck.items() if n)
        console.print(
            f"warning: {sum(stuck.values())} node(s) can train no model and sit out the whole "
            f"run ({listed}): the narrowest model needs {sc.narrowest_need_said(dynhp)}",
            markup=False,
            soft_wrap=True,
        )
    if notice := dense_notice(sc, fleet):
        console.print(notice, markup=False, soft_wrap=True)


def validate(scenario: ScenarioArg, set_: SetOpt = None) -> None:
    """Check a scenario (schema, strategy, fleet and data, all that run checks before
    it starts) and print it resolved (defaults filled in) with a fleet summary.

    SCENARIO is a scenario file or the name of a shipped one (see fogsim scenarios).

    Example:

      fogsim validate scenarios/quickstart.toml --set fleet.nodes=100
    """
    sc = load(scenario, set_)
    load_data(sc, source_of(scenario))
    out.print_json(json.dumps(sc.model_dump(mode="json")))
    print_fleet(sc, out)
    out.print("[green]valid[/]")


def scenarios() -> None:
    """List the shipped scenarios with a one-line description.

    Example:

      fogsim scenarios
    """
    table = Table(title=f"shipped scenarios ({SCENARIO_DIR})")
    table.add_column("name")
    table.add_column("description")
    for path in sorted(SCENARIO_DIR.glob("*.toml")):
        table.add_row(path.stem, escape(description(path)))  # "[model]" is not markup
    out.print(table)


def description(path: Path) -> str:
    """A scenario file's first sentence, from the comment lines that open it (a
    description once stopped at the end of the first line, mid-sentence)."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines)
    end = re.search(r"\.(\s|$)", text)
    return text[: end.start() + 1] if end else text
