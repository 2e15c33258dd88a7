"""`gspo eval`: greedy pass@1 (and pass@k, maj@N) of a run, checkpoint, model or hub id."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.core
from rich.table import Table

from gspo_cli.cli.outputs import (
    check_output_dir,
)
from gspo_cli.rundir.paths import EVALS_ROOT, fresh_dir

if TYPE_CHECKING:
    pass

from gspo_cli.cli.base import (
    QuietOpt,
    SetOpt,
    announce,
    app,
    console,
    prepare_runtime,
    progress_bar,
    user_errors,
)

PathArg = Annotated[
    str,
    typer.Argument(
        help="A run directory (its final/ model), a checkpoint directory, a model "
        "directory or a hub id.",
        show_default=False,
    ),
]
EvalRecipeOpt = Annotated[
    Path | None,
    typer.Option(
        "--recipe",
        help="Recipe whose data, reward and decoding settings to use (default: the run's "
        "recipe.yaml, else the embedded default).",
    ),
]
DataOpt = Annotated[
    str | None,
    typer.Option("--data", help="Dataset to evaluate on: same as --set data.source=..."),
]
SamplesOpt = Annotated[
    int,
    typer.Option(
        "--samples", min=0, help="Also sample N completions per prompt: pass@k and maj@N."
    ),
]
LimitOpt = Annotated[
    int | None,
    typer.Option(
        "--limit", min=1, help="Evaluate the first N test examples (default: data.eval_size)."
    ),
]
EvalOutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out",
        help="Where eval.json and samples.jsonl go (default: the run directory, "
        "else evals/<name>-<time>).",
    ),
]


@app.command(name="eval")
def eval_(
    path: PathArg,
    recipe: EvalRecipeOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    samples: SamplesOpt = 0,
    limit: LimitOpt = None,
    out: EvalOutOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Evaluate a model: greedy pass@1, and with --samples pass@k and maj@N."""
    with user_errors():
        from gspo_cli.commands.evaluate import resolve_target
        from gspo_cli.recipe import load_recipe
        from gspo_cli.rundir.paths import EVAL_FILE, SAMPLES_FILE

        target = resolve_target(path)
        recipe_file = recipe or target.recipe_file
        overrides = [*(set_ or []), *([f"data.source={data}"] if data else [])]
        loaded = load_recipe(recipe_file, overrides)
        out_dir = out or target.run_dir or fresh_dir(EVALS_ROOT, Path(target.model).name)
        check_output_dir(
            out_dir, "eval.json and samples.jsonl into", files=(EVAL_FILE, SAMPLES_FILE)
        )
        prepare_runtime()
        from gspo_cli.commands import evaluate

        bar = progress_bar("eval", quiet)
        task = bar.add_task("completions", total=None)
        with bar:
            report = evaluate.run(
                loaded,
                target,
                out_dir,
                samples=samples,
                limit=limit,
                recipe_source=str(recipe_file) if recipe_file else "default recipe",
                announce=announce,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        console.print(_report_table(target.model, report))


def _report_table(model: str, report: Any) -> Table:  # an evaluate.EvalReport
    table = Table(title=f"eval {model}", show_header=False)
    for name, value in report.scores.items():
        table.add_row(name, f"{value:.4f}")
    table.add_row("examples", str(report.examples))
    table.add_row("wall time", f"{report.seconds:.1f} s")
    table.add_row("written", f"{report.eval_file}, {report.samples_file.name}")
    return table
