"""What every ``fogsim`` command shares: consoles, the one error path, options.

User mistakes end with one clear message on stderr and exit code 2 (:func:`fail`),
never a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fogsim.checks import check_data, load_checked
from fogsim.data import DatasetError, DatasetNotFoundError
from fogsim.scenario import Scenario, ScenarioError, shown
from fogsim.study.report import Table as ReportTable

SCENARIO_DIR = Path(__file__).resolve().parent.parent.parent / "scenarios"

out = Console()
err = Console(stderr=True)

# options and arguments used by several commands, declared once
# (typer 0.20 with click 8.5 drops an argument's help: commands say it in their docstring)
ScenarioArg = Annotated[str, typer.Argument(help="Scenario file, or a shipped scenario's name.")]
OptionalScenarioArg = Annotated[
    str | None,
    typer.Argument(help="Scenario file, or a shipped scenario's name (not with --resume)."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a field: section.key=value (repeatable)."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
TargetOpt = Annotated[
    float,
    typer.Option(
        min=0.0, max=1.0, help="Accuracy for 'rounds, simulated time and cloud bytes to target'."
    ),
]


def fail(message: str) -> None:
    """Print ``error: message`` on stderr and exit with code 2."""
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
    """Load and check a scenario (``fogsim.checks``: its strategy and parameters, its
    fleet), or fail."""
    if not scenario.strip():
        fail(f"scenario {scenario!r}: empty; give a scenario file or a shipped scenario's name")
    try:
        return load_checked(resolve_scenario_path(scenario), overrides)
    except ScenarioError as e:
        fail(str(e))
        raise  # unreachable; keeps type checkers happy


def source_of(scenario: str) -> str:
    """How errors name the scenario file ``scenario`` resolves to."""
    return shown(str(resolve_scenario_path(scenario)))


def load_data(sc: Scenario, source: str) -> None:
    """Fail unless the data set loads and splits across the fleet (before Ray starts),
    naming ``source``, the scenario's file."""
    try:
        check_data(sc)
    except DatasetNotFoundError as e:  # the field to fix, as for any other bad value
        fail(f"{source}: data.path = {sc.data.path!r}: {e}" if sc.data.path else f"{source}: {e}")
    except (DatasetError, ScenarioError) as e:
        fail(f"{source}: {e}")


def check_cluster(address: str | None) -> None:
    """Exit at once when the Ray cluster to attach to answers nothing."""
    if address:
        from fogsim.flower.engine import RayClusterError, check_ray_address  # imports Flower

        try:
            check_ray_address(address)
        except RayClusterError as e:
            fail(str(e))


def progress_bar(quiet: bool, counter: str = "round {task.completed}/{task.total}") -> Progress:
    """A progress display on stderr: description, bar, ``counter``, elapsed, info."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn(counter),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=err,
        disable=quiet,
    )


def print_table(table: ReportTable) -> None:
    """Print a report table as it is where it fits the console, else turned on its side
    (a row per column) if that fits, else in slices of its columns, each led by the
    first: Rich folds every cell of a table wider than the console, so that a budget
    of 49152 once printed as "491" over "52"."""
    turned = [[h, *(row[i] for row in table.rows)] for i, h in enumerate(table.headers)]
    for headers, rows in ((table.headers, table.rows), (turned[0], turned[1:])):
        if fits(rt := rich_table(headers, rows, table.title)):
            out.print(rt)
            return
    start = 1
    while start < len(table.headers):
        end = start + 1
        while end < len(table.headers) and fits(sliced(table, start, end + 1)):
            end += 1
        out.print(sliced(table, start, end))
        start = end


def fits(rt: Table) -> bool:
    return Measurement.get(out, out.options.update_width(1 << 16), rt).maximum <= out.width


def sliced(table: ReportTable, start: int, end: int) -> Table:
    """The first column and columns ``start`` to ``end - 1``."""
    cut = [0, *range(start, end)]
    rows = [[row[i] for i in cut] for row in table.rows]
    return rich_table([table.headers[i] for i in cut], rows, table.title)


def rich_table(headers: list[str], rows: list[list[str]], title: str) -> Table:
    rt = Table(title=title)
    for i, h in enumerate(headers):
        rt.add_column(h, justify="left" if i == 0 else "right", overflow="fold")
    for row in rows:
        rt.add_row(*row)
    return rt
