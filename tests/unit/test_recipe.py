"""Recipe loading, defaults, overrides and collect-all validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gspo_cli.errors import RecipeError
from gspo_cli.recipe import DEFAULT_CLIP, Recipe, load_recipe, validate, warnings_for

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_the_paper_gspo_settings() -> None:
    """With nothing set, the recipe is GSPO with the paper's clip range and 4 minibatches."""
    recipe = load_recipe(None)
    assert recipe.algo.mode == "gspo"
    assert (recipe.algo.clip_low, recipe.algo.clip_high) == (3e-4, 4e-4)
    assert recipe.algo.minibatches == 4
    assert recipe.algo.kl_beta == 0.0


def test_clip_defaults_follow_the_mode() -> None:
    """grpo gets 0.2/0.27, gspo_token gets GSPO's range, explicit values win."""
    assert load_recipe(None, ["algo.mode=grpo"]).algo.clip_low == 0.2
    assert load_recipe(None, ["algo.mode=grpo"]).algo.clip_high == 0.27
    assert load_recipe(None, ["algo.mode=gspo_token"]).algo.clip_high == 4e-4
    explicit = load_recipe(None, ["algo.mode=grpo", "algo.clip_low=0.1"]).algo
    assert (explicit.clip_low, explicit.clip_high) == (0.1, DEFAULT_CLIP["grpo"][1])


def test_recipe_is_immutable() -> None:
    """A loaded recipe cannot be changed in place."""
    recipe = load_recipe(None)
    with pytest.raises(ValidationError):
        recipe.algo.mode = "grpo"  # type: ignore[misc]


def test_every_error_is_reported_at_once() -> None:
    """Unknown keys, wrong types and out-of-range values come back together with their paths."""
    raw = {
        "algo": {"mode": "ppo", "clip_low": -0.1, "minibatchs": 2},
        "rollout": {"group_size": 1, "prompts_per_step": "many"},
        "optim": {"lr": -1},
        "extra": 1,
    }
    with pytest.raises(RecipeError) as info:
        validate(raw)
    paths = sorted(p.split(":")[0] for p in info.value.problems)
    assert paths == sorted(
        [
            "algo.mode",
            "algo.clip_low",
            "algo.minibatchs",
            "rollout.group_size",
            "rollout.prompts_per_step",
            "optim.lr",
            "extra",
        ]
    ), info.value.problems


def test_unknown_key_suggests_the_closest() -> None:
    """A misspelt key names the key it probably meant."""
    with pytest.raises(RecipeError) as info:
        validate({"algo": {"minibatchs": 2}})
    assert "did you mean 'minibatches'" in info.value.problems[0]


def test_indivisible_minibatches_name_factors_and_valid_values() -> None:
    """Minibatches that do not divide prompts × group are refused with the valid choices."""
    with pytest.raises(RecipeError) as info:
        validate({"algo": {"minibatches": 5}})
    message = info.value.problems[0]
    assert "16" in message and "8" in message and "128" in message, message
    assert "[1, 2, 4, 8]" in message, message


def test_override_reaches_nested_value_and_parses_yaml_scalars() -> None:
    """--set parses numbers, booleans and strings like YAML."""
    recipe = load_recipe(None, ["optim.lr=1e-4", "rollout.group_size=4", "name=abc"])
    assert recipe.optim.lr == pytest.approx(1e-4)
    assert recipe.rollout.group_size == 4
    assert recipe.name == "abc"


@pytest.mark.parametrize("bad", ["algo.mode", "=grpo", "algo..mode=grpo"])
def test_malformed_override_is_a_recipe_error(bad: str) -> None:
    """An override without key=value is refused, not ignored."""
    with pytest.raises(RecipeError):
        load_recipe(None, [bad])


def test_override_into_a_scalar_is_refused(tmp_path: Path) -> None:
    """--set seed.x=1 cannot turn a scalar into a section, set in the file or not."""
    path = tmp_path / "r.yaml"
    path.write_text("seed: 3\n")
    with pytest.raises(RecipeError, match="seed is not a section"):
        load_recipe(path, ["seed.x=1"])
    with pytest.raises(RecipeError, match="seed: Input should be a valid integer"):
        load_recipe(None, ["seed.x=1"])


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("", "empty"), ("- a\n- b\n", "mapping"), ("algo: [unclosed\n", "not valid YAML")],
)
def test_files_that_are_not_recipes(tmp_path: Path, text: str, fragment: str) -> None:
    """Empty files, lists and broken YAML each get a specific message."""
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=fragment):
        load_recipe(path)


def test_resolved_yaml_round_trips(tmp_path: Path) -> None:
    """The resolved recipe written to a run directory loads back to the same object."""
    recipe = load_recipe(None, ["algo.mode=grpo", "train.steps=7"])
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe.to_yaml())
    assert load_recipe(path) == recipe


def test_on_policy_gspo_warns() -> None:
    """GSPO with one minibatch and one epoch warns that the ratio is always 1."""
    notes = warnings_for(load_recipe(None, ["algo.minibatches=1"]))
    assert any("ratio is always 1" in n for n in notes), notes
    assert not warnings_for(load_recipe(None, ["algo.minibatches=1", "algo.mode=grpo"]))
    assert not warnings_for(load_recipe(None))


def test_grpo_sized_clip_in_gspo_warns() -> None:
    """GSPO with GRPO's 0.2 clip range warns that clipping is effectively off."""
    notes = warnings_for(load_recipe(None, ["algo.clip_low=0.2", "algo.clip_high=0.27"]))
    assert any("GRPO-sized" in n for n in notes), notes


def test_every_shipped_recipe_validates() -> None:
    """Every YAML under recipes/ (recursively) loads without error."""
    paths = sorted((REPO / "recipes").rglob("*.yaml"))
    assert paths, "no recipes found"
    for path in paths:
        assert isinstance(load_recipe(path), Recipe), path
