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
from rich.table import Table

from gspo_cli import __version__
from gspo_cli.cliparse import ListOptionsCommand, OneLineUsageGroup
from gspo_cli.errors import (
    GspoError,
    Interrupted,
    RecipeError,
    StorageError,
    UserError,
    WatchdogStop,
)
from gspo_cli.outputs import (
    abort_message,
    check_output_dir,
    compare_abort_message,
    first_missing,
    full_disk_message,
    remove_empty,
)
from gspo_cli.runfiles import EVALS_ROOT, RUNS_ROOT, SUMMARY_PNG, fresh_dir

if TYPE_CHECKING:
    from gspo_cli.compare import AlgoSummary, PlannedRun
    from gspo_cli.distributed import Cluster
    from gspo_cli.recipe import Recipe

T = TypeVar("T")

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
def _user_errors() -> Iterator[None]:
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
        if rank != "0" and not isinstance(exc, UserError | Interrupted | WatchdogStop):
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
    defaults only: a value already in the environment wins. Every command that calls this
    may fill the cache (the tiny model, prepared data), so a GSPO_CACHE that cannot be
    written is refused here, before any work.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    from gspo_cli.runfiles import cache_root

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    check_output_dir(cache_root(), "the cache", flag="GSPO_CACHE")


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
        text, timing = self._metrics(), self._timing()
        shown = f"{text}\n{timing}" if timing else text
        self.progress.update(self.task, completed=self.last.get("step", 0), metrics=shown)
        step = row["step"]
        if self.quiet and "eval_accuracy" not in row and step % self.log_every == 0:
            console.print(f"step {step}/{self.steps}  {text}  {timing}", highlight=False)
        for warning in row.get("warnings", []):  # printed in --quiet mode too
            self.progress.console.print(
                f"[yellow]warning:[/] step {step}, {warning['code']}: {escape(warning['message'])}",
                highlight=False,
            )

    def _metrics(self) -> str:
        if not self.last:
            return ""
        reward = sum(self.rewards) / len(self.rewards)
        acc = "-" if self.acc is None else f"{self.acc:.3f}"
        row = self.last
        return (
            f"reward {reward:.3f}  acc {acc}  clip {row['clip_frac']:.3f}  "
            f"zero_std {row['zero_std_frac']:.2f}  trunc {row['truncated_frac']:.2f}"
        )

    def _timing(self) -> str:
        """Seconds per phase of the last step, and its throughput."""
        if not self.last:
            return ""
        phases = [("sample", "sample_s"), ("score", "score_s"), ("π_old", "old_logprob_s")]
        parts = [f"{name} {self.last[key]:.2f}s" for name, key in phases]
        parts.append(f"update {self.last['update_s']:.2f}s")
        return "  ".join(parts) + f"  {self.last['tokens_per_s']:.0f} tok/s"

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
        if out is not None:
            check_output_dir(out, "the run directory")
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
    from gspo_cli.checkpoint import new_run_dir
    from gspo_cli.preflight import batch_plan

    estimated = _on_rank_zero(cluster, lambda: trainer.preflight(loaded, cluster.world_size))
    view = _TrainView(loaded.train.steps, quiet)
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
        view.progress.console.print(f"[cyan]{text}[/]", highlight=False)

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
    console.print(table)


def _resume_point(run_dir: Path) -> Path:
    """The checkpoint to resume from; a run without one is the user's input (exit 2), and as a
    UserError every rank learns of it instead of waiting for rank 0."""
    from gspo_cli.checkpoint import latest_checkpoint
    from gspo_cli.errors import CheckpointError

    try:
        return latest_checkpoint(run_dir, _warn)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None


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
    from gspo_cli.recipe import load_recipe, resume_changes
    from gspo_cli.runfiles import RECIPE_FILE

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


CheckNprocOpt = Annotated[
    int,
    typer.Option(
        "--nproc", min=1, help="Check the split over N processes, as `gspo train --nproc N`."
    ),
]


@app.command()
def check(recipe: RecipeArg = None, set_: SetOpt = None, nproc: CheckNprocOpt = 1) -> None:
    """Check a recipe without training: its batch arithmetic, two prompts exactly as the model
    sees them, and every reward on correct and malformed answers. Exit 0 when all is well, 2
    with every problem listed."""
    with _user_errors():
        loaded = _load(recipe, set_)
        source = f"recipe {recipe}" if recipe is not None else "the default recipe"
        from gspo_cli import preflight, rewards

        console.print(
            f"{source} is valid: {loaded.algo.mode}, model {loaded.model.name}, task "
            f"{loaded.data.task}, reward {rewards.label(loaded.reward_terms)}",
            highlight=False,
        )
        problems: list[str] = []
        _prepare_runtime()
        tokenizer, examples, longest = _check_data(loaded, problems)
        try:
            plan = preflight.batch_plan(loaded, nproc, longest)
        except RecipeError as exc:  # the prompts do not split over the processes
            problems += exc.problems
            plan = preflight.batch_plan(loaded, 1, longest)
        console.print(_batch_table(plan))
        if tokenizer is not None:  # else the model's problem is listed already
            _check_memory(loaded, nproc, problems)
        for i, example in enumerate(examples[:2] if tokenizer is not None else [], 1):
            _show_prompt(tokenizer, example, i)
        warnings = 0
        if examples:
            probe = preflight.probe_rewards(
                loaded.reward_terms, examples[: preflight.PROBE_EXAMPLES]
            )
            _show_probe(probe, rewards.label(loaded.reward_terms))
            problems += probe.problems
            warnings = len(probe.warnings)
        if problems:
            raise RecipeError(problems, f"gspo check: {source}")
        noted = f", {warnings} warning{'s' if warnings > 1 else ''} above" if warnings else ""
        console.print(f"[bold green]check passed:[/] no problems{noted}", highlight=False)


def _check_data(loaded: Recipe, problems: list[str]) -> tuple[Any, list[Any], int | None]:
    """(tokenizer, training examples, longest prompt in tokens), preparing the data when it
    is not yet. Without a tokenizer the rewards are still probed on the unprepared examples;
    each failure is added to `problems` and leaves its part out (None, [])."""
    from gspo_cli.data import locate_source, source_examples
    from gspo_cli.policy import check_model_source, load_tokenizer
    from gspo_cli.prepare import load_task
    from gspo_cli.resources import check_room, context_fit

    tokenizer = fit = None
    try:
        check_model_source(loaded.model.name)
        tokenizer = load_tokenizer(loaded.model.name, _announce)
        fit = context_fit(loaded.model.name, loaded.rollout.max_new_tokens)
        check_room(fit)
    except UserError as exc:
        problems.append(f"{exc} (so no prompt is shown)")
        tokenizer = None
    try:
        if tokenizer is None:
            return None, source_examples(loaded.data, locate_source(loaded.data))["train"], None
        prepared, splits = load_task(loaded.data, tokenizer, loaded.model.name, _announce, fit)
    except UserError as exc:
        problems.append(f"{exc} (so no reward is probed)")
        return tokenizer, [], None
    longest = prepared.counts()["train"].prompt_tokens_max
    return tokenizer, splits["train"], min(longest, fit.room) if fit is not None else longest


def _check_memory(loaded: Recipe, nproc: int, problems: list[str]) -> None:
    """Show the step's memory estimate, part by part; a problem when it does not fit."""
    from gspo_cli import resources

    try:
        estimated = resources.estimate_for(loaded, nproc)
    except UserError as exc:
        problems.append(f"{exc} (so no memory estimate)")
        return
    title = f"memory per process (rows of {estimated.row_tokens} tokens)"
    table = Table(title=title, show_header=False, title_justify="left", box=None)
    for part, size, phase in estimated.rows():
        table.add_row(part, size, phase)
    console.print(table)
    try:
        resources.require_memory(estimated)
    except UserError as exc:
        problems.append(str(exc))


def _batch_table(plan: Any) -> Table:  # a preflight.BatchPlan
    table = Table(title="batch arithmetic", show_header=False, title_justify="left", box=None)
    table.add_column(no_wrap=True)
    table.add_column(justify="right")
    table.add_column()
    epochs = f"{plan.epochs} epoch{'s' if plan.epochs > 1 else ''}"
    table.add_row("prompts per step", str(plan.prompts_per_step), "rollout.prompts_per_step")
    table.add_row(
        "completions per step",
        str(plan.completions_per_step),
        f"{plan.prompts_per_step} prompts × group size {plan.group_size}",
    )
    table.add_row(
        "responses per minibatch",
        str(plan.responses_per_minibatch),
        f"{plan.completions_per_step} completions / {plan.minibatches} minibatches",
    )
    table.add_row(
        "optimiser steps per rollout step",
        str(plan.optimizer_steps_per_step),
        f"{plan.minibatches} minibatches × {epochs}",
    )
    table.add_row(
        "optimiser steps in total",
        str(plan.optimizer_steps_total),
        f"{plan.steps} rollout steps × {plan.optimizer_steps_per_step}",
    )
    if plan.microbatches_per_minibatch is not None:
        budget = (
            f"{plan.microbatch_tokens} tokens / ≤ {plan.row_tokens} per row = "
            f"{plan.rows_per_microbatch} rows"
            if plan.microbatch_tokens
            else "microbatch_tokens 0: no split"
        )
        table.add_row("micro-batches per minibatch", f"≤ {plan.microbatches_per_minibatch}", budget)
    if plan.nproc > 1:
        table.add_row(
            "prompts per process",
            str(plan.prompts_per_rank),
            f"{plan.prompts_per_step} prompts / {plan.nproc} processes",
        )
        table.add_row(
            "completions per process",
            str(plan.completions_per_rank),
            f"{plan.prompts_per_rank} prompts × group size {plan.group_size}",
        )
    return table


def _show_prompt(tokenizer: Any, example: Any, index: int) -> None:
    """One prepared prompt exactly as the model sees it, each line behind a bar."""
    from gspo_cli.data import render_prompt
    from gspo_cli.rewards import shown

    text = render_prompt(tokenizer, example.prompt)
    tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    console.print(
        f"prompt {index}, exactly as the model sees it ({tokens} tokens; reference "
        f"{shown(example.reference, 200)}):",
        highlight=False,
        markup=False,
    )
    for line in _cut(text).split("\n"):
        console.print(f"│ {line}", highlight=False, markup=False)


def _cut(text: str, keep: int = 1000) -> str:
    """`text`, or its first and last `keep` characters around a note of how many were cut.

    >>> _cut("abcdefgh", keep=2)
    'ab\\n… 4 characters cut …\\ngh'
    """
    if len(text) <= 2 * keep:
        return text
    return f"{text[:keep]}\n… {len(text) - 2 * keep} characters cut …\n{text[-keep:]}"


def _span(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:g}" if low == high else f"{low:g} to {high:g}"


def _show_probe(probe: Any, label: str) -> None:  # a preflight.RewardProbe
    if probe.correct and probe.malformed:
        console.print(
            f"reward {label} on {probe.examples} prepared examples: correct answers score "
            f"{_span(probe.correct)}, {len(probe.malformed)} malformed completions "
            f"{_span(probe.malformed)}",
            highlight=False,
            markup=False,
        )
    for note in probe.warnings:
        _warn(note)


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
        from gspo_cli.runfiles import EVAL_FILE, SAMPLES_FILE

        target = resolve_target(path)
        recipe_file = recipe or target.recipe_file
        overrides = [*(set_ or []), *([f"data.source={data}"] if data else [])]
        loaded = load_recipe(recipe_file, overrides)
        out_dir = out or target.run_dir or fresh_dir(EVALS_ROOT, Path(target.model).name)
        check_output_dir(
            out_dir, "eval.json and samples.jsonl into", files=(EVAL_FILE, SAMPLES_FILE)
        )
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


@app.command(cls=ListOptionsCommand)
def compare(
    targets: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="[RECIPE | RUN_DIR...]",
            help="A recipe YAML to run per algorithm and seed (omit it for the embedded "
            "default), or finished run directories (or a comparison directory) to compare "
            "without training.",
            show_default=False,
        ),
    ] = None,
    algos: Annotated[
        list[str] | None,
        typer.Option(
            "--algos", help="Algorithms to run: --algos gspo grpo (default).", show_default=False
        ),
    ] = None,
    seeds: Annotated[
        list[int] | None,
        typer.Option("--seeds", help="Seeds per algorithm: --seeds 0 1 2 (default 0).", min=0),
    ] = None,
    set_: SetOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Comparison directory (default: runs/compare-<name>-<time>). Give an "
            "existing one to resume: finished runs are reused.",
        ),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Run GSPO vs GRPO (per seed) and compare: a table, report.md and PNG plots."""
    with _user_errors():
        from gspo_cli import compare as comparing

        paths = list(targets or [])
        if _are_run_dirs(paths):
            if algos or seeds or set_:
                raise UserError(
                    "--algos, --seeds and --set choose runs to train; with run directories "
                    "nothing is trained, so leave them out (or give a recipe instead)"
                )
            run_dirs = comparing.expand_targets(paths)
            single = len(paths) == 1 and run_dirs != paths
            out_dir = out or (paths[0] if single else fresh_dir(RUNS_ROOT, "compare"))
            command = "gspo compare " + " ".join(map(str, paths))
            _check_report_place(out_dir)
        else:
            if len(paths) > 1:
                raise UserError(
                    f"give one recipe, or run directories to compare; got {len(paths)} "
                    "arguments that are not all run directories"
                )
            recipe = paths[0] if paths else None
            run_dirs, out_dir, command = _run_comparison(
                recipe, algos or ["gspo", "grpo"], seeds or [0], set_ or [], out, quiet
            )
        runs, problems = comparing.load_runs(run_dirs)
        for problem in problems:
            _warn(problem)
        if not runs:
            raise UserError("no finished run to compare (see the warnings above)")
        groups = comparing.aggregate(runs)
        plots = comparing.write_plots(out_dir, groups)
        report = comparing.write_report(
            out_dir, comparing.report_markdown(groups, command, problems, plots)
        )
        console.print(_comparison_table(groups))
        console.print(comparing.headline(groups), highlight=False)
        console.print(f"report {report}, plots {out_dir / SUMMARY_PNG}", highlight=False)


def _check_report_place(out_dir: Path) -> None:
    from gspo_cli.runfiles import REPORT_FILE

    check_output_dir(out_dir, "the comparison into", files=(REPORT_FILE, SUMMARY_PNG))


def _are_run_dirs(paths: list[Path]) -> bool:
    """Run-directory mode: any argument is a directory, or there are several arguments."""
    return len(paths) > 1 or any(p.is_dir() for p in paths)


def _comparison_table(groups: list[AlgoSummary]) -> Table:
    from gspo_cli import compare as comparing

    table = Table(title="GSPO / GRPO comparison (mean ± std over seeds)")
    table.add_column("algorithm", no_wrap=True)
    table.add_column("seeds", overflow="fold")
    shown = comparing.columns(groups)
    rows = [[comparing.format_stat(g.stats[k], k) for k in shown] for g in groups]
    for i, title in enumerate(shown.values()):
        # A number is never cut to "0.00…" in a narrow terminal: a column is at least as wide
        # as its longest number (headers and "± spread" wrap instead), and folds past that.
        widest = max((len(word) for row in rows for word in row[i].split()), default=1)
        table.add_column(title, justify="right", min_width=widest, overflow="fold")
    for g, cells in zip(groups, rows, strict=True):
        table.add_row(g.label, ", ".join(map(str, g.seeds)), *cells)
    return table


def _run_comparison(
    recipe: Path | None,
    algos: list[str],
    seeds: list[int],
    sets: list[str],
    out: Path | None,
    quiet: bool,
) -> tuple[list[Path], Path, str]:
    """Train (or reuse, or resume) one run per algorithm and seed; return their dirs, the
    comparison directory and the command that resumes it."""
    from gspo_cli import compare as comparing
    from gspo_cli.recipe import read_yaml, warnings_for

    raw = read_yaml(recipe) if recipe is not None else {}
    source = str(recipe) if recipe is not None else "default recipe"
    name = str(raw.get("name", "run"))
    out_dir = out or fresh_dir(RUNS_ROOT, f"compare-{name}")
    planned, notes = comparing.plan_runs(raw, algos, seeds, sets, out_dir, source)
    _check_report_place(out_dir)
    for note in dict.fromkeys([*notes, *(w for p in planned for w in warnings_for(p.recipe))]):
        _warn(note)
    _prepare_runtime()
    from gspo_cli import train as trainer

    for p in planned:
        trainer.preflight(p.recipe)
    command = " ".join(
        ["gspo compare", *([str(recipe)] if recipe else []), "--algos", *dict.fromkeys(algos)]
        + ["--seeds", *map(str, dict.fromkeys(seeds))]
        + [f"--set {s}" for s in sets]
        + ["--out", str(out_dir)]
    )
    made = first_missing(out_dir)
    try:
        for i, p in enumerate(planned, start=1):
            _train_one(p, f"{i}/{len(planned)}", command, quiet)
    finally:  # a run that failed in its setup leaves no empty directories behind
        for p in planned:
            remove_empty(p.run_dir, made or p.run_dir)
    return [p.run_dir for p in planned], out_dir, command


def _train_one(planned: PlannedRun, label: str, command: str, quiet: bool) -> None:
    """One run of a comparison: reused when finished, resumed or restarted when not."""
    from gspo_cli import compare as comparing
    from gspo_cli import train as trainer
    from gspo_cli.checkpoint import complete_checkpoints, new_run_dir

    recipe, run_dir = planned.recipe, planned.run_dir
    state = comparing.run_state(run_dir, recipe.train.steps)
    header = f"run {label} [bold]{planned.algo}[/] seed {planned.seed} → {run_dir}"
    checkpoints = complete_checkpoints(run_dir) if state == "unfinished" else []
    if state == "finished" or checkpoints:
        _check_same_recipe(run_dir, recipe, finished=state == "finished")
    if state == "finished":
        console.print(f"{header}: already finished, reused", highlight=False)
        return
    resume_from = checkpoints[-1] if checkpoints else None
    if resume_from is not None:
        console.print(f"{header}: resuming from {resume_from.name}", highlight=False)
    else:
        if state == "unfinished":
            comparing.clear_unfinished(run_dir)
            console.print(f"{header}: no complete checkpoint, restarting", highlight=False)
        else:
            console.print(header, highlight=False)
        new_run_dir(run_dir, recipe.name)
    view = _TrainView(recipe.train.steps, quiet)

    def announce(text: str) -> None:
        view.progress.console.print(f"[cyan]{text}[/]", highlight=False)

    try:
        with view.progress:
            trainer.run(recipe, run_dir, view.on_row, announce=announce, resume_from=resume_from)
    except Interrupted as exc:
        raise Interrupted(
            f"{exc}".split("; checkpoint saved")[0]
            + f"; checkpoint saved. Resume the comparison with: {command}",
            "SIGTERM" if exc.exit_code == 143 else "SIGINT",
        ) from None
    except KeyboardInterrupt:
        raise GspoError(compare_abort_message(run_dir.parent, command)) from None


def _check_same_recipe(run_dir: Path, recipe: Recipe, finished: bool) -> None:
    """A run found in the comparison directory must have been trained with this recipe."""
    from gspo_cli.recipe import load_recipe, resume_changes
    from gspo_cli.runfiles import RECIPE_FILE

    if not (run_dir / RECIPE_FILE).is_file():
        return
    breaking, harmless = resume_changes(load_recipe(run_dir / RECIPE_FILE), recipe)
    differences = breaking + harmless if finished else breaking
    if differences:
        raise UserError(
            f"{run_dir} was trained with another recipe ({'; '.join(differences)}); give the "
            "same settings to reuse it, or a new --out directory"
        )
    for line in harmless:
        _warn(f"resuming {run_dir} with a changed setting: {line}")
