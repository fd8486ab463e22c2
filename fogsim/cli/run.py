"""``fogsim run``, ``validate`` and ``scenarios``: scenarios in, run directories out."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from fogsim.cli.common import (
    SCENARIO_DIR,
    QuietOpt,
    ScenarioArg,
    SetOpt,
    check_cluster,
    err,
    fail,
    load,
    load_data,
    out,
    progress_bar,
)
from fogsim.device.memory import widest_fraction
from fogsim.fleet import build_fleet
from fogsim.scenario import Scenario, shown
from fogsim.study.results import CHECKPOINT, STATUSES, finished_rounds
from fogsim.units import format_bytes

# Fields that may differ when a run is resumed: they do not change its results.
RESUME_MAY_DIFFER = {"run.output_dir", "simulation.ray_address"}


def scenario_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted fields whose values differ between two scenario dumps."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b, name = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            changed += scenario_changes(a, b, f"{name}.")
        elif a != b and name not in RESUME_MAY_DIFFER:
            changed.append(f"{name} ({a!r} → {b!r})")
    return changed


def prepare_run_dir(run_dir: Path, sc: Scenario, overwrite: bool, resume: bool) -> bool:
    """Make ``run_dir`` ready; True if an unfinished run there is to be continued.

    A directory holding a run is never silently reused: an unfinished one needs
    ``--resume`` (same scenario) or ``--overwrite``, a finished one ``--overwrite``."""
    if overwrite and resume:
        fail("--resume continues the run in --out and --overwrite deletes it: give one")
    where = shown(str(run_dir))
    try:
        if run_dir.exists() and not run_dir.is_dir():
            fail(f"--out {where}: exists and is not a directory")
        holds_run = any((run_dir / f).exists() for f in ("rounds.csv", CHECKPOINT))
        if holds_run and overwrite:
            shutil.rmtree(run_dir)
            holds_run = False
        if holds_run:
            check_resumable(run_dir, sc, resume)
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        fail(f"--out {where}: cannot write there ({e.strerror or e})")
    except ValueError as e:  # a NUL byte in the path
        fail(f"--out {where}: not a usable path ({e})")
    return holds_run


def check_resumable(run_dir: Path, sc: Scenario, resume: bool) -> None:
    """Refuse to touch the run in ``run_dir`` unless it is ``--resume``d, unfinished,
    with the same scenario; exit 0 if there is nothing left to resume."""
    where = shown(str(run_dir))
    finished = (run_dir / "summary.json").exists()
    done = finished_rounds(run_dir)
    if finished and resume:
        out.print(f"{where}: the run is already finished; nothing to resume", markup=False)
        raise typer.Exit(0)
    if finished:
        fail(
            f"--out {where}: already holds a finished run; "
            "pass --overwrite to replace it or choose another --out"
        )
    if not resume:
        fail(
            f"--out {where}: holds an unfinished run ({done} round(s) on disk); "
            "pass --resume to continue it, --overwrite to start over, or choose another --out"
        )
    stored = run_dir / "scenario.json"
    if stored.exists():
        changed = scenario_changes(json.loads(stored.read_text()), sc.model_dump(mode="json"))
        if changed:
            fail(
                f"--resume {where}: the scenario differs from the run's (scenario.json): "
                f"{'; '.join(changed)}; resume with the same scenario and --set options, "
                "or --overwrite to start over"
            )


def run(
    scenario: ScenarioArg,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Run directory (default: <run.output_dir>/<run.name>)."),
    ] = None,
    set_: SetOpt = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="Attach to a running Ray cluster: HOST:PORT of its head node "
            "(e.g. 127.0.0.1:6379); overrides [simulation] ray_address."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run in --out.")] = False,
    resume: Annotated[
        bool, typer.Option(help="Continue the unfinished run in --out from its last round.")
    ] = False,
    quiet: QuietOpt = False,
    verbose: Annotated[bool, typer.Option(help="Show Flower's and Ray's logs.")] = False,
) -> None:
    """Run a scenario as a Flower + Ray federated simulation.

    Every finished round is on disk; after a crash or kill, the same command with
    --resume continues from the last finished round.

    Examples:

      fogsim run scenarios/quickstart.toml

      fogsim run quickstart --set run.rounds=5 --set train.lr=0.1 --out runs/lr01

      fogsim run quickstart --out runs/lr01 --resume
    """
    sc = load(scenario, set_)
    load_data(sc)
    check_cluster(ray_address or sc.simulation.ray_address)
    run_dir = out_dir or Path(sc.run.output_dir) / sc.run.name
    resuming = prepare_run_dir(run_dir, sc, overwrite, resume)

    started = time.perf_counter()
    if not simulate_with_progress(sc, run_dir, resuming, ray_address, verbose, quiet):
        interrupted(run_dir, f"fogsim run {scenario} --out {run_dir} --resume")
    if not quiet:
        summary = json.loads((run_dir / "summary.json").read_text())
        out.print(
            f"done in {time.perf_counter() - started:.1f}s: final accuracy "
            f"{summary['final_accuracy']:.4f} (best {summary['best_accuracy']:.4f}); "
            f"results in {run_dir}",
            markup=False,
        )


def simulate_with_progress(
    sc: Scenario,
    run_dir: Path,
    resume: bool,
    ray_address: str | None,
    verbose: bool,
    quiet: bool,
) -> bool:
    """Run ``sc`` into ``run_dir`` with a progress line (round, accuracy, problems);
    False if a signal stopped it early."""
    from fogsim.flower import engine  # imports Flower and Ray: only when running

    progress = progress_bar(quiet)
    task = progress.add_task(escape(sc.run.name), total=sc.run.rounds, info="starting Ray...")

    def on_round(row: dict[str, Any]) -> None:
        if row.get("resumed"):
            info = f"resumed after round {row['round']}"
        else:
            info = f"acc {row['accuracy']:.4f}  loss {row['loss']:.4f}" + round_problems(row)
        progress.update(task, completed=row["round"], info=info)

    with progress:
        return engine.simulate(
            sc,
            run_dir,
            ray_address=ray_address,
            progress=on_round,
            verbose=verbose,
            resume=resume,
        )


def interrupted(run_dir: Path, again: str) -> None:
    """A signal stopped the run after a finished round: say how to go on, exit 130."""
    done = finished_rounds(run_dir)
    err.print(
        f"interrupted after {done} finished round(s), all on disk in {run_dir}; "
        f"to continue: {again}",
        soft_wrap=True,
        markup=False,
    )
    raise typer.Exit(130)


def round_problems(row: dict[str, Any]) -> str:
    """The progress line's warnings: clients that did not count, and a kept model."""
    parts = [f"{row[s]} {s.replace('_', ' ')}" for s in STATUSES if s != "ok" and row.get(s)]
    text = f"  [red]{', '.join(parts)}[/]" if parts else ""
    if row.get("kept_previous"):
        text += (
            f"  [bold red]kept the previous model ({row['aggregated']} good update(s) "
            f"< min_replies)[/]"
        )
    return text


def fleet_table(sc: Scenario) -> Table:
    """Per class: size, budget, links, and the widest model each budget trains at the
    minimum batch (``[dynhp] min_batch``); nodes that can train nothing, and why."""
    fleet = build_fleet(sc.fleet, sc.run.seed)
    arch = sc.model.shape
    kind, batch = sc.train.memory_kind, sc.dynhp.min_batch
    table = Table(
        title=f"fleet: {sc.fleet.nodes} nodes; widest = widest model trainable at batch {batch}"
    )
    cols = ("class", "nodes", "budget", "FLOP/s", "up/down Mbit/s", "avail.")
    for col in (*cols, "widest model", "cannot train"):
        table.add_column(col, justify="left" if col in ("class", "widest model") else "right")
    counts = fleet.counts()
    need = sc.smallest_training_memory  # below this a node trains nothing
    for i, c in enumerate(sc.fleet.classes):
        budgets = fleet.budgets[fleet.node_class == i]
        low = int(budgets.min()) if len(budgets) else c.memory
        budget = format_bytes(c.memory) + (
            f"..{format_bytes(c.memory_max)}" if c.memory_max else ""
        )
        f = widest_fraction(arch, low, kind, batch)
        fit = arch.scaled(f).widths
        stuck = int((budgets < need).sum())
        why = f"{stuck} (width 1 needs {format_bytes(need)})" if stuck else "0"
        table.add_row(
            escape(c.name),
            str(counts[c.name]),
            budget,
            f"{c.flops:.3g}",
            f"{c.up_mbps:g}/{c.down_mbps:g}",
            f"{c.availability:g}",
            f"{f:.0%} " + "x".join(map(str, fit)) if f > 0 else "none",
            why,
        )
    return table


def validate(scenario: ScenarioArg, set_: SetOpt = None) -> None:
    """Check a scenario and print it resolved (defaults filled in) with a fleet summary.

    Example:

      fogsim validate scenarios/quickstart.toml --set fleet.nodes=100
    """
    sc = load(scenario, set_)
    out.print_json(json.dumps(sc.model_dump(mode="json")))
    out.print(fleet_table(sc))
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
        first = path.read_text().splitlines()[0] if path.stat().st_size else ""
        table.add_row(path.stem, first.lstrip("# ").strip())
    out.print(table)
