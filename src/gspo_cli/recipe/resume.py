"""What a resumed run may change: the differences between its saved recipe and the new one,
split into breaking and harmless."""

from __future__ import annotations

from typing import Any

from gspo_cli.recipe.schema import Recipe

# Settings a resumed run cannot change: the checkpoint's weights, optimiser state and data
# position only make sense for the same model, algorithm, batch shape, task and seed.
BREAKING_ON_RESUME = (
    "seed",
    "reward",
    "model.",
    "data.task",
    "rollout.prompts_per_step",
    "rollout.group_size",
    "algo.mode",
    "algo.minibatches",
    "algo.epochs",
)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resume_changes(saved: Recipe, new: Recipe) -> tuple[list[str], list[str]]:
    """(breaking, harmless) differences between a run's saved recipe and the one to resume
    with, each as 'key: old -> new'."""
    old_flat, new_flat = (
        _flatten(saved.model_dump(mode="json")),
        _flatten(new.model_dump(mode="json")),
    )
    breaking: list[str] = []
    harmless: list[str] = []
    keys = [*old_flat, *(k for k in new_flat if k not in old_flat)]  # model.lora: null or not
    for key in keys:
        if old_flat.get(key) != new_flat.get(key):
            line = f"{key}: {old_flat.get(key)!r} -> {new_flat.get(key)!r}"
            is_breaking = any(
                key == b or (b.endswith(".") and key.startswith(b)) for b in BREAKING_ON_RESUME
            )
            (breaking if is_breaking else harmless).append(line)
    return breaking, harmless
