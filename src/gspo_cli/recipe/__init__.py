"""The recipe: one typed, validated, immutable object, and the only home of defaults.

A YAML file (or nothing, for the embedded default) plus `--set dotted.key=value`
overrides becomes a frozen `Recipe`. Every problem -- unknown keys, wrong types,
out-of-range values, settings that contradict each other -- is collected and raised
together as one `RecipeError`, each line with its dotted path, what is wrong and what
to set instead. Field descriptions double as the README's recipe reference. Each default
sits on its field (the modes and the log-prob chunk's number come from `gspo_cli.base.constants`,
which the torch-only modules share without importing pydantic).

- `sections`: the section models, every default on its field, and the tables behind them;
- `schema`: `Recipe`, the sections plus the run's name, seed and reward;
- `load`: YAML, `--set` overrides, one `RecipeError` listing every problem;
- `checks`: settings that contradict each other, a process count that does not fit, warnings;
- `resume`: which differences a resumed run may have.
"""

from __future__ import annotations

from gspo_cli.recipe.checks import check_world_size, warnings_for
from gspo_cli.recipe.load import apply_override, load_recipe, read_yaml, validate
from gspo_cli.recipe.resume import BREAKING_ON_RESUME, resume_changes
from gspo_cli.recipe.schema import Recipe, RewardSpec
from gspo_cli.recipe.sections import (
    DEFAULT_ADVANTAGE_SCALE,
    DEFAULT_CLIP,
    MAX_COMPLETIONS,
    MAX_STEPS,
    AlgoSection,
    DataSection,
    LoraSection,
    ModelSection,
    OptimSection,
    RewardTerm,
    RolloutSection,
    TrainSection,
)
from gspo_cli.recipe.tasks import GENERATED_TASKS, TASK_DEFAULTS, Task, TaskDefaults

__all__ = [
    "BREAKING_ON_RESUME",
    "DEFAULT_ADVANTAGE_SCALE",
    "DEFAULT_CLIP",
    "GENERATED_TASKS",
    "MAX_COMPLETIONS",
    "MAX_STEPS",
    "TASK_DEFAULTS",
    "AlgoSection",
    "DataSection",
    "LoraSection",
    "ModelSection",
    "OptimSection",
    "Recipe",
    "RewardSpec",
    "RewardTerm",
    "RolloutSection",
    "Task",
    "TaskDefaults",
    "TrainSection",
    "apply_override",
    "check_world_size",
    "load_recipe",
    "read_yaml",
    "resume_changes",
    "validate",
    "warnings_for",
]
