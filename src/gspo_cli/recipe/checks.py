"""Checks across fields: contradictions (errors), a process count that does not fit, and
warnings (legal settings that are probably not what the user meant)."""

from __future__ import annotations

import math

from gspo_cli import rewards
from gspo_cli.base.constants import SEQUENCE_MODES
from gspo_cli.base.errors import RecipeError
from gspo_cli.recipe.schema import Recipe
from gspo_cli.recipe.sections import (
    MAX_COMPLETIONS,
    AlgoSection,
    DataSection,
    RolloutSection,
)
from gspo_cli.recipe.tasks import GENERATED_TASKS, TASK_DEFAULTS


def contradictions(
    rollout: RolloutSection | None, algo: AlgoSection | None, data: DataSection | None
) -> list[str]:
    """Settings that are each valid but cannot work together. A section that did not
    validate is None; the checks that need it are skipped (its own problems are reported)."""
    problems = [] if rollout is None else _batch_contradictions(rollout, algo)
    return problems + ([] if data is None else _data_contradictions(data))


def _batch_contradictions(rollout: RolloutSection, algo: AlgoSection | None) -> list[str]:
    """The step's completions must be few enough and split into equal minibatches."""
    p, g = rollout.prompts_per_step, rollout.group_size
    n = p * g
    if n > MAX_COMPLETIONS:
        return [
            f"rollout.prompts_per_step × rollout.group_size: {p} × {g} = {n} completions per "
            f"step is more than the limit of {MAX_COMPLETIONS}, far beyond any real use; lower "
            "either"
        ]
    problems = _overlong_contradictions(rollout)
    if algo is None:
        return problems
    m = algo.minibatches
    problems += [_indivisible_minibatches(p, g, m)] if n % m else []
    if m > n:
        problems.append(f"algo.minibatches: {m} is more than the {n} completions per step")
    return problems


def _overlong_contradictions(rollout: RolloutSection) -> list[str]:
    """DAPO's soft punishment ramps over the last overlong_buffer tokens before the limit."""
    buffer, limit = rollout.overlong_buffer, rollout.max_new_tokens
    if buffer < limit:
        return []
    return [
        f"rollout.overlong_buffer: {buffer} tokens is not shorter than rollout.max_new_tokens "
        f"{limit}, so every completion would be punished for its length; set it below {limit} "
        f"(DAPO: a quarter of the limit, here {max(1, limit // 4)}) or to 0 (off)"
    ]


def _indivisible_minibatches(p: int, g: int, m: int) -> str:
    """Why p prompts × g completions do not split into m equal minibatches, naming every
    factor, with the nearest minibatch counts and prompts per step that would."""
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
    if algo.mode in SEQUENCE_MODES and algo.minibatches == 1 and algo.epochs == 1:
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
    if algo.mode in SEQUENCE_MODES and max(algo.clip_low, algo.clip_high) >= 0.01:
        notes.append(
            f"algo.clip_low/clip_high {algo.clip_low}/{algo.clip_high} are GRPO-sized; a sequence "
            "ratio almost never leaves such a range, so clipping is effectively off for "
            f"{algo.mode}; the paper uses 3e-4/4e-4"
        )
    return notes
