"""`gspo compare`: train a recipe per algorithm and seed (reusing, resuming or restarting
runs), or compare finished runs, then write the report and plots and print the table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, get_args

import typer
import typer.core
from rich.markup import escape
from rich.table import Table

from gspo_cli.base.constants import Mode
from gspo_cli.base.errors import (
    GspoError,
    Interrupted,
    UserError,
)
from gspo_cli.cli.listparse import ListOptionsCommand
from gspo_cli.cli.outputs import (
    check_output_dir,
    compare_abort_message,
    first_missing,
    remove_empty,
)
from gspo_cli.rundir.paths import RUNS_ROOT, SUMMARY_PNG, fresh_dir

if TYPE_CHECKING:
    from gspo_cli.commands.compare import AlgoSummary, PlannedRun
    from gspo_cli.recipe import Recipe

from gspo_cli.cli.base import QuietOpt, SetOpt, app, console, prepare_runtime, user_errors, warn
from gspo_cli.cli.view import TrainView

TargetsArg = Annotated[
    list[Path] | None,
    typer.Argument(
        metavar="[RECIPE | RUN_DIR...]",
        help="A recipe YAML to run per algorithm and seed (omit it for the embedded "
        "default), or finished run directories (or a comparison directory) to compare "
        "without training.",
        show_default=False,
    ),
]
AlgosOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--algos",
        help=f"Algorithms to run: --algos gspo grpo (default); any of {', '.join(get_args(Mode))}.",
        show_default=False,
    ),
]
SeedsOpt = Annotated[
    list[int] | None,
    typer.Option("--seeds", help="Seeds per algorithm: --seeds 0 1 2 (default 0).", min=0),
]
CompareOutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out",
        help="Comparison directory (default: runs/compare-<name>-<time>). Give an "
        "existing one to resume: finished runs are reused.",
    ),
]


@app.command(cls=ListOptionsCommand)
def compare(
    targets: TargetsArg = None,
    algos: AlgosOpt = None,
    seeds: SeedsOpt = None,
    set_: SetOpt = None,
    out: CompareOutOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Run GSPO vs GRPO or its variants (per seed) and compare: a table, report.md and PNG
    plots."""
    with user_errors():
        from gspo_cli.commands import compare as comparing

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
            warn(problem)
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
    from gspo_cli.rundir.paths import REPORT_FILE

    check_output_dir(out_dir, "the comparison into", files=(REPORT_FILE, SUMMARY_PNG))


def _are_run_dirs(paths: list[Path]) -> bool:
    """Run-directory mode: any argument is a directory, or there are several arguments."""
    return len(paths) > 1 or any(p.is_dir() for p in paths)


def _comparison_table(groups: list[AlgoSummary]) -> Table:
    from gspo_cli.commands import compare as comparing

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
    from gspo_cli.commands import compare as comparing
    from gspo_cli.recipe import read_yaml, warnings_for

    raw = read_yaml(recipe) if recipe is not None else {}
    source = str(recipe) if recipe is not None else "default recipe"
    name = str(raw.get("name", "run"))
    out_dir = out or fresh_dir(RUNS_ROOT, f"compare-{name}")
    planned, notes = comparing.plan_runs(raw, algos, seeds, sets, out_dir, source)
    _check_report_place(out_dir)
    for note in dict.fromkeys([*notes, *(w for p in planned for w in warnings_for(p.recipe))]):
        warn(note)
    prepare_runtime()
    from gspo_cli.commands import train as trainer

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
    from gspo_cli.commands import compare as comparing
    from gspo_cli.commands import train as trainer
    from gspo_cli.rundir.checkpoint import complete_checkpoints, new_run_dir

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
    view = TrainView(recipe.train.steps, quiet)

    def announce(text: str) -> None:
        view.progress.console.print(f"[cyan]{escape(text)}[/]", highlight=False)

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
    from gspo_cli.rundir.paths import RECIPE_FILE

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
        warn(f"resuming {run_dir} with a changed setting: {line}")
