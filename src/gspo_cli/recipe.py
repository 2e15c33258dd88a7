"""The recipe: one typed, validated, immutable object, and the only home of defaults.

A YAML file (or nothing, for the embedded default) plus `--set dotted.key=value`
overrides becomes a frozen `Recipe`. Every problem -- unknown keys, wrong types,
out-of-range values, settings that contradict each other -- is collected and raised
together as one `RecipeError`, each line with its dotted path, what is wrong and what
to set instead. Field descriptions double as the README's recipe reference.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gspo_cli.errors import RecipeError

Mode = Literal["gspo", "grpo", "gspo_token"]

# Paper settings (GSPO §5.1 and the GRPO baseline). GSPO's ratio is a per-token geometric
# mean, so its clip range is three orders of magnitude tighter than GRPO's.
DEFAULT_CLIP: dict[str, tuple[float, float]] = {
    "gspo": (3e-4, 4e-4),
    "gspo_token": (3e-4, 4e-4),
    "grpo": (0.2, 0.27),
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelSection(_Section):
    name: str = Field(
        "tiny-qwen3",
        description="'tiny-qwen3' (the embedded default, built offline), a hub id such as "
        "'Qwen/Qwen3-0.6B', or a local Hugging Face model directory",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto' is bfloat16 on a CUDA GPU that supports it, float32 otherwise"
    )


class DataSection(_Section):
    task: Literal["addition"] = Field(
        "addition", description="the task: 'addition' (synthetic two-digit sums, generated locally)"
    )
    eval_size: int = Field(
        256, ge=1, description="held-out examples used for each evaluation (capped at the split)"
    )


class RolloutSection(_Section):
    prompts_per_step: int = Field(16, ge=1, description="prompts sampled per rollout step")
    group_size: int = Field(
        8, ge=2, description="completions per prompt (G); advantages are normalised per group"
    )
    temperature: float = Field(1.0, gt=0, le=10, description="sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass (1.0 = off)")
    max_new_tokens: int = Field(8, ge=1, description="longest completion, in tokens")


class AlgoSection(_Section):
    mode: Mode = Field(
        "gspo",
        description="'gspo' (sequence-level ratio), 'grpo' (token-level ratio, the ablation) or "
        "'gspo_token' (GSPO's token form, for per-token advantages)",
    )
    clip_low: float = Field(
        description="ε_low: ratios below 1-ε_low are clipped; default 3e-4 for gspo, 0.2 for grpo",
        gt=0,
        lt=1,
    )
    clip_high: float = Field(
        description="ε_high: ratios above 1+ε_high are clipped; default 4e-4 for gspo, 0.27 for "
        "grpo",
        gt=0,
    )
    minibatches: int = Field(
        4, ge=1, description="optimiser steps per rollout batch per epoch (the paper uses 4)"
    )
    epochs: int = Field(1, ge=1, description="passes over each rollout batch")
    kl_beta: float = Field(
        0.0, ge=0, description="weight of a k3 KL penalty to the initial model (paper: 0, off)"
    )
    advantage_scale: Literal["group", "batch", "none"] = Field(
        "group", description="advantage denominator: the group's reward std, the batch's, or 1"
    )
    max_log_ratio: float = Field(
        10.0, gt=0, description="bound on |log ratio| before exp, so the loss stays finite"
    )

    @model_validator(mode="before")
    @classmethod
    def _clip_defaults_follow_mode(cls, data: Any) -> Any:
        """Unset clip bounds take the mode's paper defaults (never GRPO's range for GSPO)."""
        if not isinstance(data, dict):
            return data
        mode = data.get("mode", "gspo")
        low, high = (
            DEFAULT_CLIP.get(mode, DEFAULT_CLIP["gspo"])
            if isinstance(mode, str)
            else (DEFAULT_CLIP["gspo"])
        )
        return {"clip_low": low, "clip_high": high, **data}


class OptimSection(_Section):
    lr: float = Field(3e-5, ge=0, description="AdamW learning rate (after warm-up; constant)")
    warmup_steps: int = Field(0, ge=0, description="optimiser steps of linear warm-up from 0")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    grad_clip: float = Field(1.0, ge=0, description="max global grad norm; 0 turns clipping off")


class TrainSection(_Section):
    steps: int = Field(1200, ge=1, description="rollout steps (each: sample, score, update)")
    eval_every: int = Field(
        100,
        ge=0,
        description="rollout steps between evaluations (also at start and end; 0: only those)",
    )
    save_every: int = Field(
        0,
        ge=0,
        description="rollout steps between checkpoints (0: only at the end and on interruption)",
    )
    microbatch_tokens: int = Field(
        8192,
        ge=0,
        description="padded tokens per forward pass; minibatches are split into length-sorted "
        "micro-batches with gradient accumulation (0: no split)",
    )
    logprob_chunk_tokens: int = Field(
        1024,
        ge=0,
        description="tokens whose full-vocabulary logits exist at once when computing "
        "log-probs (0: all at once)",
    )
    keep_last: int = Field(2, ge=1, description="complete checkpoints kept; older are deleted")
    max_skipped_steps: int = Field(
        10,
        ge=1,
        description="optimiser steps in a row with a non-finite loss or gradient before stopping",
    )


class Recipe(_Section):
    name: str = Field("run", min_length=1, description="run name; the run directory starts with it")
    seed: int = Field(
        0, ge=0, le=2**32 - 1, description="seeds data order, sampling and initialisation"
    )
    reward: str = Field("exact", min_length=1, description="registered reward function name")
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    rollout: RolloutSection = RolloutSection()
    algo: AlgoSection = Field(default_factory=lambda: AlgoSection.model_validate({}))
    optim: OptimSection = OptimSection()
    train: TrainSection = TrainSection()

    @property
    def completions_per_step(self) -> int:
        return self.rollout.prompts_per_step * self.rollout.group_size

    @property
    def responses_per_minibatch(self) -> int:
        return self.completions_per_step // self.algo.minibatches

    def to_yaml(self) -> str:
        """The resolved recipe, every default spelled out, as YAML."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _contradictions(recipe: Recipe) -> list[str]:
    """Settings that are each valid but cannot work together."""
    problems = []
    n, m = recipe.completions_per_step, recipe.algo.minibatches
    if n % m:
        ok = sorted(d for d in range(1, n + 1) if n % d == 0 and abs(d - m) <= max(m, 4))
        problems.append(
            f"algo.minibatches: {m} does not divide the {n} completions per step "
            f"(rollout.prompts_per_step {recipe.rollout.prompts_per_step} × rollout.group_size "
            f"{recipe.rollout.group_size}); set it to one of {ok}"
        )
    if m > n:
        problems.append(f"algo.minibatches: {m} is more than the {n} completions per step")
    return problems


def check_world_size(recipe: Recipe, world_size: int) -> None:
    """Refuse a process count the step's prompts do not split over evenly: each process
    samples whole prompts (all G completions of each), the same number on every rank."""
    p = recipe.rollout.prompts_per_step
    if world_size < 1 or p % world_size == 0:
        return
    counts = ", ".join(str(d) for d in range(1, p + 1) if p % d == 0)
    nearby = sorted({world_size * max(1, p // world_size), world_size * (p // world_size + 1)})
    raise RecipeError(
        [
            f"rollout.prompts_per_step: {p} prompts do not split evenly over {world_size} "
            f"processes (each process samples an equal share of whole prompts); run on "
            f"{counts} processes, or set rollout.prompts_per_step to a multiple of "
            f"{world_size} such as {' or '.join(str(n) for n in nearby)}"
        ],
        f"training on {world_size} processes",
    )


def warnings_for(recipe: Recipe) -> list[str]:
    """Settings that are legal but probably not what the user meant."""
    notes = []
    algo = recipe.algo
    if algo.mode != "grpo" and algo.minibatches == 1 and algo.epochs == 1:
        notes.append(
            f"algo.mode {algo.mode} with 1 minibatch and 1 epoch: every update is on-policy, the "
            "ratio is always 1, clipping never fires and GSPO reduces to GRPO with sequence-mean "
            "aggregation; set algo.minibatches: 4 as in the paper"
        )
    if algo.mode != "grpo" and max(algo.clip_low, algo.clip_high) >= 0.01:
        notes.append(
            f"algo.clip_low/clip_high {algo.clip_low}/{algo.clip_high} are GRPO-sized; a sequence "
            "ratio almost never leaves such a range, so clipping is effectively off for "
            f"{algo.mode}; the paper uses 3e-4/4e-4"
        )
    return notes


# --- loading -----------------------------------------------------------------------------


def _hint(model: type[BaseModel], loc: tuple[str | int, ...]) -> str:
    """The field's description, for 'what to set instead'."""
    current: Any = model
    info = None
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return ""
        info = fields[part]
        current = info.annotation
    return f" ({info.description})" if info is not None and info.description else ""


def _known_keys(loc: tuple[str | int, ...]) -> list[str]:
    current: Any = Recipe
    for part in loc[:-1]:
        fields = getattr(current, "model_fields", {})
        if part not in fields:
            return []
        current = fields[part].annotation
    return list(getattr(current, "model_fields", {}))


def _describe(error: Any) -> str:
    loc = tuple(error["loc"])
    path = ".".join(str(p) for p in loc) or "recipe"
    if error["type"] == "extra_forbidden":
        known = _known_keys(loc)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        suggestion = f"did you mean {close[0]!r}? " if close else ""
        return f"{path}: unknown key; {suggestion}valid keys here: {', '.join(known)}"
    got = error.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{path}: {error['msg']}{shown}{_hint(Recipe, loc)}"


def validate(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    """A frozen Recipe from a plain mapping, or a RecipeError listing every problem."""
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError([_describe(e) for e in exc.errors()], source) from None
    problems = _contradictions(recipe)
    if problems:
        raise RecipeError(problems, source)
    return recipe


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
    if not path.is_file():
        raise RecipeError(["no such file; give the path of a recipe YAML file"], str(path))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise RecipeError([f"not valid YAML{at}: {exc}".splitlines()[0]], str(path)) from None
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
    for key in old_flat:
        if old_flat[key] != new_flat[key]:
            line = f"{key}: {old_flat[key]!r} -> {new_flat[key]!r}"
            is_breaking = any(
                key == b or (b.endswith(".") and key.startswith(b)) for b in BREAKING_ON_RESUME
            )
            (breaking if is_breaking else harmless).append(line)
    return breaking, harmless
