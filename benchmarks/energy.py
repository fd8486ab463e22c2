"""Where a fleet's energy goes, per device class: ``iot-field-mnist`` over several seeds
(real Flower + Ray runs of ``scenarios/iot-field-mnist.toml``).

The scenario (364 catalogue devices: ESP32-S3 sensors on LoRa awake at night, Pi 4
gateways on Wi-Fi, phones on 5G, Jetson cloudlets on Ethernet; 18 rounds from 19:00 on
the simulated clock) runs with mask-union (its own strategy) and with dense ``fedavg``
(every node trains the whole model, the sensors far over their budgets: the
infeasible reference). Per strategy, mean ± std over the seeds:

- the global model's final test accuracy; the energy of the sampled nodes until the
  global model first reaches ``TARGET`` and in all (kJ); a round's mean simulated time;
- per class: node-rounds with an energy, the mean energy of one node-round and its
  parts (compute, radio, idle: J), the class's total (kJ), the mean and minimum test
  accuracy of the models the class's devices hold at the end, and the node-rounds
  lost because a device departed mid-round (its availability window ended).

The energy figures are the catalogue's approximate datasheet figures run through
fogsim's energy model (``fogsim.hardware``), not measurements of devices. Every
(strategy, seed) is one run into ``OUT/<strategy>/seed=<s>`` (a finished run of the
same scenario is reused). Usage::

    python benchmarks/energy.py                      # seeds 1,2,3: ~15 min on 2 cores
    python benchmarks/energy.py --seeds 1 --out /tmp/energy
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

from results_io import pm, renderer, stats, write
from strategies import run_one

from fogsim.study.compare import run_metrics
from fogsim.study.series import PARTS, class_energy, load_run

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "scenarios" / "iot-field-mnist.toml"
TARGET = 0.90
STRATEGIES = ("mask-union", "fedavg")


def run_figures(run_dir: Path) -> dict[str, Any]:
    """One finished run's figures: the run's, and per class (see the module docstring)."""
    run = load_run(run_dir)
    metrics, energy, held = run_metrics(run, TARGET), class_energy(run), run["summary"]["classes"]
    departed = Counter(n["class"] for n in run["nodes"] if n["status"] == "departed")
    classes = {
        c: {
            "node_rounds": energy[c]["n"],
            "energy_j": energy[c]["mean"],
            **{f"{part}_j": energy[c][part] for part in PARTS},
            "total_kj": energy[c]["total"] / 1e3,
            "acc_mean": held[c]["mean"],
            "acc_min": held[c]["min"],
            "departed": departed[c],
        }
        for c in energy
    }
    to_target = metrics["energy_to_target_j"]
    return {
        "final_accuracy": metrics["final_accuracy"],
        "rounds_to_target": metrics["rounds_to_target"],
        "energy_to_target_kj": None if to_target is None else to_target / 1e3,
        "total_energy_kj": metrics["total_energy_j"] / 1e3,
        "round_s": metrics["mean_round_time_s"],
        "classes": classes,
    }


def aggregate(strategy: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row: every figure as mean ± std over the seeds' runs (a class missing from a
    run, e.g. never sampled, counts as absent there)."""
    names = list(dict.fromkeys(c for r in runs for c in r["classes"]))
    per_class = {
        c: {
            k: stats([r["classes"][c][k] if c in r["classes"] else None for r in runs])
            for k in next(r["classes"][c] for r in runs if c in r["classes"])
        }
        for c in names
    }
    return {
        "strategy": strategy,
        **{k: stats([r[k] for r in runs]) for k in runs[0] if k != "classes"},
        "classes": per_class,
    }


@renderer("energy")
def table(doc: dict[str, Any]) -> str:
    target = f"{doc['target']:.0%}"
    lines = [
        f"| strategy | final acc % | rounds to {target} | kJ to {target} | kJ in all | "
        "simulated s per round |",
        "|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        reached = pm(r["rounds_to_target"], digits=1)
        if r["rounds_to_target"]["n"] < len(doc["seeds"]):
            reached += f" ({r['rounds_to_target']['n']} of {len(doc['seeds'])} seeds)"
        lines.append(
            f"| {r['strategy']} | {pm(r['final_accuracy'], 100)} | {reached} | "
            f"{pm(r['energy_to_target_kj'], digits=1)} | {pm(r['total_energy_kj'], digits=1)} | "
            f"{pm(r['round_s'], digits=0)} |"
        )
    for r in doc["rows"]:
        lines += [
            "",
            f"**{r['strategy']}**, per class (J per node-round; accuracy of the models the "
            "class's devices hold at the end, mean (min))",
            "",
            "| class | node-rounds | compute J | radio J | idle J | J per node-round | "
            "class kJ | own model acc % | departed |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for c, f in r["classes"].items():
            lines.append(
                f"| {c} | {pm(f['node_rounds'], digits=0)} | {pm(f['compute_j'])} | "
                f"{pm(f['radio_j'], digits=1)} | {pm(f['idle_j'], digits=0)} | "
                f"{pm(f['energy_j'], digits=0)} | {pm(f['total_kj'], digits=1)} | "
                f"{pm(f['acc_mean'], 100, 1)} ({pm(f['acc_min'], 100, 1)}) | "
                f"{pm(f['departed'], digits=1)} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1,2,3", help="comma-separated run.seed values")
    ap.add_argument("--out", default="runs/bench-energy", help="where the runs go")
    ap.add_argument("--results", default="energy", help="results file name")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for strategy in STRATEGIES:
        runs = []
        for seed in seeds:
            run_dir = Path(args.out) / strategy / f"seed={seed}"
            sets = [f"strategy.name='{strategy}'", f"run.seed={seed}"]
            run_one(SCENARIO, sets, run_dir, f"{strategy} seed {seed}")
            runs.append(run_figures(run_dir))
        rows.append(aggregate(strategy, runs))
    path = write(args.results, rows, seeds, target=TARGET, scenario=SCENARIO.name)
    print(table({"rows": rows, "seeds": seeds, "target": TARGET}))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
