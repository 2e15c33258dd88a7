"""How `gspo` reads its command line beyond plain click: several values after one flag, and
a usage mistake (unknown option, bad value, missing argument) as one `error:` line, exit 2.

Only `cli` imports this module; nothing here reads the working directory, so the same
arguments always parse the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
import typer.core
from rich.console import Console
from rich.markup import escape

from gspo_cli.base.errors import UserError

err_console = Console(stderr=True, soft_wrap=True)

_INTEGER = re.compile(r"[+-]?\d+")


def _algo_names() -> tuple[str, ...]:
    from gspo_cli.recipe import DEFAULT_CLIP  # the one list of algorithms

    return tuple(DEFAULT_CLIP)


def list_value(flag: str, arg: str) -> bool:
    """Whether `arg`, after the values of `flag` so far, is one more value of it.

    --seeds takes integers (a negative one too, so that click refuses it by its range);
    --algos takes the known algorithm names and any other bare word (so a typo is reported as
    an unknown algorithm), never an option or a path (a value with '/', '\\\\' or '.').

    >>> list_value("--seeds", "1"), list_value("--seeds", "-1"), list_value("--seeds", "r.yaml")
    (True, True, False)
    >>> list_value("--algos", "grpo"), list_value("--algos", "grpoo"), list_value("--algos", "r")
    (True, True, True)
    >>> [list_value("--algos", a) for a in ("--out", "runs/a", "a.yml")]
    [False, False, False]
    """
    if flag == "--seeds":
        return bool(_INTEGER.fullmatch(arg))
    if arg.startswith("-"):
        return False
    return arg in _algo_names() or not any(c in arg for c in "/\\.")


class ListOptionsCommand(typer.core.TyperCommand):
    """Lets `--algos gspo grpo` and `--seeds 0 1 2` take several values after one flag.

    Click options take one value per flag; before parsing, the values that follow one of
    these flags (see `list_value`) are given a flag each, so `--algos gspo grpo` reads as
    `--algos gspo --algos grpo`. A flag with no value is passed bare, so click says so.
    """

    list_options = ("--algos", "--seeds")

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # a click Context
        return super().parse_args(ctx, spread_lists(args, self.list_options))


def spread_lists(args: list[str], flags: tuple[str, ...]) -> list[str]:
    """`args` with a copy of the flag before each value of a list option.

    >>> spread_lists(["--algos", "gspo", "grpo", "r.yaml", "--seeds", "0", "1"], \
("--algos", "--seeds"))
    ['--algos', 'gspo', '--algos', 'grpo', 'r.yaml', '--seeds', '0', '--seeds', '1']
    """
    out: list[str] = []
    current: str | None = None
    for arg in args:
        if current is not None and list_value(current, arg):
            if out[-1] != current:  # the flag itself is already there before the first value
                out.append(current)
            out.append(arg)
            continue
        current = arg if arg in flags else None
        out.append(arg)
    return out


def _is_usage_error(exc: Exception) -> bool:
    """click's UsageError (typer may vendor click, so it is matched by name), except the
    "no arguments: show the help" one."""
    names = [cls.__name__ for cls in type(exc).__mro__]
    return "UsageError" in names and "NoArgsIsHelpError" not in names


@contextmanager
def _one_line_usage() -> Iterator[None]:
    try:
        yield
    except typer.Exit:
        raise
    except Exception as exc:
        if not _is_usage_error(exc):
            raise
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "gspo"
        text = " ".join(str(getattr(exc, "format_message", exc.__str__)()).split())
        problem = UserError(f"{where}: {text}; see {where} --help")
        err_console.print(f"[bold red]error:[/] {escape(str(problem))}", highlight=False)
        raise typer.Exit(problem.exit_code) from None


class OneLineUsageGroup(typer.core.TyperGroup):
    """The `gspo` group: a usage mistake in it or any command is one red line, exit 2."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _one_line_usage():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with _one_line_usage():
            return super().invoke(ctx)
