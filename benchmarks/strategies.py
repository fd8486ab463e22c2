"""Aggregation strategies head to head on one fleet scenario (real Flower + Ray runs).

Runs the scenario once per strategy (each into ``OUT/<strategy>``; a run dir that
already has ``summary.json`` is reused, so an interrupted benchmark resumes) and prints
one table, also written to ``OUT/strategies.csv``, one row per strategy:

- final / best global test accuracy, and rounds until it first reaches 95%;
- per device class, the mean and minimum test accuracy of the models its devices hold
  at the end (``summary.json``; '-' where the class holds nothing);
- total bytes up / down (MB), mean upload bytes per client-round / (4 x held params),
  mean simulated round time (s);
- fraction of the fleet that took part (nodes seen in nodes.csv / fleet size) and the
  static fraction the strategy allows (fedavg-feasible: classes holding the full model);
- peak modelled training memory / budget per class (max over client-rounds, %) and the
  number of over-budget client-rounds (fedavg-dense is the infeasible upper bound).

Usage::

    python benchmarks/strategies.py --quick                  # 5 rounds, 40 nodes
    python benchmarks/strategies.py --scenario scenarios/fleet5-mnist-dirichlet.toml \\
        --rounds 10 --strategies mask-union,heterofl --out runs/bench-dir --set train.lr=0.05
"""

from __future__ import annotations

import argparse
import csv
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

from fogsim.fleet import build_fleet
from fogsim.scenario import load_scenario
from fogsim.strategies import build_strategy
from fogsim.study.results import load

ALL = ["fedavg-dense", "fedavg-feasible", "heterofl", "fedrolex", "mask-union"]
QUICK = ["run.rounds=5", "fleet.nodes=40", "simulation.clients_per_round=10"]
TARGET = 0.95


def run_one(scenario_path: str, overrides: list[str], strategy: str, run_dir: Path) -> None:
    """One real simulation of ``strategy`` into ``run_dir`` unless already finished."""
    if (run_dir / "summary.json").exists():
        print(f"[{strategy}] done already in {run_dir}, reusing", flush=True)
        return
    shutil.rmtree(run_dir, ignore_errors=True)  # the CSVs append: start a partial run afresh
    sc = load_scenario(scenario_path, [*overrides, f"strategy.name='{strategy}'"])
    from fogsim.flower.engine import simulate  # imports Flower and Ray

    t0 = time.perf_counter()

    def on_round(row: dict[str, Any]) -> None:
        print(
            f"[{strategy}] round {row['round']}/{row['rounds']} acc {row['accuracy']:.4f} "
            f"wall {row['wall_s']:.1f}s (total {time.perf_counter() - t0:.0f}s)",
            flush=True,
        )

    print(f"[{strategy}] starting ({sc.run.rounds} rounds, {sc.fleet.nodes} nodes)", flush=True)
    simulate(sc, run_dir, progress=on_round)
    print(f"[{strategy}] finished in {time.perf_counter() - t0:.0f}s", flush=True)


def summarize(scenario_path: str, overrides: list[str], strategy: str, run_dir: Path) -> dict:
    """The table row of one finished (or partial) run."""
    t = load(run_dir)
    rounds, nodes = t.get("rounds", []), t.get("nodes", [])
    sc = load_scenario(scenario_path, [*overrides, f"strategy.name='{strategy}'"])
    fleet = build_fleet(sc.fleet, sc.run.seed)
    classes = [c.name for c in fleet.classes]
    label = strategy + (" (infeasible bound)" if strategy in ("fedavg", "fedavg-dense") else "")
    row: dict[str, Any] = {"strategy": label, "rounds": len(rounds)}
    if not rounds:
        return row
    accs = [r["accuracy"] for r in rounds]
    row["final_acc"] = 100 * accs[-1]
    row["best_acc"] = 100 * max(accs)
    final = t.get("summary", {}).get("classes", {})
    for c in classes:  # the models the class's devices hold, at the end (devices.csv)
        mean, low = final.get(c, {}).get("mean"), final.get(c, {}).get("min")
        row[f"acc_{c}"] = 100 * mean if mean is not None else "-"
        row[f"min_{c}"] = 100 * low if low is not None else "-"
    row["r95"] = next((r["round"] for r in rounds if r["accuracy"] >= TARGET), "-")
    row["up_MB"] = sum(r["bytes_up"] for r in rounds) / 1e6
    row["down_MB"] = sum(r["bytes_down"] for r in rounds) / 1e6
    trained = [n for n in nodes if n.get("status") == "ok" and n.get("params")]
    ratios = [n["bytes_up"] / (4 * n["params"]) for n in trained if n["bytes_up"]]
    row["up/4params"] = sum(ratios) / len(ratios) if ratios else "-"
    row["sim_round_s"] = sum(r["sim_time_s"] for r in rounds) / len(rounds)
    row["took_part"] = len({n["node"] for n in nodes}) / fleet.num_nodes
    row["allowed"] = float(build_strategy(sc, fleet).takes_part.mean())
    for c in classes:
        rows = [n for n in nodes if n["class"] == c and n.get("budget_bytes")]
        peak = max((n["peak_memory"] / n["budget_bytes"] for n in rows), default=None)
        row[f"mem%_{c}"] = 100 * peak if peak is not None else "-"
    row["over_budget"] = sum(int(n.get("over_budget") or 0) for n in nodes)
    row["wall_s"] = t.get("summary", {}).get("wall_s", sum(r["wall_s"] for r in rounds))
    return row


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return str(v)


def print_table(rows: list[dict], out: Path) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]

    def join(vals: list[str]) -> str:
        pairs = enumerate(zip(vals, widths, strict=True))
        return "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in pairs)

    line = join(cols)
    print(line)
    print("-" * len(line))
    for x in cells:
        print(join(x))
    with (out / "strategies.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows(rows)
    print(f"\n(acc in %; mem% = peak modelled memory / budget; table in {out / 'strategies.csv'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="scenarios/fleet5-mnist-iid.toml")
    ap.add_argument("--rounds", type=int, help="override run.rounds")
    ap.add_argument("--strategies", default=",".join(ALL), help="comma-separated names")
    ap.add_argument("--set", action="append", default=[], help="section.key=value override")
    ap.add_argument("--out", default="runs/bench-strategies")
    ap.add_argument("--quick", action="store_true", help="5 rounds, 40 nodes, 10 per round")
    args = ap.parse_args()
    overrides = (QUICK if args.quick else []) + args.set
    if args.rounds:
        overrides.append(f"run.rounds={args.rounds}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    t0 = time.perf_counter()
    rows = []
    for name in names:
        try:
            run_one(args.scenario, overrides, name, out / name)
        except Exception:  # noqa: BLE001  (report and go on with the next strategy)
            print(f"[{name}] CRASHED:\n{traceback.format_exc()}", flush=True)
        rows.append(summarize(args.scenario, overrides, name, out / name))
    print(f"\n{args.scenario} {' '.join(overrides)}  (wall {time.perf_counter() - t0:.0f}s)")
    print_table(rows, out)


if __name__ == "__main__":
    main()
