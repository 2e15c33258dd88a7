"""Loading: a YAML file plus `--set` overrides, validated into a `Recipe`, every problem
described with its dotted path and collected into one `RecipeError`."""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from gspo_cli.base.errors import RecipeError
from gspo_cli.recipe.checks import contradictions
from gspo_cli.recipe.schema import _REWARD_TAGS, Recipe
from gspo_cli.recipe.sections import AlgoSection, DataSection, RolloutSection


def _section(annotation: Any) -> Any:
    """The model class inside an annotation (`tuple[RewardTerm, ...]`, a union), else itself."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _section(arg)
        if found is not None:
            return found
    return None


def _walk(loc: tuple[str | int, ...]) -> tuple[Any, Any]:
    """(the section holding loc's last key, that key's FieldInfo or None); list indices skip."""
    current: Any = Recipe
    info = None
    for i, part in enumerate(loc):
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return (current if i == len(loc) - 1 else None), None
        info = fields[part]
        if i < len(loc) - 1:
            current = _section(info.annotation)
    return current, info


def _hint(loc: tuple[str | int, ...]) -> str:
    """The field's description, for 'what to set instead'."""
    _, info = _walk(loc)
    return f" ({info.description})" if info is not None and info.description else ""


def _known_keys(loc: tuple[str | int, ...]) -> list[str]:
    section, _ = _walk(loc)
    return list(getattr(section, "model_fields", {}))


def _describe(error: Any) -> str:
    # Drop the tag of the reward union (`reward.terms.0.name` -> `reward.0.name`).
    loc = tuple(p for i, p in enumerate(error["loc"]) if not (i == 1 and p in _REWARD_TAGS))
    path = ".".join(str(p) for p in loc) or "recipe"
    if error["type"] == "extra_forbidden":
        known = _known_keys(loc)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        suggestion = f"did you mean {close[0]!r}? " if close else ""
        return f"{path}: unknown key; {suggestion}valid keys here: {', '.join(known)}"
    got = error.get("input")
    if error["type"] == "value_error":  # our own validators' messages are complete
        return f"{path}: {error['ctx']['error']}"
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{path}: {error['msg']}{shown}{_hint(loc)}"


def validate(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    """A frozen Recipe from a plain mapping, or a RecipeError listing every problem: the
    schema's and, in the same round, the cross-field ones among the sections that validated."""
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        # A default that follows a field which failed is not computed; that field's own
        # problem is the one to report.
        errors = [e for e in exc.errors() if e["type"] != "default_factory_not_called"]
        problems = [_describe(e) for e in errors]
        failed = {e["loc"][0] if e["loc"] else "" for e in errors}
        problems += contradictions(
            _valid(raw, failed, "rollout", RolloutSection),
            _valid(raw, failed, "algo", AlgoSection),
            _valid(raw, failed, "data", DataSection),
        )
        raise RecipeError(problems, source) from None
    problems = contradictions(recipe.rollout, recipe.algo, recipe.data)
    if problems:
        raise RecipeError(problems, source)
    return recipe


_S = TypeVar("_S", bound=BaseModel)


def _valid(raw: Any, failed: set[str | int], name: str, model: type[_S]) -> _S | None:
    """Section `name` of `raw` validated on its own, or None if it has a schema problem."""
    if not isinstance(raw, dict) or "" in failed or name in failed:
        return None
    return model.model_validate(raw.get(name, {}))


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Set `dotted.key=value` in a raw recipe mapping; the value is parsed as YAML."""
    key, sep, text = assignment.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise RecipeError(
            [f"--set {assignment!r}: expected dotted.key=value, e.g. --set algo.mode=grpo"],
            "--set",
        )
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise RecipeError([f"--set {key}: {where} is not a section"], "--set")
        node = child
    node[parts[-1]] = value


def read_yaml(path: Path) -> dict[str, Any]:
    """The YAML mapping in `path`, or a RecipeError saying why it is not one."""
    if path.is_dir():
        raise RecipeError(
            [f"is a directory; give a recipe YAML file (a run's is {path / 'recipe.yaml'})"],
            str(path),
        )
    if not path.is_file():
        raise RecipeError(["no such file; give the path of a recipe YAML file"], str(path))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise RecipeError([f"not valid YAML{at}: {exc}".splitlines()[0]], str(path)) from None
    except OSError as exc:
        raise RecipeError([f"cannot read it ({exc.strerror})"], str(path)) from None
    if data is None:
        raise RecipeError(
            ["the file is empty; write a YAML mapping such as `algo: {mode: gspo}`"], str(path)
        )
    if not isinstance(data, dict):
        kind = type(data).__name__
        problem = f"expected a YAML mapping of sections (model, rollout, algo, ...), got a {kind}"
        raise RecipeError([problem], str(path))
    return data


def load_recipe(path: Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Recipe from a YAML file (None: the embedded default) plus `--set` overrides."""
    raw = read_yaml(path) if path is not None else {}
    for assignment in overrides:
        apply_override(raw, assignment)
    source = str(path) if path is not None else "default recipe"
    return validate(raw, source + (" with --set overrides" if overrides else ""))
