"""`gspo plot RUN_DIR`: compare's panels for one run, written into the run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gspo_cli.base.errors import UserError
from gspo_cli.cli.base import app, console, user_errors


@app.command()
def plot(
    run_dir: Annotated[
        Path, typer.Argument(metavar="RUN_DIR", help="A run directory (finished or not).")
    ],
) -> None:
    """Plot one run (reward, eval accuracy, clip fraction, importance ratio, against step and
    wall time) into RUN_DIR/summary.png. Imports no torch."""
    with user_errors():
        from gspo_cli.commands.compare import RunProblem, write_run_plot

        try:
            path = write_run_plot(run_dir)
        except RunProblem as exc:
            raise UserError(f"cannot plot {exc}") from None
        console.print(f"plots {path}", highlight=False)
