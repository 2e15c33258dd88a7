"""`gspo prepare`: render the recipe's dataset for its tokenizer into the cache."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.core
from rich.table import Table

if TYPE_CHECKING:
    pass

from gspo_cli.cli.base import (
    QuietOpt,
    RecipeArg,
    SetOpt,
    announce,
    app,
    console,
    load_recipe_with_warnings,
    prepare_runtime,
    progress_bar,
    user_errors,
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
    with user_errors():
        loaded = load_recipe_with_warnings(recipe, set_)
        prepare_runtime()
        from gspo_cli.commands import prepare as preparing
        from gspo_cli.models.loading import load_tokenizer

        tokenizer = load_tokenizer(loaded.model.name, announce)
        bar = progress_bar("prepare", quiet)
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
                announce=announce,
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
