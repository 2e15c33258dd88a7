"""The `gspo` command line: parse, load the recipe, call one core function, render.

This is the only module that turns a `GspoError` into an exit code (2 for a user's
mistake, 1 for a runtime failure) and the only one that prints with Rich. Heavy imports
(torch, transformers) happen inside commands so `gspo --help` stays fast.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from gspo_cli import __version__
from gspo_cli.errors import GspoError, Interrupted, RecipeError, UserError

if TYPE_CHECKING:
    from gspo_cli.distributed import Cluster
    from gspo_cli.recipe import Recipe

T = TypeVar("T")

app = typer.Typer(
    name="gspo",
    help="Reinforcement-learning fine-tuning of language models with GSPO (GRPO as an ablation).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
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
def _user_errors() -> Iterator[None]:
    """The one error boundary: a GspoError becomes one red line and its exit code."""
    try:
        yield
    except GspoError as exc:
        label = (
            "[bold yellow]interrupted:[/]"
            if isinstance(exc, Interrupted)
            else "[bold red]error:[/]"
        )
        rank = os.environ.get("RANK", "0")
        if rank != "0" and not isinstance(exc, UserError | Interrupted):
            # A runtime failure on one rank (e.g. a reward raising on its prompts): only it
            # knows; every rank shares the user errors and interruptions rank 0 reports.
            label = f"rank {rank}: {label}"
            Console(stderr=True, soft_wrap=True).print(f"{label} {exc}", highlight=False)
        err_console.print(f"{label} {exc}", highlight=False)
        raise typer.Exit(exc.exit_code) from None


def _prepare_runtime() -> None:
    """Settings that must precede the first torch import, then quiet transformers' chatter.

    OpenMP's default busy-wait makes a CPU run many times slower whenever another process
    shares the cores; passive waiting costs nothing measurable when it does not. Both are
    defaults only: a value already in the environment wins.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _load(recipe: Path | None, overrides: list[str] | None) -> Recipe:
    from gspo_cli.recipe import load_recipe, warnings_for

    loaded = load_recipe(recipe, overrides or [])
    for note in warnings_for(loaded):
        _warn(note)
    return loaded


class _TrainView:
    """Live terminal view of a run: a progress bar with ETA and the key metrics."""

    def __init__(self, steps: int, quiet: bool) -> None:
        self.quiet = quiet
        self.steps = steps
        self.rewards: deque[float] = deque(maxlen=20)
        self.first_acc: float | None = None
        self.acc: float | None = None
        self.last: dict[str, Any] = {}
        self.log_every = max(1, steps // 20)
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[metrics]}"),
            console=console,
            disable=quiet,
        )
        self.task = self.progress.add_task("train", total=steps, metrics="")

    def on_row(self, row: dict[str, Any]) -> None:
        if "eval_accuracy" in row:
            self._on_eval(row)
        else:
            self.rewards.append(row["reward_mean"])
            self.last = row
        text = self._metrics()
        self.progress.update(self.task, completed=self.last.get("step", 0), metrics=text)
        step = row["step"]
        if self.quiet and "eval_accuracy" not in row and step % self.log_every == 0:
            console.print(f"step {step}/{self.steps}  {text}", highlight=False)

    def _metrics(self) -> str:
        if not self.last:
            return ""
        reward = sum(self.rewards) / len(self.rewards)
        acc = "-" if self.acc is None else f"{self.acc:.3f}"
        row = self.last
        return (
            f"reward {reward:.3f}  acc {acc}  clip {row['clip_frac']:.3f}  "
            f"zero_std {row['zero_std_frac']:.2f}  {row['tokens_per_s']:.0f} tok/s"
        )

    def _on_eval(self, row: dict[str, Any]) -> None:
        self.acc = row["eval_accuracy"]
        if self.first_acc is None:
            self.first_acc = self.acc
        change = f"  ({self.acc - self.first_acc:+.3f} since start)" if row["step"] else ""
        self.progress.console.print(
            f"step {row['step']:>5}  eval_accuracy {self.acc:.3f}{change}", highlight=False
        )


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
    with _user_errors():
        if resume is not None and out is not None:
            raise UserError("--out and --resume exclude each other: --resume writes into RUN_DIR")
        loaded = _load(recipe, set_) if resume is None else _load_for_resume(resume, recipe, set_)
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
        _prepare_runtime()
        from gspo_cli import distributed

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
    from gspo_cli import train as trainer
    from gspo_cli.checkpoint import latest_checkpoint, new_run_dir

    trainer.preflight(loaded)
    view = _TrainView(loaded.train.steps, quiet)
    if resume is None:
        run_dir = _on_rank_zero(cluster, lambda: new_run_dir(out, loaded.name))
        checkpoint = None
    else:
        run_dir = resume
        checkpoint = _on_rank_zero(cluster, lambda: latest_checkpoint(resume, _warn))
    processes = f" on {cluster.world_size} processes" if cluster.is_distributed else ""
    console.print(
        f"run [bold]{run_dir}[/]: {loaded.algo.mode}, model {loaded.model.name}, "
        f"{loaded.train.steps} steps × {loaded.completions_per_step} completions{processes}",
        highlight=False,
    )

    def announce(text: str) -> None:
        view.progress.console.print(f"[cyan]{text}[/]", highlight=False)

    dump = os.environ.get("GSPO_DEBUG_DUMP")
    try:
        with view.progress:
            summary = trainer.run(
                loaded,
                run_dir,
                view.on_row,
                announce=announce,
                resume_from=checkpoint,
                cluster=cluster,
                debug_dump=Path(dump) if dump else None,
            )
    except KeyboardInterrupt:
        raise GspoError(
            f"aborted by a second interrupt; the last complete checkpoint is intact. "
            f"Resume with: gspo train --resume {run_dir}"
        ) from None
    finally:
        if resume is None and cluster.is_main and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # setup failed before anything was written
    table = Table(title="run finished", show_header=False)
    table.add_row("run directory", str(summary.run_dir))
    table.add_row(
        "eval accuracy",
        f"{summary.first_eval_accuracy:.3f} → {summary.last_eval_accuracy:.3f}",
    )
    table.add_row("wall time", f"{summary.seconds:.0f} s")
    table.add_row("final model", str(summary.run_dir / "final"))
    console.print(table)


def _on_rank_zero(cluster: Cluster, work: Callable[[], T]) -> T:
    """`work()` on rank 0, its result on every rank; a user error there fails every rank
    (rank 0 reports it) instead of leaving the others waiting."""
    from gspo_cli import distributed

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


def _warn(text: str) -> None:
    err_console.print(f"[yellow]warning:[/] {text}", highlight=False)


def _load_for_resume(run_dir: Path, recipe: Path | None, overrides: list[str] | None) -> Recipe:
    """The recipe to resume with, refused if it changes what the checkpoint depends on."""
    from gspo_cli.checkpoint import RECIPE_FILE
    from gspo_cli.recipe import load_recipe, resume_changes

    saved_path = run_dir / RECIPE_FILE
    if not saved_path.is_file():
        raise UserError(
            f"{run_dir} is not a run directory (no {RECIPE_FILE}); give the directory that "
            "`gspo train` created"
        )
    saved = load_recipe(saved_path)
    loaded = _load(recipe or saved_path, overrides)
    breaking, harmless = resume_changes(saved, loaded)
    if breaking:
        raise RecipeError(
            [f"{line} (cannot change when resuming; start a new run)" for line in breaking],
            f"resuming {run_dir}",
        )
    for line in harmless:
        _warn(f"resuming with a changed setting: {line}")
    return loaded


def _not_yet(command: str, issue: str) -> None:
    err_console.print(
        f"[bold red]error:[/] `gspo {command}` is not yet available in this version ({issue}); "
        "`gspo train` is.",
        highlight=False,
    )
    raise typer.Exit(1)


_ANY_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command(context_settings=_ANY_ARGS)
def prepare() -> None:
    """(Not yet available) Turn a recipe's dataset into prompts."""
    _not_yet("prepare", "real datasets arrive with the prepare/eval work")


@app.command(name="eval", context_settings=_ANY_ARGS)
def eval_() -> None:
    """(Not yet available) Evaluate a checkpoint with pass@k."""
    _not_yet("eval", "pass@k evaluation arrives with the prepare/eval work")


@app.command(context_settings=_ANY_ARGS)
def compare() -> None:
    """(Not yet available) Run and plot GSPO vs GRPO ablations."""
    _not_yet("compare", "ablations arrive with the compare work")
