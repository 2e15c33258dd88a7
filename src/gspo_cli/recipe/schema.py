"""`Recipe`: the whole recipe, its sections and the reward, validated field by field."""

from __future__ import annotations

import re
from typing import Annotated, Any

import yaml
from pydantic import Discriminator, Field, Tag, field_validator

from gspo_cli import rewards
from gspo_cli.base.errors import UserError
from gspo_cli.recipe.sections import (
    AlgoSection,
    DataSection,
    ModelSection,
    OptimSection,
    RewardTerm,
    RolloutSection,
    TrainSection,
    _Section,
)
from gspo_cli.recipe.tasks import TASK_DEFAULTS

# A reward is one name or a list of weighted terms; the tag picks the branch, so an error in
# a list is reported once, at its own path, instead of once per union member.
_REWARD_TAGS = ("name", "terms")
RewardSpec = Annotated[
    Annotated[str, Tag("name")] | Annotated[tuple[RewardTerm, ...], Tag("terms")],
    Discriminator(lambda value: "name" if isinstance(value, str) else "terms"),
]


def task_reward(data: dict[str, Any]) -> str:
    """`reward`'s default: data.task's checker (TASK_DEFAULTS)."""
    section: DataSection = data["data"]
    return TASK_DEFAULTS[section.task].reward


# A run's name becomes a directory name under runs/: no separators, no leading dot.
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


class Recipe(_Section):
    name: str = Field("run", min_length=1, description="run name; the run directory starts with it")
    seed: int = Field(
        0, ge=0, le=2**32 - 1, description="seeds data order, sampling and initialisation"
    )
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    # After `data`, whose task it defaults to (a default factory sees only earlier fields).
    reward: RewardSpec = Field(
        default_factory=task_reward,
        description="a reward name (default: data.task's checker, exact, gsm8k, math_boxed, "
        "countdown, ...), a user function 'package.module:function', or a list of {name, "
        "weight} summed; the first decides correctness",
    )
    rollout: RolloutSection = RolloutSection()
    algo: AlgoSection = AlgoSection()
    optim: OptimSection = OptimSection()
    train: TrainSection = TrainSection()

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        """A run directory is named after it, so it must stay one plain name under runs/."""
        if not _NAME.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a plain name: the run directory is named after it, so use "
                "only letters, digits, '-', '_' and '.', not starting with '.' (e.g. name: "
                "gsm8k-gspo)"
            )
        return value

    @field_validator("reward", mode="before")
    @classmethod
    def _reward_shape(cls, value: Any) -> Any:
        """A name or a non-empty list of {name, weight}; anything else gets one clear message."""
        if isinstance(value, str) or (isinstance(value, list | tuple) and value):
            return value
        raise ValueError(
            f"expected a reward name or a list of {{name, weight}}, got {value!r}; "
            "e.g. reward: gsm8k"
        )

    @field_validator("reward")
    @classmethod
    def _rewards_exist(cls, value: str | tuple[RewardTerm, ...]) -> str | tuple[RewardTerm, ...]:
        """Every named reward is registered or importable, before any model loads."""
        names = [value] if isinstance(value, str) else [term.name for term in value]
        problems = []
        for name in names:
            try:
                rewards.get(name)
            except UserError as exc:
                problems.append(str(exc))
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @property
    def reward_terms(self) -> tuple[tuple[str, float], ...]:
        """The reward as (name, weight) pairs; a plain name has weight 1."""
        if isinstance(self.reward, str):
            return ((self.reward, 1.0),)
        return tuple((term.name, term.weight) for term in self.reward)

    @property
    def completions_per_step(self) -> int:
        return self.rollout.prompts_per_step * self.rollout.group_size

    @property
    def responses_per_minibatch(self) -> int:
        return self.completions_per_step // self.algo.minibatches

    def to_yaml(self) -> str:
        """The resolved recipe, every default spelled out, as YAML."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
