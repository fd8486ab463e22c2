"""Aggregation strategies head to head on fleet scenarios (real Flower + Ray runs).

Every (scenario, strategy, seed) is one ``fogsim`` run into ``OUT/<scenario>/<strategy>
/seed=<s>`` (a finished run made with the same scenario is reused, so an interrupted
benchmark picks up where it stopped). Per scenario and strategy the table gives, as
mean ± std over the seeds:

- the global model's final test accuracy;
- per device class, the mean and the minimum test accuracy of the models the class's
  devices hold at the end (``summary.json``, from ``devices.csv``: each device's own
  mask or slice, on the whole test split);
- total bytes up + down (MB) and simulated time (s);
- the largest peak modelled memory over a node's own budget, and over-budget
  client-rounds (``fedavg-dense`` is the infeasible upper bound).

It writes ``benchmarks/results/strategies.json`` (``--results`` to name it otherwise),
rendered into the README by ``benchmarks/results_io.py --readme``.

Usage::

    python benchmarks/strategies.py --quick            # 1 scenario, 3 seeds, 5 rounds, 40 nodes
    python benchmarks/strategies.py --scenarios fleet5-mnist-iid,fleet5-mnist-dirichlet \\
        --seeds 1,2,3 --strategies heterofl,fedrolex,mask-union --set train.lr=0.05
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from results_io import pm, renderer, stats, write

from fogsim.checks import load_checked
from fogsim.study.results import load, stored_scenario_changes

ROOT = Path(__file__).resolve().parent.parent
ALL = ["fedavg-dense", "fedavg-feasible", "heterofl", "fedrolex", "mask-union"]
QUICK = ["run.rounds=5", "fleet.nodes=40", "simulation.clients_per_round=10"]


def run_one(path: Path, overrides: list[str], run_dir: Path, label: str) -> None:
    """One real simulation into ``run_dir`` unless a finished run of this very scenario
    is there already."""
    sc = load_checked(path, overrides)
    if (run_dir / "summary.json").exists() and not stored_scenario_changes(run_dir, sc):
        print(f"[{label}] done already in {run_dir}, reusing", flush=True)
        return
    shutil.rmtree(run_dir, ignore_errors=True)  # partial or different: start afresh
    from fogsim.flower.engine import simulate  # imports Flower and Ray

    t0 = time.perf_counter()
    simulate(sc, run_dir)
    print(f"[{label}] finished in {time.perf_counter() - t0:.0f}s", flush=True)


def run_figures(run_dir: Path) -> dict[str, Any]:
    """The figures of one finished run."""
    t = load(run_dir)
    rounds, nodes, summary = t["rounds"], t["nodes"], t["summary"]
    ratios = [n["peak_memory"] / n["budget_bytes"] for n in nodes if n.get("peak_memory")]
    return {
        "final_accuracy": summary["final_accuracy"],
        "classes": summary["classes"],
        "mb": sum(r["bytes_up"] + r["bytes_down"] for r in rounds) / 1e6,
        "sim_time_s": sum(r["sim_time_s"] for r in rounds),
        "wall_s": summary["wall_s"],
        "peak_over_budget": max(ratios, default=None),
        "over_budget": sum(int(n.get("over_budget") or 0) for n in nodes),
    }


def aggregate(scenario: str, strategy: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row: every figure as mean ± std over the seeds' runs."""
    classes = list(runs[0]["classes"])
    return {
        "scenario": scenario,
        "strategy": strategy,
        **{k: stats([r[k] for r in runs]) for k in runs[0] if k != "classes"},
        "classes": {
            c: {
                "mean": stats([r["classes"][c]["mean"] for r in runs]),
                "min": stats([r["classes"][c]["min"] for r in runs]),
            }
            for c in classes
        },
    }


@renderer("strategies")
@renderer("strategies_lenet")  # the same table, on a factory model (fleet5-mnist-lenet)
def table(doc: dict[str, Any]) -> str:
    """One markdown table per scenario: strategies as rows, per class 'mean / min'."""
    out = []
    for scenario in dict.fromkeys(r["scenario"] for r in doc["rows"]):
        rows = [r for r in doc["rows"] if r["scenario"] == scenario]
        classes = list(rows[0]["classes"])
        head = ["strategy", "global acc %"] + [f"{c}: mean / min %" for c in classes]
        head += ["MB up+down", "peak / budget", "over budget"]
        lines = [f"**{scenario}**", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for r in rows:
            cells = [r["strategy"], pm(r["final_accuracy"], 100, 1)]
            cells += [
                f"{pm(r['classes'][c]['mean'], 100, 1)} / {pm(r['classes'][c]['min'], 100, 1)}"
                for c in classes
            ]
            cells += [pm(r["mb"], digits=0), pm(r["peak_over_budget"], 100, 0) + " %"]
            cells += [pm(r["over_budget"], digits=0)]
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument(
        "--scenarios",
        default="fleet5-mnist-iid,fleet5-mnist-dirichlet",
        help="comma-separated names of shipped scenarios (scenarios/NAME.toml)",
    )
    ap.add_argument("--strategies", default=",".join(ALL), help="comma-separated names")
    ap.add_argument("--seeds", default="1,2,3", help="comma-separated run.seed values")
    ap.add_argument("--rounds", type=int, help="override run.rounds")
    ap.add_argument("--set", action="append", default=[], help="section.key=value override")
    ap.add_argument("--out", default="runs/bench-strategies", help="where the runs go")
    ap.add_argument("--results", default="strategies", help="results file name")
    ap.add_argument("--quick", action="store_true", help="first scenario, 5 rounds, 40 nodes")
    args = ap.parse_args()
    overrides = (QUICK if args.quick else []) + args.set
    if args.rounds:
        overrides.append(f"run.rounds={args.rounds}")
    scenarios = args.scenarios.split(",")[: 1 if args.quick else None]
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    for scenario in scenarios:
        if not (ROOT / "scenarios" / f"{scenario}.toml").exists():
            ap.error(f"--scenarios: no shipped scenario {scenario!r} (scenarios/NAME.toml)")
    rows, failed = [], []
    for scenario in scenarios:
        path = ROOT / "scenarios" / f"{scenario}.toml"
        for strategy in strategies:
            runs = []
            for seed in seeds:
                run_dir = Path(args.out) / scenario / strategy / f"seed={seed}"
                sets = [*overrides, f"strategy.name='{strategy}'", f"run.seed={seed}"]
                try:
                    run_one(path, sets, run_dir, f"{scenario} {strategy} seed {seed}")
                    runs.append(run_figures(run_dir))
                except Exception:  # noqa: BLE001  (report and go on with the next run)
                    print(f"[{strategy} seed {seed}] FAILED:\n{traceback.format_exc()}")
                    failed.append(f"{scenario} {strategy} seed {seed}")
            if runs:
                rows.append(aggregate(scenario, strategy, runs))
    if failed:  # a row over fewer seeds would pass for the full set: keep the old file
        sys.exit(f"{len(failed)} run(s) failed ({', '.join(failed)}); results not written")
    path = write(args.results, rows, seeds, overrides=overrides, scenarios=scenarios)
    print(table({"rows": rows}))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
