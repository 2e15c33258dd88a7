"""The `gspo` command line: parse, load the recipe, call one core function, render.

This is the only module that turns a `GspoError` into an exit code (2 for a user's
mistake, 1 for a runtime failure) and the only one that prints with Rich. Heavy imports
(torch, transformers) happen inside commands so `gspo --help` stays fast.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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
    from gspo_cli.recipe import Recipe

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
) -> None:
    """Train a policy with GSPO or GRPO as the recipe says; writes a run directory."""
    with _user_errors():
        if resume is not None and out is not None:
            raise UserError("--out and --resume exclude each other: --resume writes into RUN_DIR")
        loaded = _load(recipe, set_) if resume is None else _load_for_resume(resume, recipe, set_)
        _prepare_runtime()
        from gspo_cli import train as trainer
        from gspo_cli.checkpoint import latest_checkpoint, new_run_dir

        trainer.preflight(loaded)
        view = _TrainView(loaded.train.steps, quiet)
        if resume is None:
            run_dir, checkpoint = new_run_dir(out, loaded.name), None
        else:
            run_dir, checkpoint = resume, latest_checkpoint(resume, _warn)
        console.print(
            f"run [bold]{run_dir}[/]: {loaded.algo.mode}, model {loaded.model.name}, "
            f"{loaded.train.steps} steps × {loaded.completions_per_step} completions",
            highlight=False,
        )

        def announce(text: str) -> None:
            view.progress.console.print(f"[cyan]{text}[/]", highlight=False)

        try:
            with view.progress:
                summary = trainer.run(
                    loaded, run_dir, view.on_row, announce=announce, resume_from=checkpoint
                )
        except KeyboardInterrupt:
            raise GspoError(
                f"aborted by a second interrupt; the last complete checkpoint is intact. "
                f"Resume with: gspo train --resume {run_dir}"
            ) from None
        finally:
            if resume is None and run_dir.is_dir() and not any(run_dir.iterdir()):
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


def _announce(text: str) -> None:
    console.print(f"[cyan]{text}[/]", highlight=False)


def _bar(label: str, quiet: bool) -> Progress:
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


@app.command(name="prepare")
def prepare_(
    recipe: RecipeArg = None,
    set_: SetOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Rebuild even if this data is already prepared.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Turn the recipe's dataset into prompts for its model's tokenizer (train and test)."""
    with _user_errors():
        loaded = _load(recipe, set_)
        _prepare_runtime()
        from gspo_cli import prepare as preparing
        from gspo_cli.policy import load_tokenizer

        tokenizer = load_tokenizer(loaded.model.name, _announce)
        bar = _bar("prepare", quiet)
        tasks: dict[str, Any] = {}

        def progress(split: str, done: int, total: int) -> None:
            if split not in tasks:
                tasks[split] = bar.add_task(split, total=total)
            bar.update(tasks[split], completed=done)

        with bar:
            result = preparing.prepare(
                loaded.data,
                tokenizer,
                model_name=loaded.model.name,
                force=force,
                announce=_announce,
                progress=progress,
            )
        if result.status == "reused":
            console.print(
                f"already prepared: {result.directory} holds this recipe's data for this "
                "tokenizer; nothing to do (--force rebuilds it)",
                highlight=False,
            )
        console.print(_prepared_table(result))


def _prepared_table(result: Any) -> Table:
    manifest = result.manifest
    table = Table(title=f"{manifest['task']} data, {manifest['source']}")
    for column in ("split", "from", "examples", "kept", "dropped", "prompt tokens max / mean"):
        table.add_column(column, justify="left" if column in ("split", "from") else "right")
    for split, c in result.counts().items():
        tokens = f"{c.prompt_tokens_max} / {c.prompt_tokens_mean:.0f}"
        table.add_row(split, c.source_split, str(c.rows), str(c.kept), str(c.dropped), tokens)
    limit = manifest["recipe"]["data"]["max_prompt_tokens"]
    table.caption = (
        f"{result.directory}\ncontent {manifest['content_hash'][:16]}, "
        f"limit {limit or 'none'}, chat template {'yes' if manifest['chat_template'] else 'no'}, "
        f"built in {manifest['seconds']:.1f} s"
    )
    return table


@app.command(name="eval")
def eval_(
    path: Annotated[
        str,
        typer.Argument(
            help="A run directory (its final/ model), a checkpoint directory, a model "
            "directory or a hub id.",
            show_default=False,
        ),
    ],
    recipe: Annotated[
        Path | None,
        typer.Option(
            "--recipe",
            help="Recipe whose data, reward and decoding settings to use (default: the run's "
            "recipe.yaml, else the embedded default).",
        ),
    ] = None,
    set_: SetOpt = None,
    data: Annotated[
        str | None,
        typer.Option("--data", help="Dataset to evaluate on: same as --set data.source=..."),
    ] = None,
    samples: Annotated[
        int,
        typer.Option(
            "--samples", min=0, help="Also sample N completions per prompt: pass@k and maj@N."
        ),
    ] = 0,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", min=1, help="Evaluate the first N test examples (default: data.eval_size)."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Where eval.json and samples.jsonl go (default: the run directory, "
            "else evals/<name>-<time>).",
        ),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Evaluate a model: greedy pass@1, and with --samples pass@k and maj@N."""
    with _user_errors():
        from gspo_cli.evaluate import resolve_target
        from gspo_cli.recipe import load_recipe

        target = resolve_target(path)
        recipe_file = recipe or target.recipe_file
        overrides = [*(set_ or []), *([f"data.source={data}"] if data else [])]
        loaded = load_recipe(recipe_file, overrides)
        out_dir = out or target.run_dir or _fresh_dir(Path("evals"), Path(target.model).name)
        _prepare_runtime()
        from gspo_cli import evaluate

        bar = _bar("eval", quiet)
        task = bar.add_task("completions", total=None)
        with bar:
            report = evaluate.run(
                loaded,
                target,
                out_dir,
                samples=samples,
                limit=limit,
                recipe_source=str(recipe_file) if recipe_file else "default recipe",
                announce=_announce,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        table = Table(title=f"eval {target.model}", show_header=False)
        for name, value in report.scores.items():
            table.add_row(name, f"{value:.4f}")
        table.add_row("examples", str(report.examples))
        table.add_row("wall time", f"{report.seconds:.1f} s")
        table.add_row("written", f"{report.eval_file}, {report.samples_file.name}")
        console.print(table)


def _fresh_dir(root: Path, name: str) -> Path:
    """`root/<name>-<time>`, not yet existing."""
    from datetime import datetime

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate, suffix = root / f"{name}-{stamp}", 1
    while candidate.exists():
        suffix += 1
        candidate = root / f"{name}-{stamp}-{suffix}"
    return candidate


@app.command(context_settings=_ANY_ARGS)
def compare() -> None:
    """(Not yet available) Run and plot GSPO vs GRPO ablations."""
    _not_yet("compare", "ablations arrive with the compare work")
