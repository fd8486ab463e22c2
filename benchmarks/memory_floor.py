"""Where a fleet run's memory goes: each process of the tree, and what every torch
process pays before it does any work.

Issue #15 asks for a whole-tree peak PSS of at most 1.2 GB for the MNIST-MLP fleet.
This benchmark says, measured, what stands between a run and that figure:

- ``processes``: ``fogsim run scenarios/scale-mnist-1000.toml`` (1,000 nodes, 100
  clients per round in 4 messages of 25, 4 rounds) for dense ``fedavg``, ``mask-union``
  and both with one client actor (``cpus_per_client = 2`` of the 2 cores), the
  whole process tree sampled from ``/proc`` every 0.2 s (``scale.run_measured``); at
  the tree's PSS peak, each process's PSS, grouped by role (the driver, the client
  actors, each of Ray's daemons), and the seconds per round (median after round 1)
  to weigh what one actor costs in time.
- ``imports``: one fresh process that imports, step by step, what a client actor
  holds before its first message, with its private (anonymous) memory after each
  step: Python, numpy, torch, one ``torch.optim`` step (which imports
  ``torch._dynamo`` and sympy: every optimizer step does ``import torch._dynamo``),
  Ray, Flower's simulation engine (which brings SQLAlchemy, Alembic and FastAPI),
  fogsim's ClientApp, and MNIST in memory. Anonymous memory is the process's own:
  it does not shrink however many processes share the machine (PSS only splits
  shared file pages such as torch's libraries).

Usage::

    python benchmarks/memory_floor.py --repeats 3 --json benchmarks/results/memory_floor.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from results_io import pm, renderer, stats
from results_io import write as write_results
from scale import ROOT, fogsim_run, median_after_first, overrides, run_measured

from fogsim.study.results import load

MB = 1024 * 1024
ROLES = (  # (substring of the command line, role), first match wins
    ("ClientAppActor", "client actor"),
    ("gcs_server", "Ray GCS server"),
    ("raylet", "Ray raylet"),
    ("dashboard/dashboard.py", "Ray dashboard head"),
    ("DashboardAgent", "Ray dashboard agent"),
    ("dashboard/agent.py", "Ray dashboard agent"),
    ("RuntimeEnvAgent", "Ray runtime-env agent"),
    ("runtime_env/agent", "Ray runtime-env agent"),
    ("autoscaler/_private/monitor.py", "Ray autoscaler monitor"),
    ("log_monitor.py", "Ray log monitor"),
)
STAGES = (  # (label, statement run in the child, cumulatively)
    ("Python", "pass"),
    ("+ numpy", "import numpy"),
    ("+ torch", "import torch"),
    (
        "+ one torch.optim step (torch._dynamo, sympy)",
        "m = torch.nn.Linear(4, 2); o = torch.optim.SGD(m.parameters(), lr=0.1); "
        "m(torch.ones(1, 4)).sum().backward(); o.step()",
    ),
    ("+ ray", "import ray"),
    ("+ flwr.simulation (SQLAlchemy, Alembic, FastAPI)", "import flwr.simulation"),
    ("+ fogsim's ClientApp", "import clients.fog_client"),
    ("+ MNIST in memory", "import fogsim.data; fogsim.data.load_dataset('mnist')"),
)


def role(pid: int, root: int, cmd: str) -> str:
    if pid == root:
        return "driver (fogsim run)"
    return next((name for key, name in ROLES if key in cmd), "other: " + cmd[:40])


VARIANTS = {  # column -> (strategy, extra overrides)
    "fedavg": ("fedavg", []),
    "mask-union": ("mask-union", []),
    "fedavg, one actor": ("fedavg", ["simulation.cpus_per_client=2"]),
    "mask-union, one actor": ("mask-union", ["simulation.cpus_per_client=2"]),
}


def measure_run(variant: str, work: Path) -> dict[str, float]:
    """role -> MB PSS at the tree's peak (and ``total``) of one ``fogsim run``."""
    work.mkdir(parents=True, exist_ok=True)
    strategy, extra = VARIANTS[variant]
    run_dir = work / variant.replace(", ", "-").replace(" ", "-")
    cmd = fogsim_run(run_dir, overrides(1000, 100, 4, strategy, None) + extra)
    _, _, pss, tree = run_measured(cmd, run_dir.with_suffix(".log"))
    root = next(iter(tree))  # tree_memory lists the root, the driver, first
    by_role: dict[str, list[float]] = {}
    for pid, (_, p, cmd_line) in tree.items():
        by_role.setdefault(role(pid, root, cmd_line), []).append(p / MB)
    seconds = [float(r["wall_s"]) for r in load(run_dir)["rounds"]]
    out = {
        "total": pss / MB,
        "client actors, how many": len(by_role.get("client actor", [])),
        "s/round (median after round 1)": median_after_first(seconds),
    }
    for name, values in by_role.items():
        out["client actors" if name == "client actor" else name] = sum(values)
    return out


CHILD = """
import json, sys
out, scope = [], {}
for label, statement in json.loads(sys.argv[1]):
    exec(statement, scope)
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("Anonymous:"):
            out.append((label, int(line.split()[1]) / 1024))
print(json.dumps(out))
"""  # a bare interpreter: importing this module would import torch before the first stage


def measure_stages() -> list[tuple[str, float]]:
    """(stage, private MB after it) of :data:`STAGES` in one fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(STAGES)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return [tuple(x) for x in json.loads(done.stdout.splitlines()[-1])]


def rows_of(runs: dict[str, list[dict[str, float]]], stages: list[list]) -> list[dict]:
    rows = []
    for variant, repeats in runs.items():
        names = sorted({k for r in repeats for k in r}, key=lambda k: -repeats[0].get(k, 0))
        for name in names:
            s = stats([r.get(name, 0.0) for r in repeats])
            rows.append({"table": "processes", "variant": variant, "role": name, **s})
    for i, (label, _) in enumerate(stages[0]):
        s = stats([rep[i][1] for rep in stages])
        rows.append({"table": "imports", "stage": label, **s})
    return rows


@renderer("memory_floor")
def markdown(doc: dict[str, Any]) -> str:
    rows = doc["rows"]
    variants = list(dict.fromkeys(r["variant"] for r in rows if r["table"] == "processes"))
    roles = list(dict.fromkeys(r["role"] for r in rows if r["table"] == "processes"))
    cell = {(r["variant"], r["role"]): r for r in rows if r["table"] == "processes"}
    lines = [
        "| process (PSS MB at the tree's peak) | " + " | ".join(variants) + " |",
        "|---" * (len(variants) + 1) + "|",
    ]
    for name in roles:
        digits = 2 if name.startswith("s/round") else 0
        cells = [pm(cell.get((v, name)), digits=digits) for v in variants]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| one process, step by step | private MB after it |", "|---|---|"]
    lines += [f"| {r['stage']} | {pm(r, digits=0)} |" for r in rows if r["table"] == "imports"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the tables as a results file here")
    parser.add_argument("--out", type=Path, help="keep run directories and logs here")
    args = parser.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="fogsim-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
    stages = []
    for i in range(args.repeats):
        stages.append(measure_stages())
        for variant in runs:
            runs[variant].append(measure_run(variant, work / f"repeat{i}"))
            print(f"repeat {i} {variant}: {runs[variant][-1]}", flush=True)
    print(f"imports: {stages}")
    if args.json:
        path = write_results(args.json.stem, rows_of(runs, stages), [], repeats=args.repeats)
        if path.resolve() != args.json.resolve():
            args.json.write_text(path.read_text())
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
