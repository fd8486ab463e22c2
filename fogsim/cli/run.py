"""``fogsim run``: a scenario in, a run directory out (resumable, interruptible)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from fogsim.checks import check
from fogsim.cli.common import (
    OptionalScenarioArg,
    QuietOpt,
    SetOpt,
    check_cluster,
    err,
    fail,
    load,
    load_data,
    out,
    progress_bar,
    source_of,
)
from fogsim.cli.validate import print_fleet
from fogsim.scenario import Scenario, ScenarioError, shown, validate_scenario
from fogsim.study.results import (
    CHECKPOINT,
    FAILED,
    RunFailed,
    finished_rounds,
    holds_run,
    stored_scenario_changes,
)

# fewer validation samples than this: the run says its validation figures rest on few
FEW_VALIDATION_SAMPLES = 500


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
        existing = holds_run(run_dir)
        if resume and not existing:
            fail(
                f"--resume {where}: nothing to resume there (no rounds.csv or {CHECKPOINT}); "
                "check --out, or leave out --resume to start a new run"
            )
        if existing and overwrite:
            shutil.rmtree(run_dir)
            existing = False
        if existing:
            check_resumable(run_dir, sc, resume)
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        fail(f"--out {where}: cannot write there ({e.strerror or e})")
    except ValueError as e:  # a NUL byte in the path
        fail(f"--out {where}: not a usable path ({e})")
    return existing


def check_resumable(run_dir: Path, sc: Scenario, resume: bool) -> None:
    """Refuse to touch the run in ``run_dir`` unless it is ``--resume``d, unfinished,
    with the same scenario; exit 0 if there is nothing left to resume."""
    where = shown(str(run_dir))
    finished = (run_dir / "summary.json").exists()
    done = finished_rounds(run_dir)
    changed = stored_scenario_changes(run_dir, sc) if resume else []
    if changed:  # finished or not, the run there is not the one asked for
        fail(
            f"--resume {where}: the scenario differs from the run's (scenario.json): "
            f"{'; '.join(changed)}; resume with the same scenario and --set options, "
            "or --overwrite to start over"
        )
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


def run(
    scenario: OptionalScenarioArg = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Run directory (default: <run.output_dir>/<run.name>)."),
    ] = None,
    set_: SetOpt = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="Attach to a running Ray cluster: HOST:PORT of its head node "
            "(e.g. 127.0.0.1:6379); overrides \\[simulation] ray_address."
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

    SCENARIO is a scenario file or the name of a shipped one (see fogsim scenarios).
    Every finished round is on disk; after a crash or kill, --resume --out DIR
    continues from the last finished round with the run's own scenario (DIR/scenario.json).

    Examples:

      fogsim run scenarios/quickstart.toml

      fogsim run quickstart --set run.rounds=5 --set train.lr=0.1 --out runs/lr01

      fogsim run --out runs/lr01 --resume
    """
    if resume and scenario is None:
        sc = stored_scenario(out_dir)
        source = shown(str((out_dir or Path()) / "scenario.json"))
    else:
        sc = load(scenario or "", set_)
        source = source_of(scenario or "")
    load_data(sc, source)
    check_cluster(ray_address or sc.simulation.ray_address)
    run_dir = out_dir or Path(sc.run.output_dir) / sc.run.name
    resuming = prepare_run_dir(run_dir, sc, overwrite, resume)
    if resuming and sc.topology.aggregation == "buffered":
        err.print(
            "note: buffered rounds keep no checkpoint of the devices in flight: the resumed "
            "run starts a fresh set of them, so from here its figures differ from an "
            "uninterrupted run's (rerun with --overwrite for those)",
            markup=False,
            soft_wrap=True,
        )
    if not quiet:
        print_fleet(sc, err)
    started = time.perf_counter()
    try:
        finished = simulate_with_progress(sc, run_dir, resuming, ray_address, verbose, quiet)
    except RunFailed as e:
        err.print(f"error: {e}", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if not finished:
        interrupted(run_dir, resume_command(run_dir))
    if not quiet:
        summary = json.loads((run_dir / "summary.json").read_text())
        out.print(
            f"done in {time.perf_counter() - started:.1f}s: final accuracy "
            f"{summary['final_accuracy']:.4f} (best {summary['best_accuracy']:.4f}); "
            f"results in {run_dir}",
            markup=False,
        )
        if 0 < (few := summary.get("validation_samples", 0)) < FEW_VALIDATION_SAMPLES:
            out.print(
                f"note: the devices' validation accuracy rests on {few} validation "
                "sample(s) (what the nodes hold out, less any sample another node "
                "trains on): too few to choose by",
                markup=False,
            )


def stored_scenario(run_dir: Path | None) -> Scenario:
    """The scenario a run in ``run_dir`` was started with (its scenario.json)."""
    if run_dir is None:
        fail("--resume without a SCENARIO needs --out: the run directory to continue")
        raise AssertionError  # unreachable
    stored = run_dir / "scenario.json"
    where = shown(str(stored))
    try:
        raw = json.loads(stored.read_text())
    except FileNotFoundError:
        fail(f"--resume {shown(str(run_dir))}: nothing to resume there (no scenario.json)")
        raise
    except (OSError, ValueError) as e:
        fail(f"--resume: cannot read {where} ({e})")
        raise
    try:
        sc = validate_scenario(raw, where)
        check(sc, where)
    except ScenarioError as e:
        fail(str(e))
        raise
    return sc


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
            if not quiet:
                progress.console.print(
                    f"resuming {run_dir} after round {row['round']} of {row['rounds']}",
                    markup=False,
                )
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
            continue_with=resume_command(run_dir),
        )


def resume_command(run_dir: Path) -> str:
    """The command that continues the run in ``run_dir`` after a signal stopped it."""
    return f"fogsim run --out {run_dir} --resume"


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
    parts = [f"{row[s]} {s.replace('_', ' ')}" for s in FAILED if row.get(s)]
    text = f"  [red]{', '.join(parts)}[/]" if parts else ""
    if row.get("kept_previous"):
        text += (
            f"  [bold red]kept the previous model ({row['aggregated']} good update(s) "
            f"< min_replies)[/]"
        )
    return text
