"""``fogsim``: the command line (Typer).

User mistakes (bad scenario, missing data set, unusable output directory) end with one
clear message on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fogsim import __version__
from fogsim.centralized import dynhp_command
from fogsim.data import DatasetError, DatasetNotFoundError, load_dataset, partition
from fogsim.fleet import build_fleet
from fogsim.report import ReportError, load_run, write_report
from fogsim.report import Table as ReportTable
from fogsim.results import CHECKPOINT, STATUSES, finished_rounds
from fogsim.scenario import Scenario, ScenarioError, load_scenario, shown
from fogsim.strategies import STRATEGIES
from fogsim.strategies.base import fitting_fraction
from fogsim.units import format_bytes

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"

app = typer.Typer(
    help="fogsim: federated fog-learning simulator (DynHP on memory-budgeted fleets, "
    "Flower + Ray).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


def fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def resolve_scenario_path(name: str) -> Path:
    """A path, or the name of a shipped scenario (``quickstart``)."""
    shipped = SCENARIO_DIR / f"{name}.toml"
    # os.path.exists, not Path.exists: False (no OSError) for a name too long
    if not os.path.exists(name) and os.path.exists(shipped):
        return shipped
    return Path(name)


def load(scenario: str, overrides: list[str] | None) -> Scenario:
    """Load and validate, including the strategy's parameters (by building it once)."""
    if not scenario.strip():
        fail(f"scenario {scenario!r}: empty; give a scenario file or a shipped scenario's name")
    path = resolve_scenario_path(scenario)
    try:
        sc = load_scenario(path, overrides)
    except ScenarioError as e:
        fail(str(e))
        raise  # unreachable; keeps type checkers happy
    try:
        STRATEGIES[sc.strategy.name](sc, build_fleet(sc.fleet, sc.run.seed), **sc.strategy.params)
    except (TypeError, ValueError) as e:
        strategy = f"strategy {sc.strategy.name!r} with params {sc.strategy.params}"
        fail(f"{shown(str(path))}: {strategy}: {e}")
    return sc


def check_cluster(address: str | None) -> None:
    """Exit at once when the Ray cluster to attach to answers nothing."""
    if address:
        from fogsim.engine import RayClusterError, check_ray_address  # imports Flower

        try:
            check_ray_address(address)
        except RayClusterError as e:
            fail(str(e))


def load_data(sc: Scenario) -> None:
    """Fail unless the data set loads and splits across the fleet (before Ray starts)."""
    try:
        data = load_dataset(sc.data.dataset, sc.data.path)
    except (DatasetNotFoundError, DatasetError) as e:
        fail(str(e))
        raise
    d = sc.data
    try:
        partition(
            data.train_y,
            sc.fleet.nodes,
            d.partitioning,
            seed=sc.run.seed,
            alpha=d.alpha,
            shards_per_node=d.shards_per_node,
        )
    except ValueError as e:
        fail(f"data.partitioning = {d.partitioning!r} over fleet.nodes = {sc.fleet.nodes}: {e}")


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


def version_callback(value: bool) -> None:
    if value:
        out.print(f"fogsim {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=version_callback, is_eager=True, help="Show version."),
    ] = False,
) -> None:
    """fogsim: federated fog-learning simulator."""


@app.command()
def run(
    scenario: Annotated[str, typer.Argument(help="Scenario file, or a shipped scenario's name.")],
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Run directory (default: <run.output_dir>/<run.name>)."),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a field: section.key=value (repeatable)."),
    ] = None,
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
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
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

    from fogsim.engine import simulate  # imports Flower and Ray: only when running

    started = time.perf_counter()
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("round {task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=err,
        disable=quiet,
    )
    task = progress.add_task(escape(sc.run.name), total=sc.run.rounds, info="starting Ray...")

    def on_round(row: dict[str, Any]) -> None:
        if row.get("resumed"):
            info = f"resumed after round {row['round']}"
        else:
            info = f"acc {row['accuracy']:.4f}  loss {row['loss']:.4f}" + round_problems(row)
        progress.update(task, completed=row["round"], info=info)

    with progress:
        finished = simulate(
            sc,
            run_dir,
            ray_address=ray_address,
            progress=on_round,
            verbose=verbose,
            resume=resuming,
        )
    if not finished:
        interrupted(run_dir, f"fogsim run {scenario} --out {run_dir} --resume")
    if not quiet:
        summary = json.loads((run_dir / "summary.json").read_text())
        out.print(
            f"done in {time.perf_counter() - started:.1f}s: final accuracy "
            f"{summary['final_accuracy']:.4f} (best {summary['best_accuracy']:.4f}); "
            f"results in {run_dir}",
            markup=False,
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
    cols = (
        "class",
        "nodes",
        "budget",
        "FLOP/s",
        "up/down Mbit/s",
        "avail.",
        "widest model",
        "cannot train",
    )
    for col in cols:
        table.add_column(col, justify="left" if col in ("class", "widest model") else "right")
    counts = fleet.counts()
    need = sc.smallest_training_memory  # below this a node trains nothing
    for i, c in enumerate(sc.fleet.classes):
        budgets = fleet.budgets[fleet.node_class == i]
        low = int(budgets.min()) if len(budgets) else c.memory
        budget = format_bytes(c.memory) + (
            f"..{format_bytes(c.memory_max)}" if c.memory_max else ""
        )
        f = fitting_fraction(arch, low, kind, batch)
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


@app.command()
def validate(
    scenario: Annotated[str, typer.Argument(help="Scenario file, or a shipped scenario's name.")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a field: section.key=value.")
    ] = None,
) -> None:
    """Check a scenario and print it resolved (defaults filled in) with a fleet summary.

    Example:

      fogsim validate scenarios/quickstart.toml --set fleet.nodes=100
    """
    sc = load(scenario, set_)
    out.print_json(json.dumps(sc.model_dump(mode="json")))
    out.print(fleet_table(sc))
    out.print("[green]valid[/]")


@app.command()
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


def rich_table(table: ReportTable) -> Table:
    rt = Table(title=table.title)
    for i, h in enumerate(table.headers):
        rt.add_column(h, justify="left" if i == 0 else "right", overflow="fold")
    for row in table.rows:
        rt.add_row(*row)
    return rt


def check_run_dirs(run_dirs: list[Path]) -> None:
    for d in run_dirs:
        try:
            load_run(d)
        except ReportError as e:
            fail(str(e))


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (holds rounds.csv).")],
) -> None:
    """Write plots (PNG) and report.md into a run directory and print its tables.

    Works on an unfinished run too (it reports the rounds written so far).

    Example:

      fogsim report runs/quickstart
    """
    check_run_dirs([run_dir])
    rep = write_report(run_dir)
    for t in rep.tables:
        out.print(rich_table(t))
    out.print(f"wrote {rep.markdown} and {len(rep.plots)} plots in {run_dir}")


TargetOpt = Annotated[
    float, typer.Option(min=0.0, max=1.0, help="Accuracy for 'rounds to target'.")
]


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories to compare.")],
    target: TargetOpt = 0.9,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Where compare.csv and the plot go (default: the first run's parent directory).",
        ),
    ] = None,
) -> None:
    """Compare runs: one table (accuracy, rounds to target, bytes, round time,
    compression) and one accuracy-per-round overlay plot.

    Example:

      fogsim compare runs/lr005 runs/lr01 --target 0.95 --out runs/cmp
    """
    from fogsim.compare import compare as compare_runs
    from fogsim.compare import metrics_table

    check_run_dirs(run_dirs)
    dest = out_dir or run_dirs[0].resolve().parent
    try:
        rows, csv_path, png = compare_runs(run_dirs, dest, target)
    except OSError as e:
        fail(f"--out {dest}: cannot write there ({e.strerror})")
        raise
    out.print(rich_table(metrics_table(rows, target)))
    out.print(f"wrote {csv_path} and {png}")


@app.command()
def sweep(
    scenario: Annotated[str, typer.Argument(help="Scenario file, or a shipped scenario's name.")],
    grid: Annotated[
        list[str],
        typer.Option("--grid", help="section.key=v1,v2,... (repeatable; runs the product)."),
    ],
    repeat: Annotated[int, typer.Option(min=1, help="Seeds per grid point: run.seed + i.")] = 1,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Sweep directory (default: <run.output_dir>/<run.name>-sweep)."),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a field for every run: section.key=value."),
    ] = None,
    target: TargetOpt = 0.9,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Run every combination of --grid values (x --repeat seeds), one run directory
    each, then write sweep.csv / compare.csv / sweep_accuracy.png for the whole sweep.

    Run it again after an interruption: finished runs (with summary.json) are kept.

    Examples:

      fogsim sweep quickstart --grid train.lr=0.05,0.1 --repeat 3

      fogsim sweep quickstart --grid train.lr=0.05,0.1 --grid train.batch_size=16,32 \\
        --set run.rounds=5 --out runs/lr-bs
    """
    from fogsim.sweep import SweepError, parse_grid, plan, run_all, summarize

    sc = load(scenario, set_)
    try:
        runs = plan(resolve_scenario_path(scenario), set_ or [], parse_grid(grid), repeat)
    except SweepError as e:
        fail(str(e))
        raise
    for _, s in runs:
        load_data(s)
    for address in {s.simulation.ray_address for _, s in runs}:
        check_cluster(address)
    sweep_dir = out_dir or Path(sc.run.output_dir) / f"{sc.run.name}-sweep"
    if sweep_dir.exists() and not sweep_dir.is_dir():
        fail(f"--out {sweep_dir}: exists and is not a directory")
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(f"--out {sweep_dir}: cannot write there ({e.strerror})")

    from fogsim.engine import simulate  # imports Flower and Ray: only when running

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=err,
        disable=quiet,
    )
    runs_task = progress.add_task("runs", total=len(runs), info="")
    rounds_task = progress.add_task("rounds", total=1, info="")

    def on_run(i: int, point: Any, skipped: bool) -> None:
        progress.update(runs_task, completed=i, info=point.name + (" (done)" if skipped else ""))
        progress.reset(rounds_task, total=runs[i][1].run.rounds, info="")

    def run_one(s: Scenario, run_dir: Path, resume: bool) -> None:
        def on_round(row: dict[str, Any]) -> None:
            info = "resumed" if row.get("resumed") else f"acc {row['accuracy']:.4f}"
            progress.update(rounds_task, completed=row["round"], info=info)

        if not simulate(s, run_dir, progress=on_round, resume=resume):
            interrupted(run_dir, "the same fogsim sweep command (finished runs are skipped)")

    with progress:
        dirs = run_all(runs, sweep_dir, run_one, on_run)
        progress.update(runs_task, completed=len(runs))
    _, table = summarize(runs, dirs, sweep_dir, target)
    out.print(rich_table(table))
    out.print(f"wrote sweep.csv, compare.csv and sweep_accuracy.png in {sweep_dir}")


app.command("dynhp")(dynhp_command)
