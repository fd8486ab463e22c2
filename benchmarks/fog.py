"""Flat vs fog tier vs buffered asynchronous rounds on the 1,000-device fog fleet
(real Flower + Ray runs of ``scenarios/fog-mnist-1000*.toml``).

Every variant does the same training work, ``ROUNDS x clients_per_round`` device
updates: flat (``ROUNDS`` rounds); hierarchical with 1, 2 and 5 fog rounds per cloud
round (``ROUNDS / fog_rounds`` cloud rounds); buffered (``ROUNDS x clients_per_round /
buffer_size`` merges), at the server step 1 and at 0.2 (buffer_size / clients_per_round:
per 100 updates, the step of one flat round); hierarchical-buffered (FedBuff at each of
20 fogs, 5 fog merges per cloud round: ``ROUNDS / 2`` cloud rounds). Per variant, mean
± std over the seeds:

- ``final_accuracy``: the global model's test accuracy at the end;
- ``sim_time_to_target_s``: simulated seconds from the start until the global model
  first reaches ``TARGET`` test accuracy (none if it never does);
- ``sim_time_s``: simulated seconds of the whole run;
- ``cloud_bytes``: bytes on the cloud link, both ways (flat: the devices' own traffic);
- ``device_energy_j``: the devices' energy (every class of this fleet has the figures);
- ``wall_s``: real seconds of the run's rounds;
- ``max_fall_pt``: the largest fall of the global model's accuracy below its best so
  far, in points (how far a run swings back; rows made before it was added lack it).

Every (variant, seed) is one run into ``OUT/<variant>/seed=<s>`` (a finished run of
the same scenario is reused). Usage::

    python benchmarks/fog.py --json benchmarks/results/fog.json       # 3 seeds, 20 rounds
    python benchmarks/fog.py --quick --json /tmp/fog.json             # 1 seed, 10 rounds
    python benchmarks/fog.py --json benchmarks/results/fog.json --variants hierarchical-buffered \
        --note "measured later, on a loaded machine"                 # adds/replaces those rows
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_io import machine, pm, renderer, stats  # noqa: E402
from strategies import run_one  # noqa: E402

from fogsim.device.memory import MODEL_REVISION  # noqa: E402
from fogsim.study.results import load  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.75  # test accuracy whose simulated time to reach is reported
ROUNDS = 20  # flat rounds: the training work every variant does
FIGURES = (
    "final_accuracy",
    "sim_time_to_target_s",
    "sim_time_s",
    "cloud_bytes",
    "device_energy_j",
    "wall_s",
    "max_fall_pt",
)


def variants(rounds: int) -> list[tuple[str, str, list[str]]]:
    """(variant, scenario, overrides) doing ``rounds x clients_per_round`` updates each."""
    hier = "fog-mnist-1000-hierarchical"
    out = [("flat", "fog-mnist-1000", [f"run.rounds={rounds}"])]
    for k in (1, 2, 5):
        sets = [f"run.rounds={max(1, rounds // k)}", f"topology.fog_rounds={k}"]
        out.append((f"hierarchical-{k}", hier, sets))
    merges = rounds * 100 // 20  # clients_per_round / buffer_size of the shipped files
    out.append(("buffered", "fog-mnist-1000-buffered", [f"run.rounds={merges}"]))
    # the same total server step per 100 updates as a flat round: 20 / 100 per merge
    step = ["topology.server_lr=0.2", f"run.rounds={merges}"]
    out.append(("buffered-lr0.2", "fog-mnist-1000-buffered", step))
    # tuning, after step 1 swung and collapsed late and 0.2 was smooth but slow: half the
    # step, and no client momentum (a stale update then carries no extra velocity)
    half = ["topology.server_lr=0.5", f"run.rounds={merges}"]
    out.append(("buffered-lr0.5", "fog-mnist-1000-buffered", half))
    still = ["train.momentum=0", f"run.rounds={merges}"]
    out.append(("buffered-no-momentum", "fog-mnist-1000-buffered", still))
    # FedBuff at each of 20 fogs (2 replies per fog merge, 40 over the fogs), 5 fog
    # merges per cloud round: 200 updates per cloud round
    cloud = max(1, rounds * 100 // 200)
    out.append(("hierarchical-buffered", f"{hier}-buffered", [f"run.rounds={cloud}"]))
    fog_half = ["topology.server_lr=0.5", f"run.rounds={cloud}"]  # each fog's step halved
    out.append(("hierarchical-buffered-lr0.5", f"{hier}-buffered", fog_half))
    return out


def time_to(rounds: list[dict[str, Any]], target: float) -> float | None:
    """Simulated seconds from the run's start to the end of the first round whose
    global model reaches ``target``."""
    start = rounds[0]["sim_clock_s"]
    for r in rounds:
        if r["accuracy"] >= target:
            return r["sim_clock_s"] + r["sim_time_s"] - start
    return None


def run_figures(run_dir: Path, target: float) -> dict[str, Any]:
    t = load(run_dir)
    rounds, summary = t["rounds"], t["summary"]
    energy = [r.get("energy_j") for r in rounds]
    last = rounds[-1]
    return {
        "final_accuracy": summary["final_accuracy"],
        "sim_time_to_target_s": time_to(rounds, target),
        "sim_time_s": last["sim_clock_s"] + last["sim_time_s"] - rounds[0]["sim_clock_s"],
        "cloud_bytes": sum(r["cloud_bytes"] for r in rounds),
        "device_energy_j": sum(energy) if all(e not in (None, "") for e in energy) else None,
        "wall_s": summary["wall_s"],
        "max_fall_pt": max_fall(r["accuracy"] for r in rounds),
    }


def max_fall(accuracies: Iterable[float]) -> float:
    """The largest drop below the best accuracy so far, in points."""
    best, fall = 0.0, 0.0
    for a in accuracies:
        best, fall = max(best, a), max(fall, best - a)
    return 100 * fall


@renderer("fog")
def table(doc: dict[str, Any]) -> str:
    head = ["variant", "final acc %", f"sim s to {doc['target']:.0%}", "sim s in all"]
    head += ["cloud MB", "device kJ", "wall s", "largest fall pt"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in doc["rows"]:
        cells = [r["variant"] + (" †" if r.get("note") else ""), pm(r["final_accuracy"], 100, 1)]
        reached = pm(r["sim_time_to_target_s"], digits=1)
        if 0 < r["sim_time_to_target_s"]["n"] < len(doc["seeds"]):  # some seeds never got there
            reached += f" ({r['sim_time_to_target_s']['n']} of {len(doc['seeds'])} seeds)"
        cells += [reached, pm(r["sim_time_s"], digits=1)]
        cells += [pm(r["cloud_bytes"], 1e-6, 0), pm(r["device_energy_j"], 1e-3, 2)]
        cells += [pm(r["wall_s"], digits=0)]
        cells += [pm(r["max_fall_pt"], digits=1) if "max_fall_pt" in r else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    by_note: dict[str, list[str]] = {}  # rows measured apart from the rest, by their note
    for r in doc["rows"]:
        if r.get("note"):
            by_note.setdefault(r["note"], []).append(r["variant"])
    for note, names in by_note.items():  # their command lines are in the file ("added")
        lines.append(f"\n† {', '.join(names)}: {note}")
    return "\n".join(lines)


def keep_other_rows(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``old`` with ``new``'s rows in place of (or after) its rows of the same variants:
    a run of some variants (``--variants``) adds to the file instead of replacing it.
    ``old``'s command, date and machine stay the file's; ``new``'s go in ``"added"``,
    so a row measured at another time (and load) is told apart by its ``note``."""
    fresh = {r["variant"]: r for r in new["rows"]}
    rows = [fresh.pop(r["variant"], r) for r in old["rows"]] + list(fresh.values())
    added = {k: new[k] for k in ("command", "date", "machine", "seeds")}
    added["variants"] = [r["variant"] for r in new["rows"]]
    return {**old, "rows": rows, "added": [*old.get("added", []), added]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True, help="where the results go (JSON)")
    ap.add_argument("--seeds", default="1,2,3", help="comma-separated run.seed values")
    ap.add_argument("--rounds", type=int, default=ROUNDS, help="flat rounds (training work)")
    ap.add_argument("--target", type=float, default=TARGET, help="target test accuracy")
    ap.add_argument("--out", default="runs/bench-fog", help="where the runs go")
    ap.add_argument("--quick", action="store_true", help="1 seed, 10 rounds")
    ap.add_argument(
        "--variants",
        help="comma-separated subset of the variants; an existing --json file keeps "
        "its rows of the others",
    )
    ap.add_argument("--note", help="a note on the rows measured now (e.g. the machine's load)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")][: 1 if args.quick else None]
    rounds = 10 if args.quick else args.rounds
    wanted = set(args.variants.split(",")) if args.variants else None
    rows = []
    for variant, scenario, sets in variants(rounds):
        if wanted and variant not in wanted:
            continue
        runs = []
        for seed in seeds:
            run_dir = Path(args.out) / variant / f"seed={seed}"
            path = ROOT / "scenarios" / f"{scenario}.toml"
            try:
                run_one(path, [*sets, f"run.seed={seed}"], run_dir, f"{variant} seed {seed}")
                runs.append(run_figures(run_dir, args.target))
            except Exception:  # noqa: BLE001  (report and go on with the next run)
                print(f"[{variant} seed {seed}] FAILED:\n{traceback.format_exc()}")
        if runs:
            figures = {k: stats([r[k] for r in runs]) for k in FIGURES}
            # each row says its memory model: a later --variants run merges rows
            rows.append({"variant": variant, **figures, "memory_model": MODEL_REVISION})
    if args.note:
        for row in rows:
            row["note"] = args.note
    doc = {
        "benchmark": "fog",
        "memory_model": MODEL_REVISION,
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        "seeds": seeds,
        "rounds": rounds,
        "target": args.target,
        "rows": rows,
    }
    import datetime

    doc["date"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    if wanted and Path(args.json).exists():
        doc = keep_other_rows(json.loads(Path(args.json).read_text()), doc)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    print(table(doc))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
