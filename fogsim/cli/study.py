"""``fogsim report``, ``compare`` and ``sweep``: run directories in, tables and plots out."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any

import typer

from fogsim.cli.common import (
    QuietOpt,
    ScenarioArg,
    SetOpt,
    TargetOpt,
    check_cluster,
    fail,
    load,
    load_data,
    out,
    print_table,
    progress_bar,
    resolve_scenario_path,
    source_of,
)
from fogsim.cli.run import interrupted
from fogsim.scenario import Scenario
from fogsim.study.report import write_report
from fogsim.study.series import ReportError, load_run
from fogsim.study.sweep import (
    Point,
    SweepError,
    mismatched_runs,
    parse_grid,
    plan,
    run_all,
    summarize,
)


def check_run_dirs(run_dirs: list[Path]) -> None:
    for d in run_dirs:
        try:
            load_run(d)
        except ReportError as e:
            fail(str(e))


def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (holds rounds.csv).")],
    target: TargetOpt = 0.9,
) -> None:
    """Write plots (PNG) and report.md into a run directory and print its tables.

    Works on an unfinished run too (it reports the rounds written so far). Accuracy is
    plotted against rounds, simulated time and cloud-link bytes; report.md says when
    (simulated time, cloud bytes) the global model first reached --target.

    Example:

      fogsim report runs/quickstart --target 0.85
    """
    check_run_dirs([run_dir])
    rep = write_report(run_dir, target)
    for t in rep.tables:
        print_table(t)
    out.print(f"wrote {rep.markdown} and {len(rep.plots)} plots in {run_dir}")


def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories to compare.")],
    target: TargetOpt = 0.9,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Where compare.csv and the plots go (default: the first run's parent directory).",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a compare.csv in --out that compares other runs.")
    ] = False,
) -> None:
    """Compare runs: one table (accuracy, rounds and simulated time to target, bytes,
    round time, compression, each class's devices' accuracy) and overlay plots of
    accuracy per round, against bytes and simulated time, cloud-link bytes and, for runs
    with energy, energy. Notes below the table name unfinished runs and settings (data,
    model, fleet, rounds) in which the runs differ.

    Example:

      fogsim compare runs/lr005 runs/lr01 --target 0.95 --out runs/cmp
    """
    from fogsim.study.compare import compare as compare_runs
    from fogsim.study.compare import compared_dirs, metrics_table

    check_run_dirs(run_dirs)
    dirs = [str(d.resolve()) for d in run_dirs]
    if twice := sorted({d for d in dirs if dirs.count(d) > 1}):
        fail(f"{', '.join(twice)}: given more than once; name each run once")
    dest = out_dir or run_dirs[0].resolve().parent
    earlier = compared_dirs(dest) if dest.is_dir() else None
    if earlier is not None and earlier != set(dirs) and not overwrite:
        fail(
            f"--out {dest}: holds compare.csv of other runs ({len(earlier) or 'unnamed'}; "
            "a sweep's or an earlier comparison): choose another --out, or pass --overwrite "
            "to replace it and its plots"
        )
    try:
        rows, written, said = compare_runs(run_dirs, dest, target)
    except OSError as e:
        fail(f"--out {dest}: cannot write there ({e.strerror})")
        raise
    print_table(metrics_table(rows, target))
    for note in said:
        out.print(f"note: {note}", markup=False)
    out.print("wrote " + ", ".join(str(p) for p in written))


def sweep_dir_of(sc: Scenario, out_dir: Path | None) -> Path:
    """The sweep directory, created (default: <run.output_dir>/<run.name>-sweep)."""
    sweep_dir = out_dir or Path(sc.run.output_dir) / f"{sc.run.name}-sweep"
    if sweep_dir.exists() and not sweep_dir.is_dir():
        fail(f"--out {sweep_dir}: exists and is not a directory")
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(f"--out {sweep_dir}: cannot write there ({e.strerror})")
    return sweep_dir


def redo_mismatched(runs: list[tuple[Point, Scenario]], sweep_dir: Path, overwrite: bool) -> None:
    """Refuse runs in ``sweep_dir`` made with another scenario, or (``overwrite``)
    delete them so they are run again."""
    stale = mismatched_runs(runs, sweep_dir)
    if stale and not overwrite:
        listed = " | ".join(f"{name}: {'; '.join(why)}" for name, why in stale.items())
        fail(
            f"--out {sweep_dir}: {len(stale)} run(s) there were made with another scenario: "
            f"{listed}; pass --overwrite to redo them, or choose another --out"
        )
    for name in stale:
        shutil.rmtree(sweep_dir / name)


def sweep(
    scenario: ScenarioArg,
    grid: Annotated[
        list[str],
        typer.Option("--grid", help="section.key=v1,v2,... (repeatable; runs the product)."),
    ],
    repeat: Annotated[int, typer.Option(min=1, help="Seeds per grid point: run.seed + i.")] = 1,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Sweep directory (default: <run.output_dir>/<run.name>-sweep)."),
    ] = None,
    set_: SetOpt = None,
    target: TargetOpt = 0.9,
    overwrite: Annotated[
        bool, typer.Option(help="Redo runs in --out made with another scenario.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Run every combination of --grid values (x --repeat seeds), one run directory
    each, then write sweep.csv (mean ± std per point, blank unless every seed has a
    value), compare.csv, sweep_accuracy.png and sweep.json (the runs and their
    overrides) for the whole sweep.

    SCENARIO is a scenario file or the name of a shipped one (see fogsim scenarios).
    Run it again after an interruption: finished runs (with summary.json) are kept,
    unfinished ones resumed. A run in --out made with another scenario (e.g. other
    --set options) is refused, or redone with --overwrite.

    Examples:

      fogsim sweep quickstart --grid train.lr=0.05,0.1 --repeat 3

      fogsim sweep quickstart --grid train.lr=0.05,0.1 --grid train.batch_size=16,32 \\
        --set run.rounds=5 --out runs/lr-bs
    """
    sc = load(scenario, set_)
    try:
        runs = plan(resolve_scenario_path(scenario), set_ or [], parse_grid(grid), repeat)
    except SweepError as e:
        fail(str(e))
        raise
    source = source_of(scenario)
    for _, s in runs:
        load_data(s, source)
    for address in {s.simulation.ray_address for _, s in runs}:
        check_cluster(address)
    sweep_dir = sweep_dir_of(sc, out_dir)
    redo_mismatched(runs, sweep_dir, overwrite)

    from fogsim.flower import engine  # imports Flower and Ray: only when running

    progress = progress_bar(quiet, counter="{task.completed}/{task.total}")
    runs_task = progress.add_task("runs", total=len(runs), info="")
    rounds_task = progress.add_task("rounds", total=1, info="")

    def on_run(i: int, point: Point, skipped: bool) -> None:
        progress.update(runs_task, completed=i, info=point.name + (" (done)" if skipped else ""))
        progress.reset(rounds_task, total=runs[i][1].run.rounds, info="")

    def run_one(s: Scenario, run_dir: Path, resume: bool) -> None:
        def on_round(row: dict[str, Any]) -> None:
            info = "resumed" if row.get("resumed") else f"acc {row['accuracy']:.4f}"
            progress.update(rounds_task, completed=row["round"], info=info)

        again = "the same fogsim sweep command (finished runs are skipped)"
        if not engine.simulate(s, run_dir, progress=on_round, resume=resume, continue_with=again):
            interrupted(run_dir, again)

    with progress:
        dirs = run_all(runs, sweep_dir, run_one, on_run)
        progress.update(runs_task, completed=len(runs))
    _, table = summarize(runs, dirs, sweep_dir, target)
    print_table(table)
    out.print(f"wrote sweep.csv, compare.csv, sweep_accuracy.png and sweep.json in {sweep_dir}")
