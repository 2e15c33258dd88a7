"""The recipe: one typed, validated, immutable object, and the only home of defaults.

A YAML file (or nothing, for the embedded default) plus `--set dotted.key=value`
overrides becomes a frozen `Recipe`. Every problem -- unknown keys, wrong types,
out-of-range values, settings that contradict each other -- is collected and raised
together as one `RecipeError`, each line with its dotted path, what is wrong and what
to set instead. Field descriptions double as the README's recipe reference.
"""

from __future__ import annotations

import difflib
import math
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from gspo_cli import rewards
from gspo_cli.constants import LOGPROB_CHUNK_TOKENS, AdvantageScale, Mode
from gspo_cli.errors import RecipeError, UserError

# Paper settings (GSPO §5.1 and the GRPO baseline). GSPO's ratio is a per-token geometric
# mean, so its clip range is three orders of magnitude tighter than GRPO's.
DEFAULT_CLIP: dict[str, tuple[float, float]] = {
    "gspo": (3e-4, 4e-4),
    "gspo_token": (3e-4, 4e-4),
    "grpo": (0.2, 0.27),
}


# Upper bounds on sizes: far beyond any real use, low enough that a typo (an extra three
# zeros) is refused here instead of hanging or exhausting memory later.
MAX_STEPS = 10_000_000
MAX_COMPLETIONS = 262_144  # prompts_per_step × group_size, per rollout step


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelSection(_Section):
    name: str = Field(
        "tiny-qwen3",
        description="'tiny-qwen3' (the embedded default, built offline), 'tiny-qwen3-moe' (its "
        "mixture-of-experts twin), a hub id such as "
        "'Qwen/Qwen3-0.6B', or a local Hugging Face model directory",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto' is bfloat16 on a CUDA GPU that supports it, float32 otherwise"
    )


Task = Literal["addition", "sums", "gsm8k", "math", "countdown", "custom"]

# Per task: (prompt field, answer field, instruction appended to each prompt, reward). Unset
# recipe values take these; the resolved recipe.yaml spells them out.
TASK_DEFAULTS: dict[str, tuple[str | None, str | None, str, str]] = {
    "addition": (None, None, "", "exact"),
    "sums": (None, None, "Answer with just the number.", "gsm8k_flexible"),
    "gsm8k": (
        "question",
        "answer",
        "Solve the problem step by step. Put the final answer, a number, after ####.",
        "gsm8k",
    ),
    "math": ("problem", "solution", "Put the final answer in \\boxed{}.", "math_boxed"),
    "countdown": (
        "nums",
        "target",
        "Use +, -, * and / and each number exactly once. Write the equation inside "
        "<answer></answer>, for example <answer>(1 + 2) * 3</answer>.",
        "countdown",
    ),
    "custom": (None, None, "", "exact"),
}
GENERATED_TASKS = (
    "addition",
    "sums",
    "countdown",
)  # made in code; countdown may also read a source


class DataSection(_Section):
    task: Task = Field(
        "addition",
        description="'addition' (synthetic two-digit sums), 'sums' (chat-phrased 'What is "
        "a + b?' for a, b in 1..20), 'gsm8k' (question, '#### N' answer), "
        "'math' (problem, \\boxed{} solution), 'countdown' (numbers and a target; generated "
        "without a source) or 'custom' (your prompt and answer fields)",
    )
    source: str | None = Field(
        None,
        description="a hub dataset id such as 'openai/gsm8k', or a local JSONL/JSON/Parquet "
        "file or folder (relative to the working directory); none for generated tasks",
    )
    config: str | None = Field(
        None,
        description="the hub dataset's configuration, e.g. 'main' for openai/gsm8k (a local "
        "folder: the subfolder to read)",
    )
    train_split: str = Field("train", min_length=1, description="the source's training split")
    test_split: str = Field(
        "test", min_length=1, description="the source's held-out split (evaluation)"
    )
    prompt_field: str | None = Field(
        description="field holding the question (countdown: the numbers); default by task"
    )
    answer_field: str | None = Field(
        description="field holding the reference answer (countdown: the target); default by task"
    )
    instruction: str = Field(
        description="text appended to every prompt (after a blank line); default by task"
    )
    max_prompt_tokens: int = Field(
        0,
        ge=0,
        le=1_048_576,
        description="drop (and count) prompts longer than this in tokens; 0: keep all",
    )
    generated_size: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="training examples generated for countdown without a source",
    )
    eval_size: int = Field(
        256,
        ge=1,
        le=1_000_000,
        description="held-out examples used for each evaluation (capped at the split)",
    )

    @model_validator(mode="before")
    @classmethod
    def _defaults_follow_task(cls, data: Any) -> Any:
        """Unset (or null) fields and an unset instruction take the task's defaults."""
        if not isinstance(data, dict):
            return data
        task = data.get("task", "addition")
        prompt, answer, instruction, _ = TASK_DEFAULTS.get(
            task if isinstance(task, str) else "", TASK_DEFAULTS["custom"]
        )
        fields = ("prompt_field", "answer_field")
        given = {k: v for k, v in data.items() if v is not None or k not in fields}
        return {"prompt_field": prompt, "answer_field": answer, "instruction": instruction, **given}


class RolloutSection(_Section):
    prompts_per_step: int = Field(
        16, ge=1, le=16_384, description="prompts sampled per rollout step"
    )
    group_size: int = Field(
        8,
        ge=2,
        le=1024,
        description="completions per prompt (G); advantages are normalised per group",
    )
    temperature: float = Field(1.0, gt=0, le=10, description="sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass (1.0 = off)")
    max_new_tokens: int = Field(8, ge=1, le=131_072, description="longest completion, in tokens")


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
        4,
        ge=1,
        le=65_536,
        description="optimiser steps per rollout batch per epoch (the paper uses 4)",
    )
    epochs: int = Field(1, ge=1, le=100, description="passes over each rollout batch")
    kl_beta: float = Field(
        0.0, ge=0, description="weight of a k3 KL penalty to the initial model (paper: 0, off)"
    )
    advantage_scale: AdvantageScale = Field(
        "group", description="advantage denominator: the group's reward std, the batch's, or 1"
    )
    max_log_ratio: float = Field(
        10.0, gt=0, description="bound on |log ratio| before exp, so the loss stays finite"
    )
    routing_replay: bool = Field(
        False,
        description="mixture-of-experts models: compute the current policy's log-probs with the "
        "experts π_old chose (gradients still reach the router); a dense model refuses it",
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
    warmup_steps: int = Field(
        0, ge=0, le=MAX_STEPS, description="optimiser steps of linear warm-up from 0"
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    grad_clip: float = Field(1.0, ge=0, description="max global grad norm; 0 turns clipping off")


class TrainSection(_Section):
    steps: int = Field(
        1200, ge=1, le=MAX_STEPS, description="rollout steps (each: sample, score, update)"
    )
    eval_every: int = Field(
        100,
        ge=0,
        le=MAX_STEPS,
        description="rollout steps between evaluations (also at start and end; 0: only those)",
    )
    save_every: int = Field(
        0,
        ge=0,
        le=MAX_STEPS,
        description="rollout steps between checkpoints (0: only at the end and on interruption)",
    )
    microbatch_tokens: int = Field(
        8192,
        ge=0,
        le=16_777_216,
        description="padded tokens per forward pass; minibatches are split into length-sorted "
        "micro-batches with gradient accumulation (0: no split)",
    )
    logprob_chunk_tokens: int = Field(
        LOGPROB_CHUNK_TOKENS,
        ge=0,
        le=1_048_576,
        description="tokens whose full-vocabulary logits exist at once when computing "
        "log-probs (0: all at once)",
    )
    keep_last: int = Field(
        2, ge=1, le=1000, description="complete checkpoints kept; older are deleted"
    )
    max_skipped_steps: int = Field(
        10,
        ge=1,
        le=MAX_STEPS,
        description="optimiser steps in a row with a non-finite loss or gradient before stopping",
    )
    strict: bool = Field(
        False,
        description="stop with a checkpoint and exit code 3 when the watchdog warns (constant "
        "reward, no learning signal, truncated completions, no clipping); false: warn only",
    )
    log_completions: int = Field(
        8,
        ge=0,
        le=MAX_COMPLETIONS,
        description="completions per step written to completions.jsonl (the step's first ones, "
        "group by group); 0: none",
    )


class RewardTerm(_Section):
    name: str = Field(min_length=1, description="a reward name or 'package.module:function'")
    weight: float = Field(1.0, allow_inf_nan=False, description="its weight in the sum")


# A reward is one name or a list of weighted terms; the tag picks the branch, so an error in
# a list is reported once, at its own path, instead of once per union member.
_REWARD_TAGS = ("name", "terms")
RewardSpec = Annotated[
    Annotated[str, Tag("name")] | Annotated[tuple[RewardTerm, ...], Tag("terms")],
    Discriminator(lambda value: "name" if isinstance(value, str) else "terms"),
]


# A run's name becomes a directory name under runs/: no separators, no leading dot.
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


class Recipe(_Section):
    name: str = Field("run", min_length=1, description="run name; the run directory starts with it")
    seed: int = Field(
        0, ge=0, le=2**32 - 1, description="seeds data order, sampling and initialisation"
    )
    reward: RewardSpec = Field(
        description="a reward name (default by task: exact, gsm8k, math_boxed, countdown), a "
        "user function 'package.module:function', or a list of {name, weight} summed; the "
        "first decides correctness"
    )
    model: ModelSection = ModelSection()
    data: DataSection = Field(default_factory=lambda: DataSection.model_validate({}))
    rollout: RolloutSection = RolloutSection()
    algo: AlgoSection = Field(default_factory=lambda: AlgoSection.model_validate({}))
    optim: OptimSection = OptimSection()
    train: TrainSection = TrainSection()

    @model_validator(mode="before")
    @classmethod
    def _reward_follows_task(cls, data: Any) -> Any:
        """An unset reward is the task's checker (exact for addition, gsm8k for gsm8k, ...)."""
        if not isinstance(data, dict) or "reward" in data:
            return data
        section = data.get("data")
        task = section.get("task", "addition") if isinstance(section, dict) else "addition"
        _, _, _, reward = TASK_DEFAULTS.get(task if isinstance(task, str) else "", ("",) * 4)
        return {**data, "reward": reward or "exact"}

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


def _contradictions(recipe: Recipe) -> list[str]:
    """Settings that are each valid but cannot work together."""
    problems = []
    n, m = recipe.completions_per_step, recipe.algo.minibatches
    if n > MAX_COMPLETIONS:
        p, g = recipe.rollout.prompts_per_step, recipe.rollout.group_size
        problems.append(
            f"rollout.prompts_per_step × rollout.group_size: {p} × {g} = {n} completions per "
            f"step is more than the limit of {MAX_COMPLETIONS}, far beyond any real use; lower "
            "either"
        )
        return problems + _data_contradictions(recipe.data)
    if n % m:
        problems.append(_indivisible_minibatches(recipe))
    if m > n:
        problems.append(f"algo.minibatches: {m} is more than the {n} completions per step")
    return problems + _data_contradictions(recipe.data)


def _indivisible_minibatches(recipe: Recipe) -> str:
    """Why the step's completions do not split into equal minibatches, naming every factor,
    with the nearest minibatch counts and prompts per step that would."""
    p, g, m = recipe.rollout.prompts_per_step, recipe.rollout.group_size, recipe.algo.minibatches
    n = p * g
    counts = " or ".join(str(d) for d in _divisors_near(n, m))
    # p' × g divides by m exactly when p' is a multiple of m / gcd(g, m).
    unit = m // math.gcd(g, m)
    sizes = sorted({unit * max(1, p // unit), unit * (p // unit + 1)})
    examples = ", ".join(f"{q} × {g} = {q * g}" for q in sizes)
    return (
        f"algo.minibatches: {m} does not divide the {n} completions per step "
        f"(rollout.prompts_per_step {p} × rollout.group_size {g}), so the minibatches would "
        f"differ in size; set algo.minibatches to {counts} (the nearest divisors of {n}), or "
        f"rollout.prompts_per_step to {' or '.join(map(str, sizes))} ({examples}, each a "
        f"multiple of {m})"
    )


def _divisors_near(n: int, m: int, reach: int = 10_000) -> list[int]:
    """The divisors of `n` nearest to `m` from below and from above (within `reach`).

    >>> _divisors_near(128, 5), _divisors_near(128, 200), _divisors_near(7, 3)
    ([4, 8], [128], [1, 7])
    """
    below = next((d for d in range(min(m, n), max(0, m - reach), -1) if n % d == 0), None)
    above = next((d for d in range(m, min(n, m + reach) + 1) if n % d == 0), None)
    return sorted({d for d in (below, above) if d is not None})


def _data_contradictions(data: DataSection) -> list[str]:
    """A task, its source and its fields must fit together."""
    problems = []
    if data.source is None and data.task not in GENERATED_TASKS:
        problems.append(
            f"data.source: task {data.task} reads a dataset; set data.source to a hub id "
            "(e.g. openai/gsm8k with data.config: main) or a local JSONL/JSON/Parquet file or "
            "folder"
        )
    if data.source is not None and data.task in ("addition", "sums"):
        problems.append(
            f"data.source: the {data.task} task is generated in code and reads no dataset; remove "
            "data.source, or set data.task to gsm8k, math, countdown or custom"
        )
    if data.config is not None and data.source is None:
        problems.append("data.config: a configuration needs a data.source; remove data.config")
    if data.task == "custom" and (data.prompt_field is None or data.answer_field is None):
        problems.append(
            "data.prompt_field/answer_field: task custom has no default field names; set both "
            "to the names of your dataset's question and answer fields"
        )
    if data.source is not None and data.train_split == data.test_split:
        problems.append(
            f"data.test_split: it is the training split too ({data.train_split!r}), so the "
            "evaluation would score examples the policy trained on; name another split"
        )
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
    checker, task_checker = recipe.reward_terms[0][0], TASK_DEFAULTS[recipe.data.task][3]
    if recipe.data.task != "custom" and checker in rewards.REGISTRY and checker != task_checker:
        notes.append(
            f"reward {checker} checks task {recipe.data.task}, whose own checker is "
            f"{task_checker}; set reward: {task_checker} unless that is what you meant"
        )
    if algo.mode != "grpo" and max(algo.clip_low, algo.clip_high) >= 0.01:
        notes.append(
            f"algo.clip_low/clip_high {algo.clip_low}/{algo.clip_high} are GRPO-sized; a sequence "
            "ratio almost never leaves such a range, so clipping is effectively off for "
            f"{algo.mode}; the paper uses 3e-4/4e-4"
        )
    return notes


# --- loading -----------------------------------------------------------------------------


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
