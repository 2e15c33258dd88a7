"""`gspo check`: validate a recipe and show what a step will do (batch arithmetic, the
memory estimate, two prompts as the model sees them, every reward probed) without a model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.core
from rich.table import Table

from gspo_cli.base.errors import (
    RecipeError,
    UserError,
)

if TYPE_CHECKING:
    from gspo_cli.recipe import Recipe

from gspo_cli.cli.base import (
    RecipeArg,
    SetOpt,
    announce,
    app,
    console,
    load_recipe_with_warnings,
    prepare_runtime,
    user_errors,
    warn,
)

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
    with user_errors():
        loaded = load_recipe_with_warnings(recipe, set_)
        source = f"recipe {recipe}" if recipe is not None else "the default recipe"
        from gspo_cli import rewards
        from gspo_cli.commands import preflight
        from gspo_cli.commands import reward_probes as probes

        console.print(
            f"{source} is valid: {loaded.algo.mode}, model {loaded.model.name}, task "
            f"{loaded.data.task}, reward {rewards.label(loaded.reward_terms)}",
            highlight=False,
        )
        problems: list[str] = preflight.tracker_problems(loaded)
        prepare_runtime()
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
            probe = probes.probe_rewards(loaded.reward_terms, examples[: probes.PROBE_EXAMPLES])
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
    from gspo_cli.commands.prepare import load_task
    from gspo_cli.commands.resources import check_room, context_fit
    from gspo_cli.data import locate_source, source_examples
    from gspo_cli.models.loading import check_model_source, load_tokenizer

    tokenizer = fit = None
    try:
        check_model_source(loaded.model.name)
        tokenizer = load_tokenizer(loaded.model.name, announce)
        fit = context_fit(loaded.model.name, loaded.rollout.max_new_tokens)
        check_room(fit)
    except UserError as exc:
        problems.append(f"{exc} (so no prompt is shown)")
        tokenizer = None
    try:
        if tokenizer is None:
            return None, source_examples(loaded.data, locate_source(loaded.data))["train"], None
        prepared, splits = load_task(loaded.data, tokenizer, loaded.model.name, announce, fit)
    except UserError as exc:
        problems.append(f"{exc} (so no reward is probed)")
        return tokenizer, [], None
    longest = prepared.counts()["train"].prompt_tokens_max
    return tokenizer, splits["train"], min(longest, fit.room) if fit is not None else longest


def _check_memory(loaded: Recipe, nproc: int, problems: list[str]) -> None:
    """Show the step's memory estimate, part by part; a problem when it does not fit."""
    from gspo_cli.commands import resources

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


def _show_probe(probe: Any, label: str) -> None:  # a commands.reward_probes.RewardProbe
    if probe.correct and probe.malformed:
        console.print(
            f"reward {label} on {probe.examples} prepared examples: correct answers score "
            f"{_span(probe.correct)}, {len(probe.malformed)} malformed completions "
            f"{_span(probe.malformed)}",
            highlight=False,
            markup=False,
        )
    for note in probe.warnings:
        warn(note)
