"""Recipe loading, defaults, overrides and collect-all validation."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from gspo_cli.base.errors import RecipeError
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


def test_schema_and_cross_field_problems_come_in_one_round() -> None:
    """A wrong type, an unknown key and an unknown reward are listed together with an
    indivisible minibatch count (5 does not divide 16 × 8 = 128) and a task without its
    source: the cross-field checks run on the sections that validated."""
    raw = {
        "seed": "zero",
        "reward": "nope",
        "optim": {"lrr": 1e-4},
        "algo": {"minibatches": 5},
        "data": {"task": "gsm8k"},
    }
    with pytest.raises(RecipeError) as info:
        validate(raw)
    problems = info.value.problems
    paths = sorted(p.split(":")[0] for p in problems)
    assert paths == ["algo.minibatches", "data.source", "optim.lrr", "reward", "seed"], problems
    assert any("5 does not divide the 128 completions per step" in p for p in problems), problems


def test_cross_field_checks_skip_a_section_that_failed() -> None:
    """A section with a schema problem is not read by the cross-field checks: group_size 1 is
    reported, not a minibatch count computed from it; a bad data section, not its source."""
    raw = {"rollout": {"group_size": 1, "prompts_per_step": 3}, "data": {"task": 3}}
    with pytest.raises(RecipeError) as info:
        validate(raw)
    paths = sorted(p.split(":")[0] for p in info.value.problems)
    assert paths == ["data.task", "rollout.group_size"], info.value.problems


def test_unknown_key_suggests_the_closest() -> None:
    """A misspelt key names the key it probably meant."""
    with pytest.raises(RecipeError) as info:
        validate({"algo": {"minibatchs": 2}})
    assert "did you mean 'minibatches'" in info.value.problems[0]


def test_indivisible_minibatches_name_factors_and_valid_values() -> None:
    """Minibatches that do not divide prompts × group are refused with the nearest valid
    choices: 5 does not divide 16 × 8 = 128; its nearest divisors are 4 and 8, and 15 or 20
    prompts (× 8 = 120, 160) divide by 5."""
    with pytest.raises(RecipeError) as info:
        validate({"algo": {"minibatches": 5}})
    message = info.value.problems[0]
    assert "5 does not divide the 128 completions per step" in message, message
    assert "rollout.prompts_per_step 16 × rollout.group_size 8" in message, message
    assert "set algo.minibatches to 4 or 8 (the nearest divisors of 128)" in message, message
    assert "rollout.prompts_per_step to 15 or 20 (15 × 8 = 120, 20 × 8 = 160" in message, message


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


# --- data section and rewards ----------------------------------------------------------------


def test_task_defaults_fill_fields_instruction_and_reward() -> None:
    """Unset fields, instruction and reward follow the task; explicit values win."""
    recipe = load_recipe(None, ["data.task=gsm8k", "data.source=openai/gsm8k"])
    assert (recipe.data.prompt_field, recipe.data.answer_field) == ("question", "answer")
    assert "####" in recipe.data.instruction and recipe.reward == "gsm8k"
    assert load_recipe(None, ["data.task=countdown"]).reward == "countdown"
    assert load_recipe(None, ["data.task=math", "data.source=x/y"]).reward == "math_boxed"
    explicit = load_recipe(
        None, ["data.task=gsm8k", "data.source=a/b", "reward=gsm8k_flexible", "data.instruction="]
    )
    assert (explicit.reward, explicit.data.instruction) == ("gsm8k_flexible", "")
    default = load_recipe(None)
    assert (default.reward, default.data.instruction, default.data.source) == ("exact", "", None)


@pytest.mark.parametrize(
    ("sets", "fragment"),
    [
        (["data.task=gsm8k"], "data.source: task gsm8k reads a dataset"),
        (["data.source=x.jsonl"], "the addition task is generated in code"),
        (["data.config=main"], "data.config: a configuration needs a data.source"),
        (["data.task=custom", "data.source=d.jsonl"], "task custom has no default field names"),
        (
            ["data.task=gsm8k", "data.source=a/b", "data.test_split=train"],
            "would score examples the policy trained on",
        ),
    ],
)
def test_data_settings_that_contradict_each_other(sets: list[str], fragment: str) -> None:
    """A task, its source and its fields must fit together."""
    with pytest.raises(RecipeError) as info:
        load_recipe(None, sets)
    assert any(fragment in p for p in info.value.problems), info.value.problems


def test_weighted_reward_list() -> None:
    """reward: [{name, weight}, ...] validates, and a plain name still works."""
    recipe = validate({"reward": [{"name": "exact"}, {"name": "format_gsm8k", "weight": 0.1}]})
    assert recipe.reward_terms == (("exact", 1.0), ("format_gsm8k", 0.1))
    assert validate({"reward": "exact"}).reward_terms == (("exact", 1.0),)


def test_reward_errors_are_collected_with_the_rest() -> None:
    """Unknown rewards, bad weights and misspelt keys are listed together, each at its path."""
    raw = {
        "reward": [{"name": "nope"}, {"name": "exact", "weight": "heavy"}, {"nam": "x"}],
        "rollout": {"group_size": 1},
    }
    with pytest.raises(RecipeError) as info:
        validate(raw)
    problems = info.value.problems
    paths = sorted(p.split(":")[0] for p in problems)
    assert paths == ["reward.1.weight", "reward.2.nam", "reward.2.name", "rollout.group_size"], (
        problems
    )
    assert any("did you mean 'name'" in p for p in problems), problems
    with pytest.raises(RecipeError, match="unknown reward 'nope'"):
        validate({"reward": [{"name": "nope"}]})
    with pytest.raises(RecipeError, match="expected a reward name or a list"):
        validate({"reward": 3})


def test_unimportable_user_reward_is_a_recipe_error() -> None:
    """`module:function` that cannot be imported fails at load time, before any model."""
    with pytest.raises(RecipeError, match=r"cannot import module 'no_such_pkg_xyz\.rewards'"):
        load_recipe(None, ["reward=no_such_pkg_xyz.rewards:score"])


def test_reward_of_another_task_warns() -> None:
    """gsm8k data checked with exact is legal but almost surely a mistake."""
    recipe = load_recipe(None, ["data.task=gsm8k", "data.source=a/b", "reward=exact"])
    assert any("whose own checker is gsm8k" in n for n in warnings_for(recipe))


def recipe_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every leaf key of the recipe schema, dotted."""
    keys = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is type(None):  # an optional section (model.lora)
            annotation = args[0]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += recipe_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def test_every_key_declares_its_default_on_its_field() -> None:
    """No key is required: each field carries its default, a value or a factory of the keys
    before it (clip range by mode, fields, instruction and reward by task)."""
    required = []
    for model in (Recipe, *{_section_of(info) for info in Recipe.model_fields.values()} - {None}):
        assert model is not None
        required += [
            f"{model.__name__}.{n}" for n, i in model.model_fields.items() if i.is_required()
        ]
    assert required == [], required


def _section_of(info: Any) -> type[BaseModel] | None:
    annotation = info.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def test_readme_documents_every_recipe_key() -> None:
    """Each key of the schema has a row in the README's recipe reference."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Recipe reference", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([\w.]+)` \|", section, re.M))
    keys = set(recipe_keys(Recipe))
    assert keys - documented == set(), keys - documented
    assert documented - keys == set(), documented - keys
    # A guard on growth (style: no god-config): raise it only with a reason in the CHANGELOG.
    # 56: LoRA's five keys (model.lora.*) replaced its one; train.report_to; DAPO's dynamic
    # sampling (2), overlong handling (3) and TIS (2).
    assert len(keys) <= 56, f"{len(keys)} recipe leaves: keep the schema small"


def test_readme_recipe_defaults_match_the_schema() -> None:
    """Each README row's default (a literal in backticks) is what the default recipe holds."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Recipe reference", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([\w.]+)` \| `([^`]*)` \|", section, re.M)
    assert len(rows) >= 30, rows  # most rows give a literal default ("by task" ones do not)
    # model.lora is off by default; its rows show the defaults of a section turned on
    resolved = load_recipe(None, ["model.lora.rank=16"]).model_dump(mode="json")
    for key, shown in rows:
        value: Any = resolved
        for part in key.split("."):
            value = value[part]
        assert _literal(shown) == value, f"README says {key} defaults to {shown}, not {value}"


def _literal(text: str) -> Any:
    """A README default as a value: numbers such as 3e-5 (which YAML 1.1 reads as a string),
    else YAML (true, none-like words stay strings)."""
    try:
        return float(text) if any(c in text for c in ".e") and text[0].isdigit() else int(text)
    except ValueError:
        return yaml.safe_load(text)


def test_grpo_twin_differs_only_in_the_algorithm() -> None:
    """qwen3_math_grpo.yaml is qwen3_math.yaml with GRPO and its clip range (and its name)."""
    gspo = load_recipe(REPO / "recipes" / "qwen3_math.yaml").model_dump()
    grpo = load_recipe(REPO / "recipes" / "qwen3_math_grpo.yaml").model_dump()
    assert (gspo["algo"]["mode"], grpo["algo"]["mode"]) == ("gspo", "grpo")
    assert (grpo["algo"]["clip_low"], grpo["algo"]["clip_high"]) == DEFAULT_CLIP["grpo"]
    assert (gspo["algo"]["clip_low"], gspo["algo"]["clip_high"]) == DEFAULT_CLIP["gspo"]
    for recipe in (gspo, grpo):
        del recipe["name"]
        for key in ("mode", "clip_low", "clip_high"):
            del recipe["algo"][key]
    assert gspo == grpo
    qwen = load_recipe(REPO / "recipes" / "qwen3_math.yaml")
    assert qwen.rollout.group_size >= 8 and qwen.algo.minibatches == 4
    assert qwen.algo.kl_beta == 0 and qwen.data.task == "gsm8k"


def test_null_fields_in_a_resolved_recipe_take_the_new_tasks_defaults() -> None:
    """A run's recipe.yaml spells out null fields; switching its task fills them again."""
    resolved = load_recipe(None).model_dump(mode="json")
    resolved["data"].update(task="gsm8k", source="a/b")
    recipe = validate(resolved)
    assert (recipe.data.prompt_field, recipe.data.answer_field) == ("question", "answer")


@pytest.mark.parametrize(
    "name", ["../../escape", "/abs/path", "a/b", ".hidden", "a b", "..", "x\\y"]
)
def test_run_name_must_be_a_plain_name(name: str) -> None:
    """The run directory is named after the recipe's name, so it cannot leave runs/."""
    with pytest.raises(RecipeError, match="is not a plain name"):
        validate({"name": name})


@pytest.mark.parametrize("name", ["run", "gsm8k-gspo_v1.2", "0"])
def test_plain_run_names_are_accepted(name: str) -> None:
    assert validate({"name": name}).name == name


def test_a_directory_is_not_a_recipe(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="is a directory; give a recipe YAML file"):
        load_recipe(tmp_path)
