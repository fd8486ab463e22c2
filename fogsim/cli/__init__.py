"""``fogsim``: the command line (Typer), one module per group of commands.

User mistakes (bad scenario, missing data set, unusable output directory) end with one
clear message on stderr and exit code 2, never a traceback (``common.fail``).
"""

from __future__ import annotations

from typing import Annotated

import typer

from fogsim import __version__
from fogsim.cli import dynhp, hardware, run, study, validate
from fogsim.cli.common import out

app = typer.Typer(
    help="fogsim: federated fog-learning simulator (DynHP on memory-budgeted fleets, "
    "Flower + Ray).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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


commands = (run.run, validate.validate, validate.scenarios, hardware.devices)
for command in (*commands, study.report, study.compare, study.sweep):
    app.command()(command)
app.command("dynhp")(dynhp.dynhp)
