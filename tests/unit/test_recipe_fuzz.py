"""Property test: whatever YAML arrives, the loader returns a Recipe or raises RecipeError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gspo_cli.base.errors import RecipeError
from gspo_cli.recipe import Recipe, load_recipe

# Real key names make the fuzzer reach the nested validators, not just the unknown-key check.
KEYS = st.sampled_from(
    [
        "name",
        "seed",
        "reward",
        "model",
        "data",
        "rollout",
        "algo",
        "optim",
        "train",
        "mode",
        "clip_low",
        "clip_high",
        "minibatches",
        "group_size",
        "prompts_per_step",
        "lr",
        "steps",
        "dtype",
        "task",
        "temperature",
        "top_p",
        "max_new_tokens",
        "epochs",
    ]
) | st.text(max_size=8)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["gspo", "grpo", "gspo_token", "auto", "addition", "1e-4", "3e-4"])
)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=6),
    max_leaves=25,
)


def _load(path: Path, text: str, overrides: list[str]) -> None:
    path.write_text(text, encoding="utf-8")
    try:
        assert isinstance(load_recipe(path, overrides), Recipe)
    except RecipeError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)


SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(document=DOCUMENTS, overrides=st.lists(st.text(max_size=20), max_size=3))
def test_random_yaml_documents(tmp_path: Path, document: Any, overrides: list[str]) -> None:
    """Structured random YAML with random --set strings never escapes as another exception."""
    _load(tmp_path / "r.yaml", yaml.safe_dump(document), overrides)


@SETTINGS
@given(text=st.text(max_size=200))
def test_random_text(tmp_path: Path, text: str) -> None:
    """Arbitrary text (mostly not YAML at all) is a recipe or a RecipeError."""
    _load(tmp_path / "r.yaml", text, [])
