"""mask-union against HeteroFL and FedRolex by the accuracy each device's own model
reaches (the README's tables under Strategies): per scenario, variant and seed one
run; per device class the mean over seeds (± std) of the class mean and the class
minimum of devices.csv, plus the global model's final accuracy and the run's total
bytes up / down.

Two engines:

- ``flower`` (default, the one results are quoted from): a real ``fogsim run`` per
  (scenario, variant, seed), Flower + Ray, in a child process, into
  ``OUT/<scenario>/<variant>/seed<k>``; a finished run there (``summary.json``) made
  with the very same resolved scenario (``scenario.json``, every default filled in) is
  reused, so an interrupted benchmark resumes where it stopped, and a default changed
  in the code since makes it run again.
- ``inprocess``: the same strategy and client code without Flower or Ray (the
  strategy's ``configure_train``, the client's ``train`` per message, then
  ``aggregate_train``; devices evaluated with ``fogsim.study.deployed``), about 1.2-2x
  faster, for exploring. For the fleet5 MLP scenarios it gave the very same numbers
  as ``fogsim run`` (checked for mask-union on MNIST IID, seed 1).

The scenarios and variants live in ``research_variants.py``. Writes
``OUT/research_maskunion.json`` (every run, with its resolved scenario, the code it
was made with (``code_version``) and the aggregates; an ``inprocess`` run already there
of the very same resolved scenario is reused too) and prints one markdown table per
scenario. Reuse goes by the scenario, not the code: a change to the simulator that
only reorders floating-point sums moves a 20-round run by tenths of a point, so
``--fresh`` reuses (of either engine) only runs made with the current code and CPU
kernels (``isa``: fogsim pins AVX2, see ``fogsim/__init__.py``), and a published row
lists the code, CPU and kernels its runs were made with. Run at most one
simulation at a time on a small machine: this script runs them one after another.

``benchmarks/results/mask_union_vs_rivals.json`` (the README's tables) is updated
row by row: the (scenario, variant) pairs asked for replace their rows, the others stay,
each row with the engine its runs used and the command that made it (``--no-publish``
leaves the file alone). ``--check-engines SCENARIO:VARIANT:SEED`` runs that one run with
both engines, compares the per-class figures and records the comparison in the same
file (``engine_checks``).

Usage::

    python benchmarks/research_maskunion.py --scenarios mnist-iid,mnist-dirichlet \\
        --seeds 1,2,3 --out runs/research
    python benchmarks/research_maskunion.py --scenarios fmnist-dirichlet-cnn \\
        --variants mask-union,heterofl --seeds 1 --engine inprocess
    python benchmarks/research_maskunion.py --check-engines fmnist-iid:mask-union:1 \\
        --out runs/research
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from research_tables import table
from research_variants import DEFAULT_VARIANTS, SCENARIOS, VARIANTS
from results_io import MODEL_REVISION, RESULTS, cpu_kernels, cpu_model, revision_of, stats
from results_io import write as write_results

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = "mask_union_vs_rivals"
# per class, over seeds: test accuracy (mean and minimum over the class's devices) and,
# in runs that have it, the same on the fleet's validation samples (choosing an LR)
FIGURES = ("mean", "min", "validation_mean", "validation_min")


def resolved(scenario: str, overrides: list[str]) -> dict[str, Any]:
    """The scenario a run with ``overrides`` really gets, every default filled in: what
    decides whether an earlier run is reused (a default changed since must not let a
    stale run through)."""
    from fogsim.scenario import load_scenario

    return load_scenario(ROOT / scenario, overrides).model_dump(mode="json")


def overrides_of(name: str, variant: str, seed: int, extra_set: list[str]) -> list[str]:
    """The ``--set`` overrides of one (scenario, variant, seed) run."""
    return [*SCENARIOS[name][1], *VARIANTS[variant], f"run.seed={seed}", *extra_set]


@functools.cache
def code_version() -> str:
    """The simulator's code a run is made with: the last commit that touched
    ``fogsim/`` or ``clients/``, ``+changes`` when either has uncommitted changes.
    Recorded with every run; ``--fresh`` reuses only runs of this very code (a change
    of floating-point order alone moves a run's figures by tenths of a point)."""
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run(
        [*git, "log", "-1", "--format=%h", "--", "fogsim", "clients"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "fogsim", "clients"], capture_output=True, text=True
    ).stdout.strip()
    return (commit or "unknown") + ("+changes" if dirty else "")


def run_flower(
    scenario: str,
    overrides: list[str],
    run_dir: Path,
    resolved_as: dict[str, Any],
    reuse: bool = True,
) -> dict[str, Any]:
    """A real ``fogsim run`` into ``run_dir`` (unless ``reuse`` and a finished run of
    this very scenario, ``resolved_as``, is there); its results."""
    from fogsim.study.results import scenario_changes

    stored = run_dir / "scenario.json"
    if (
        not reuse
        or not (run_dir / "summary.json").exists()
        or scenario_changes(json.loads(stored.read_text()) if stored.exists() else {}, resolved_as)
    ):
        cmd = [sys.executable, "-c", "from fogsim.cli import app; app()", "run", scenario]
        cmd += ["--out", str(run_dir), "--quiet", "--overwrite"]
        for o in overrides:
            cmd += ["--set", o]
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    from fogsim.study.results import load

    tables = load(run_dir)
    rounds, summary = tables["rounds"], tables["summary"]
    return {
        "final_accuracy": summary["final_accuracy"],
        "classes": summary["classes"],
        "bytes_up": sum(int(r["bytes_up"]) for r in rounds),
        "bytes_down": sum(int(r["bytes_down"]) for r in rounds),
        "wall_s": summary["wall_s"],
    }


def run_inprocess(scenario: str, overrides: list[str]) -> dict[str, Any]:
    """The same rounds without Flower or Ray (see the module doc)."""
    import torch
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.supercore.task_identity import TaskIdentity

    from clients.fog_client import reply_train
    from fogsim.data import load_dataset
    from fogsim.device.training import evaluate
    from fogsim.fleet import build_fleet
    from fogsim.flower.server_app import initial_model
    from fogsim.scenario import load_scenario
    from fogsim.strategies import build_strategy
    from fogsim.study.deployed import class_summary, device_rows, validation_set

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    torch.set_num_threads(1)  # as each client actor
    t0 = time.perf_counter()
    sc = load_scenario(ROOT / scenario, overrides)
    fleet = build_fleet(sc.fleet, sc.run.seed)
    strategy = build_strategy(sc, fleet)
    mailboxes = list(range(sc.simulation.flower_nodes))

    class Grid:  # all the strategy asks of a grid
        def get_node_ids(self) -> list[int]:
            return mailboxes

    ds = load_dataset(sc.data.dataset, sc.data.path)
    test = ds.tensors(ds.test_x, ds.test_y)
    model = initial_model(sc)
    arrays, up, down = ArrayRecord(model.state_dict()), 0, 0
    for rnd in range(1, sc.run.rounds + 1):
        messages = list(strategy.configure_train(rnd, arrays, ConfigRecord(), Grid()))
        arrays = strategy.aggregate_train(rnd, [reply_train(m) for m in messages])[0] or arrays
        up += strategy.round_stats["bytes_up"]
        down += strategy.round_stats.get("bytes_down_train", 0)
    model.load_state_dict(arrays.to_torch_state_dict())
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    rows = device_rows(strategy, fleet, state, *test, validation_set(sc, ds))
    return {
        "final_accuracy": evaluate(model, *test)[0],
        "classes": class_summary(rows, fleet),
        "bytes_up": up,
        "bytes_down": down,
        "wall_s": time.perf_counter() - t0,
    }


def aggregate(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Over seeds: per class the mean ± std of the class mean and the class minimum
    (with n and the per-seed values; on the validation samples too where every run
    has them), the engine(s) the runs used and the code they
    were made with (``code_version``; ``unrecorded`` before it was recorded)."""
    seeds = list(runs.values())
    classes = list(seeds[0]["classes"])
    engines = sorted({r.get("engine", "flower") for r in seeds})
    out: dict[str, Any] = {"seeds": list(runs), "engine": "+".join(engines), "classes": {}}
    for c in classes:
        keys = [k for k in FIGURES if all(k in r["classes"][c] for r in seeds)]
        out["classes"][c] = {k: stats([r["classes"][c][k] for r in seeds]) for k in keys}
    for key in ("final_accuracy", "bytes_up", "bytes_down"):
        out[key] = stats([float(r[key]) for r in seeds])
    out["code"] = sorted({r.get("code", "unrecorded") for r in seeds})
    out["cpu"] = sorted({r.get("cpu", "unrecorded") for r in seeds})
    out["isa"] = sorted({r.get("isa", "unrecorded") for r in seeds})
    return out


def one_run(
    name: str,
    variant: str,
    seed: int,
    engine: str,
    out: Path,
    extra_set: list[str],
    reuse: bool = True,
) -> dict[str, Any]:
    scenario = SCENARIOS[name][0]
    overrides = overrides_of(name, variant, seed, extra_set)
    resolved_as = resolved(scenario, overrides)
    if engine == "flower":
        run_dir = out / name / variant / f"seed{seed}"
        res = run_flower(scenario, overrides, run_dir, resolved_as, reuse)
    else:
        res = run_inprocess(scenario, overrides)
    res.update(engine=engine, overrides=overrides, scenario=resolved_as, code=code_version())
    res["cpu"] = cpu_model()  # the kernels' width moves a run (fogsim/__init__.py)
    res["isa"] = cpu_kernels()
    return res


def check_engines(spec: str, out: Path, extra_set: list[str]) -> dict[str, Any]:
    """One (scenario, variant, seed) run with both engines (the flower run into
    ``OUT/engine-check``); the largest per-class difference of mean and minimum."""
    name, variant, seed = spec.split(":")
    runs = {
        e: one_run(name, variant, int(seed), e, out / "engine-check", extra_set)
        for e in ("flower", "inprocess")
    }
    fl, ip = runs["flower"], runs["inprocess"]
    diffs = [abs(fl["final_accuracy"] - ip["final_accuracy"])]
    for c, v in fl["classes"].items():
        diffs += [abs(v[k] - ip["classes"][c][k]) for k in ("mean", "min") if v[k] is not None]
    return {
        "scenario": name,
        "variant": variant,
        "seed": int(seed),
        "max_abs_diff": max(diffs),
        "bytes_up_equal": fl["bytes_up"] == ip["bytes_up"],
        "wall_s": {e: r["wall_s"] for e, r in runs.items()},
        "runs": {
            e: {k: r[k] for k in ("final_accuracy", "classes", "bytes_up")} for e, r in runs.items()
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", default="mnist-iid,mnist-dirichlet,fmnist-iid,fmnist-dirichlet")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--engine", choices=("flower", "inprocess"), default="flower")
    ap.add_argument("--set", action="append", default=[], help="extra section.key=value")
    ap.add_argument("--out", default="runs/research-maskunion")
    ap.add_argument("--no-publish", action="store_true", help=f"leave {PUBLISHED}.json alone")
    ap.add_argument("--check-engines", metavar="SCENARIO:VARIANT:SEED")
    ap.add_argument("--fresh", action="store_true", help="reuse only runs of this code")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.check_engines:
        check = check_engines(args.check_engines, out, args.set)
        print(json.dumps({k: v for k, v in check.items() if k != "runs"}))
        if not args.no_publish:
            print(f"wrote {publish({}, [], args.engine, check)}")
        return
    report = out / "research_maskunion.json"
    results: dict[str, Any] = json.loads(report.read_text()) if report.exists() else {}
    seeds = [int(s) for s in args.seeds.split(",")]
    for name in args.scenarios.split(","):
        for variant in args.variants.split(","):
            entry = results.setdefault(name, {}).setdefault(variant, {"runs": {}})
            for seed in seeds:
                t0 = time.perf_counter()
                old = entry["runs"].get(str(seed))
                overrides = overrides_of(name, variant, seed, args.set)
                same = (
                    old
                    and old.get("engine") == args.engine
                    and old.get("scenario") == resolved(SCENARIOS[name][0], overrides)
                )
                if not args.fresh and same and args.engine == "inprocess":
                    res = old  # already run in process on this very scenario
                elif (
                    args.fresh
                    and same
                    and old.get("isa") == cpu_kernels()
                    and old.get("code") == code_version()
                ):
                    res = old  # already run on this very scenario, code and kernels
                else:
                    res = one_run(name, variant, seed, args.engine, out, args.set, not args.fresh)
                entry["runs"][str(seed)] = res
                sens = {c: round(v["mean"], 4) for c, v in res["classes"].items() if v["mean"]}
                print(
                    f"[{name} {variant} seed {seed}] global {res['final_accuracy']:.4f} "
                    f"{sens} ({time.perf_counter() - t0:.0f}s)",
                    flush=True,
                )
                entry["aggregate"] = aggregate(entry["runs"])
                report.write_text(json.dumps(results, indent=1))
    for name in results:
        print(table(name, results[name]))
    print(f"(accuracy in %; mean ± std over seeds; written to {report})")
    if args.no_publish:
        return
    asked = {n: results[n] for n in args.scenarios.split(",")}
    asked = {
        n: {v: e for v, e in vs.items() if v in args.variants.split(",")} for n, vs in asked.items()
    }
    print(f"wrote {publish(asked, seeds, args.engine)}")


def publish(
    asked: dict[str, Any], seeds: list[int], engine: str, check: dict[str, Any] | None = None
) -> Path:
    """Update ``benchmarks/results/mask_union_vs_rivals.json``: the rows of the asked
    (scenario, variant) pairs replaced (each row with its engine and command), the
    others kept; an engine check replaces any earlier one of the same run."""
    path = RESULTS / f"{PUBLISHED}.json"
    old: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    command = " ".join(["python", *sys.argv])
    rows = [r for r in old.get("rows", []) if r["variant"] not in asked.get(r["scenario"], {})]
    for r in rows:  # rows of earlier versions of this file: the file's one command, engine
        r.setdefault("engine", old.get("engine", "flower"))  # and memory model revision
        r.setdefault("command", old.get("command"))
        r.setdefault("memory_model", revision_of(old))
    rows += [{**r, "command": command, "memory_model": MODEL_REVISION} for r in results_rows(asked)]
    order = list(SCENARIOS)
    rows.sort(key=lambda r: order.index(r["scenario"]) if r["scenario"] in order else len(order))
    checks = [
        c
        for c in old.get("engine_checks", [])
        if not check
        or (c["scenario"], c["variant"], c["seed"])
        != (check["scenario"], check["variant"], check["seed"])
    ] + ([check] if check else [])
    all_seeds = sorted({int(s) for r in rows for s in r["seeds"]}) or seeds
    commands = list(dict.fromkeys(r["command"] for r in rows if r.get("command")))
    return write_results(
        PUBLISHED,
        rows,
        all_seeds,
        command=" ; ".join(commands),
        engines={r["scenario"]: r["engine"] for r in rows},
        variants=VARIANTS,
        engine_checks=checks,
        memory_model=min(r["memory_model"] for r in rows),  # the oldest row's
    )


def results_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (scenario, variant) with its aggregates over seeds (results_io)."""
    return [
        {"scenario": name, "variant": variant, **entry["aggregate"]}
        for name, variants in results.items()
        for variant, entry in variants.items()
        if entry.get("aggregate")
    ]


if __name__ == "__main__":
    main()
