"""Sizes with no sane use are refused at validation, each with its limit in the message."""

from __future__ import annotations

import pytest

from gspo_cli.base.errors import RecipeError
from gspo_cli.recipe import MAX_COMPLETIONS, load_recipe

# (dotted key, the largest accepted value); each alone keeps the default recipe valid
LIMITS = {
    "rollout.group_size": 1024,
    "rollout.prompts_per_step": 16_384,
    "rollout.max_new_tokens": 131_072,
    "algo.minibatches": 65_536,
    "algo.epochs": 100,
    "optim.warmup_steps": 10_000_000,
    "train.steps": 10_000_000,
    "train.eval_every": 10_000_000,
    "train.save_every": 10_000_000,
    "train.microbatch_tokens": 16_777_216,
    "train.logprob_chunk_tokens": 1_048_576,
    "train.keep_last": 1000,
    "train.max_skipped_steps": 10_000_000,
    "train.log_completions": MAX_COMPLETIONS,
    "data.max_prompt_tokens": 1_048_576,
    "data.generated_size": 1_000_000,
    "data.eval_size": 1_000_000,
}


@pytest.mark.parametrize("key", sorted(LIMITS))
def test_limit_is_refused_one_above(key: str) -> None:
    """One above the limit: refused, with the key and the limit in the one-line message."""
    limit = LIMITS[key]
    with pytest.raises(RecipeError) as caught:
        load_recipe(None, [f"{key}={limit + 1}"])
    assert caught.value.problems[0].startswith(f"{key}: Input should be less than or equal to")
    assert f"{limit}" in caught.value.problems[0], caught.value.problems


@pytest.mark.parametrize("key", sorted(set(LIMITS) - {"algo.minibatches"}))
def test_limit_itself_is_accepted(key: str) -> None:
    """The limit itself is a valid value (minibatches at the limit exceed the completions)."""
    recipe = load_recipe(None, [f"{key}={LIMITS[key]}"])
    section, field = key.split(".")
    assert getattr(getattr(recipe, section), field) == LIMITS[key]


def test_completions_per_step_are_bounded() -> None:
    """Each size under its own limit, but their product is not."""
    with pytest.raises(RecipeError, match=f"more than the limit of {MAX_COMPLETIONS}"):
        load_recipe(None, ["rollout.prompts_per_step=1024", "rollout.group_size=512"])
    assert load_recipe(None, ["rollout.prompts_per_step=512", "rollout.group_size=512"])
