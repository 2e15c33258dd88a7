"""The command line's shared parts: the Typer app, the consoles, the options every command
takes, and the one error boundary (`user_errors`), the only place a `GspoError` becomes an
exit code (2 for a user's mistake, 1 for a runtime failure, 3 and 130/143 for stops).
Heavy imports (torch, transformers) happen inside commands so `gspo --help` stays fast."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import typer.core
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from gspo_cli import __version__
from gspo_cli.base.errors import (
    GspoError,
    Interrupted,
    UserError,
    WatchdogStop,
)
from gspo_cli.cli.listparse import OneLineUsageGroup
from gspo_cli.cli.outputs import (
    check_output_dir,
)

if TYPE_CHECKING:
    from gspo_cli.recipe import Recipe


app = typer.Typer(
    name="gspo",
    help="Reinforcement-learning fine-tuning of language models with GSPO (GRPO as an ablation).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    cls=OneLineUsageGroup,
)


console = Console(soft_wrap=True)


err_console = Console(stderr=True, soft_wrap=True)


RecipeArg = Annotated[
    Path | None,
    typer.Argument(
        help="Recipe YAML file. Omit it to use the embedded default (tiny Qwen3, addition).",
        show_default=False,
    ),
]


SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a recipe value, e.g. --set algo.mode=grpo (repeatable).",
        show_default=False,
    ),
]


QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="Plain log lines instead of a live display.")
]


def _version(value: bool) -> None:
    if value:
        console.print(f"gspo {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """GSPO/GRPO fine-tuning: prepare data, train, evaluate and compare runs."""


@contextmanager
def user_errors() -> Iterator[None]:
    """The one error boundary: a GspoError becomes one red line and its exit code."""
    try:
        yield
    except GspoError as exc:
        label = (
            "[bold yellow]interrupted:[/]"
            if isinstance(exc, Interrupted)
            else "[bold yellow]stopped:[/]"
            if isinstance(exc, WatchdogStop)
            else "[bold red]error:[/]"
        )
        rank = os.environ.get("RANK", "0")
        # escaped: a message's own brackets (`pip install "gspo-cli[wandb]"`, a path) are text
        text = escape(str(exc))
        if rank != "0" and not isinstance(exc, UserError | Interrupted | WatchdogStop):
            # A runtime failure on one rank (e.g. a reward raising on its prompts): only it
            # knows; every rank shares the user errors and interruptions rank 0 reports.
            label = f"rank {rank}: {label}"
            Console(stderr=True, soft_wrap=True).print(f"{label} {text}", highlight=False)
        err_console.print(f"{label} {text}", highlight=False)
        raise typer.Exit(exc.exit_code) from None


def prepare_runtime() -> None:
    """Settings that must precede the first torch import, then quiet transformers' chatter.

    OpenMP's default busy-wait makes a CPU run many times slower whenever another process
    shares the cores; passive waiting costs nothing measurable when it does not. Both are
    defaults only: a value already in the environment wins. Every command that calls this
    may fill the cache (the tiny model, prepared data), so a GSPO_CACHE that cannot be
    written is refused here, before any work.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    from gspo_cli.rundir.paths import cache_root

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    check_output_dir(cache_root(), "the cache", flag="GSPO_CACHE")


def load_recipe_with_warnings(recipe: Path | None, overrides: list[str] | None) -> Recipe:
    from gspo_cli.recipe import load_recipe, warnings_for

    loaded = load_recipe(recipe, overrides or [])
    for note in warnings_for(loaded):
        warn(note)
    return loaded


def warn(text: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(text)}", highlight=False)


def announce(text: str) -> None:
    console.print(f"[cyan]{escape(text)}[/]", highlight=False)


def progress_bar(label: str, quiet: bool) -> Progress:
    return Progress(
        TextColumn(f"[bold]{label}" + " {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=True,
    )
