"""`gspo train`: load the recipe (or the run's, to resume), start torchrun for --nproc,
then call `train.run` and render it; a run that fails in setup leaves nothing behind."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar, cast

import typer
import typer.core
from rich.markup import escape
from rich.table import Table

from gspo_cli.base.errors import (
    GspoError,
    RecipeError,
    StorageError,
    UserError,
)
from gspo_cli.cli.outputs import (
    abort_message,
    check_output_dir,
    first_missing,
    full_disk_message,
    remove_empty,
)
from gspo_cli.rundir.paths import RUNS_ROOT

if TYPE_CHECKING:
    from gspo_cli.base.distributed import Cluster
    from gspo_cli.recipe import Recipe

from gspo_cli.cli.base import (
    QuietOpt,
    RecipeArg,
    SetOpt,
    app,
    console,
    err_console,
    load_recipe_with_warnings,
    prepare_runtime,
    user_errors,
    warn,
)
from gspo_cli.cli.view import TrainView

T = TypeVar("T")


NprocOpt = Annotated[
    int,
    typer.Option(
        "--nproc",
        min=1,
        help="Train on N processes of this machine (one per GPU; gloo on CPU) by starting "
        "`torchrun --standalone --nproc_per_node N`. For several machines run torchrun "
        "yourself (README: Scaling out).",
    ),
]


@app.command()
def train(
    recipe: RecipeArg = None,
    set_: SetOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Run directory (default: runs/<name>-<time>).")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="Continue this run directory from its newest complete checkpoint. Without "
            "RECIPE, the run's own recipe.yaml is used.",
            show_default=False,
        ),
    ] = None,
    quiet: QuietOpt = False,
    nproc: NprocOpt = 1,
) -> None:
    """Train a policy with GSPO or GRPO as the recipe says; writes a run directory."""
    rank = os.environ.get("RANK", "0")
    if rank != "0":  # under torchrun only rank 0 prints; the others report only failures
        console.quiet = err_console.quiet = True
    with user_errors():
        if resume is not None and out is not None:
            raise UserError("--out and --resume exclude each other: --resume writes into RUN_DIR")
        if out is not None:
            check_output_dir(out, "the run directory")
        loaded = (
            load_recipe_with_warnings(recipe, set_)
            if resume is None
            else _load_for_resume(resume, recipe, set_)
        )
        launched = _torchrun_world_size()  # None: not started by torchrun
        if launched is not None and nproc > 1 and nproc != launched:
            raise UserError(
                f"--nproc {nproc} but torchrun started {launched} processes (WORLD_SIZE); drop "
                "--nproc when launching with torchrun yourself"
            )
        from gspo_cli.recipe import check_world_size

        check_world_size(loaded, launched or nproc)  # before any process starts
        if launched is None and nproc > 1:
            _exec_torchrun(nproc, _forwarded(recipe, set_, out, resume, quiet))
        prepare_runtime()
        from gspo_cli.base import distributed

        with distributed.session(distributed.from_env()) as cluster:
            _train_here(loaded, out, resume, quiet, cluster)


def _torchrun_world_size() -> int | None:
    """WORLD_SIZE as torchrun sets it, or None outside torchrun."""
    text = os.environ.get("WORLD_SIZE")
    if text is None:
        return None
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"WORLD_SIZE={text!r} is not a positive integer")
    return int(text)


def _forwarded(
    recipe: Path | None,
    overrides: list[str] | None,
    out: Path | None,
    resume: Path | None,
    quiet: bool,
) -> list[str]:
    """The `gspo` arguments each torchrun worker gets: the same command without --nproc."""
    args = ["train"] + ([str(recipe)] if recipe is not None else [])
    for assignment in overrides or []:
        args += ["--set", assignment]
    args += ["--out", str(out)] if out is not None else []
    args += ["--resume", str(resume)] if resume is not None else []
    return args + (["--quiet"] if quiet else [])


def _exec_torchrun(nproc: int, args: list[str]) -> None:
    """Replace this process with torchrun running `python -m gspo_cli ARGS` N times."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "-m",
        "gspo_cli",
        *args,
    ]
    console.print(f"starting {nproc} processes: {' '.join(command[1:])}", highlight=False)
    sys.stdout.flush()
    os.execv(sys.executable, command)


def _train_here(
    loaded: Recipe, out: Path | None, resume: Path | None, quiet: bool, cluster: Cluster
) -> None:
    """Run the training core in this process (one of N under torchrun) and render it."""
    from gspo_cli.commands import train as trainer
    from gspo_cli.commands.preflight import batch_plan
    from gspo_cli.rundir.checkpoint import new_run_dir

    estimated = _on_rank_zero(cluster, lambda: trainer.preflight(loaded, cluster.world_size))
    view = TrainView(loaded.train.steps, quiet)
    made: Path | None = None  # the topmost directory this command creates, removed if empty
    if resume is None:
        made = first_missing(out if out is not None else RUNS_ROOT)
        run_dir = _on_rank_zero(cluster, lambda: new_run_dir(out, loaded.name))
        made = made or (run_dir if out is None else None)
        checkpoint = None
    else:
        run_dir = resume
        checkpoint = _on_rank_zero(cluster, lambda: _resume_point(resume))
    processes = f" on {cluster.world_size} processes" if cluster.is_distributed else ""
    console.print(
        f"run [bold]{run_dir}[/]: {loaded.algo.mode}, model {loaded.model.name}, "
        f"{loaded.train.steps} steps × {loaded.completions_per_step} completions{processes}",
        highlight=False,
    )
    console.print(batch_plan(loaded, cluster.world_size).summary(), highlight=False)
    console.print(estimated.summary(), highlight=False)

    def announce(text: str) -> None:
        view.progress.console.print(f"[cyan]{escape(text)}[/]", highlight=False)

    nproc = f" --nproc {cluster.world_size}" if cluster.is_distributed else ""
    try:
        with view.progress:
            summary = trainer.run(
                loaded,
                run_dir,
                view.on_row,
                announce=announce,
                resume_from=checkpoint,
                cluster=cluster,
            )
    except KeyboardInterrupt:
        raise GspoError(abort_message(run_dir, nproc)) from None
    except StorageError as exc:
        raise StorageError(f"{exc}. {full_disk_message(run_dir, nproc)}") from None
    finally:
        if made is not None and cluster.is_main:
            remove_empty(run_dir, made)  # setup failed before anything was written
    table = Table(title="run finished", show_header=False)
    table.add_row("run directory", str(summary.run_dir))
    table.add_row(
        "eval accuracy",
        f"{summary.first_eval_accuracy:.3f} → {summary.last_eval_accuracy:.3f}",
    )
    table.add_row("wall time", f"{summary.seconds:.0f} s")
    table.add_row("final model", str(summary.run_dir / "final"))
    if cluster.is_main:
        table.add_row("plots", _plot(summary.run_dir))
    console.print(table)


def _plot(run_dir: Path) -> str:
    """RUN/summary.png of the finished run; a plot that fails is a warning, not a failed run."""
    from gspo_cli.commands.compare import RunProblem, write_run_plot

    try:
        return str(write_run_plot(run_dir))
    except (RunProblem, GspoError, OSError, ValueError) as exc:
        warn(f"the run is complete, but its plots failed ({exc}); try: gspo plot {run_dir}")
        return "none"


def _resume_point(run_dir: Path) -> Path:
    """The checkpoint to resume from; a run without one is the user's input (exit 2), and as a
    UserError every rank learns of it instead of waiting for rank 0."""
    from gspo_cli.base.errors import CheckpointError
    from gspo_cli.rundir.checkpoint import latest_checkpoint

    try:
        return latest_checkpoint(run_dir, warn)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None


def _on_rank_zero(cluster: Cluster, work: Callable[[], T]) -> T:
    """`work()` on rank 0, its result on every rank; a user error there fails every rank
    (rank 0 reports it) instead of leaving the others waiting."""
    from gspo_cli.base import distributed

    result: T | None = None
    problem: str | None = None
    if cluster.is_main:
        try:
            result = work()
        except UserError as exc:
            problem = str(exc)
            distributed.broadcast(cluster, (None, problem))
            raise
    result, problem = distributed.broadcast(cluster, (result, problem))
    if problem is not None:
        raise UserError(problem)
    return cast(T, result)


def _load_for_resume(run_dir: Path, recipe: Path | None, overrides: list[str] | None) -> Recipe:
    """The recipe to resume with, refused if it changes what the checkpoint depends on."""
    from gspo_cli.recipe import load_recipe, resume_changes
    from gspo_cli.rundir.paths import RECIPE_FILE

    saved_path = run_dir / RECIPE_FILE
    if not saved_path.is_file():
        raise UserError(
            f"{run_dir} is not a run directory (no {RECIPE_FILE}); give the directory that "
            "`gspo train` created"
        )
    saved = load_recipe(saved_path)
    loaded = load_recipe_with_warnings(recipe or saved_path, overrides)
    breaking, harmless = resume_changes(saved, loaded)
    if breaking:
        raise RecipeError(
            [f"{line} (cannot change when resuming; start a new run)" for line in breaking],
            f"resuming {run_dir}",
        )
    for line in harmless:
        warn(f"resuming with a changed setting: {line}")
    return loaded
