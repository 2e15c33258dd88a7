"""The `gspo` command line: a thin face over the command cores. Each command parses its
options, loads the recipe, calls one core function and renders the result.

    base.py         the Typer app, consoles, shared options, the one error boundary
    view.py         the live view of a training run
    train_cmd.py    gspo train (and the torchrun relaunch for --nproc)
    check_cmd.py    gspo check
    prepare_cmd.py  gspo prepare
    eval_cmd.py     gspo eval
    compare_cmd.py  gspo compare
    plot_cmd.py     gspo plot
    env_cmd.py      gspo env
"""

from __future__ import annotations

from gspo_cli.cli import (
    check_cmd,
    compare_cmd,
    env_cmd,
    eval_cmd,
    plot_cmd,
    prepare_cmd,
    train_cmd,
)
from gspo_cli.cli.base import app

__all__ = [
    "app",
    "check_cmd",
    "compare_cmd",
    "env_cmd",
    "eval_cmd",
    "plot_cmd",
    "prepare_cmd",
    "train_cmd",
]
