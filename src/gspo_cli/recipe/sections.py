"""The recipe's sections: one frozen pydantic model each, with every default on its field.

Also the tables the defaults come from (the paper's clip ranges and advantage scale per mode)
and the size limits, so that a typo is refused at load time; each task's defaults are in
`tasks`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gspo_cli.base.constants import LOGPROB_CHUNK_TOKENS, AdvantageScale, Mode
from gspo_cli.recipe.tasks import Task, task_answer_field, task_instruction, task_prompt_field

# Paper settings (GSPO §5.1 and the GRPO baseline; each variant's paper, cited in `losses`).
# GSPO's ratio is a per-token geometric mean, so its clip range is three orders of magnitude
# tighter than GRPO's. CISPO's low bound of 1 is none (the weight is clipped to [0, 5]);
# GMPO's range is in log space (the token ratio stays in [e^-0.4, e^0.4]).
DEFAULT_CLIP: dict[str, tuple[float, float]] = {
    "gspo": (3e-4, 4e-4),
    "gspo_token": (3e-4, 4e-4),
    "grpo": (0.2, 0.27),
    "dr_grpo": (0.2, 0.2),
    "dapo": (0.2, 0.28),
    "cispo": (1.0, 4.0),
    "gmpo": (0.4, 0.4),
}

# Dr. GRPO drops the std from the advantage (its difficulty bias); every other mode keeps it.
DEFAULT_ADVANTAGE_SCALE: dict[str, AdvantageScale] = {mode: "group" for mode in DEFAULT_CLIP}
DEFAULT_ADVANTAGE_SCALE["dr_grpo"] = "none"


# Upper bounds on sizes: far beyond any real use, low enough that a typo (an extra three
# zeros) is refused here instead of hanging or exhausting memory later.
MAX_STEPS = 10_000_000
MAX_COMPLETIONS = 262_144  # prompts_per_step × group_size, per rollout step


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# LoRA's learning rate: about 10x a full fine-tune's (optim.lr's default, 3e-5). The adapter's
# update is a low-rank product that starts at zero, so each step moves the model less than a
# full-rank step of the same size; LoRA RL recipes (and peft's examples) use about 10x.
LORA_LR = 3e-4


class LoraSection(_Section):
    rank: int = Field(16, ge=1, le=4096, description="LoRA rank r of each adapter")
    alpha: float = Field(
        32.0, gt=0, le=1e6, description="LoRA alpha; the adapter's update is scaled by alpha / rank"
    )
    dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="dropout on the adapter's input; 0 keeps an on-policy ratio exactly 1 (RL)",
    )
    target_modules: tuple[str, ...] | None = Field(
        None,
        description="module names to adapt (peft's suffix match, e.g. [q_proj, v_proj]); null: "
        "every linear projection of attention and MLP, never the output head or an MoE router",
    )
    lr: float = Field(
        LORA_LR,
        gt=0,
        description="AdamW learning rate of the adapter weights, used instead of optim.lr: "
        "LoRA RL needs about 10x a full fine-tune's (the low-rank update starts at zero)",
    )


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
    lora: LoraSection | None = Field(
        None,
        description='train LoRA adapters (through peft: pip install "gspo-cli[lora]") instead '
        "of every weight; null: full fine-tuning",
    )


# Default factories of the fields that follow an earlier one: pydantic passes the fields
# validated so far (and calls none of them when an earlier field failed).


def mode_clip_low(data: dict[str, Any]) -> float:
    """`algo.clip_low`'s default: the mode's paper setting (DEFAULT_CLIP)."""
    return DEFAULT_CLIP[data["mode"]][0]


def mode_clip_high(data: dict[str, Any]) -> float:
    """`algo.clip_high`'s default: the mode's paper setting (DEFAULT_CLIP)."""
    return DEFAULT_CLIP[data["mode"]][1]


def mode_advantage_scale(data: dict[str, Any]) -> AdvantageScale:
    """`algo.advantage_scale`'s default: the mode's paper setting (DEFAULT_ADVANTAGE_SCALE)."""
    return DEFAULT_ADVANTAGE_SCALE[data["mode"]]


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
        default_factory=task_prompt_field,
        description="field holding the question (countdown: the numbers); default (also for "
        "null): data.task's",
    )
    answer_field: str | None = Field(
        default_factory=task_answer_field,
        description="field holding the reference answer (countdown: the target); default (also "
        "for null): data.task's",
    )
    instruction: str = Field(
        default_factory=task_instruction,
        description="text appended to every prompt (after a blank line); default: data.task's",
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
    def _null_field_names_are_unset(cls, data: Any) -> Any:
        """A null prompt_field or answer_field is unset, so it takes the task's default: a
        run's recipe.yaml spells out a generated task's nulls, and a new task fills them."""
        if not isinstance(data, dict):
            return data
        fields = ("prompt_field", "answer_field")
        return {k: v for k, v in data.items() if v is not None or k not in fields}


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
    # DAPO's rollout-side techniques (Yu et al. 2025, arXiv 2503.14476, §3.2 and §3.4).
    dynamic_sampling: bool = Field(
        False,
        description="DAPO dynamic sampling: drop groups whose G rewards are all equal and "
        "sample more prompts until the step has prompts_per_step informative groups",
    )
    max_extra_rounds: int = Field(
        4,
        ge=0,
        le=1000,
        description="dynamic sampling: extra rounds of prompts_per_step prompts per step at "
        "most; when they run out, the step fills up with dropped groups (metric dynamic/cap_hit)",
    )
    overlong_filter: bool = Field(
        False,
        description="DAPO overlong filtering: completions cut at max_new_tokens without an EOS "
        "are masked out of the loss (their rewards still count in their group's advantages)",
    )
    overlong_buffer: int = Field(
        0,
        ge=0,
        le=131_072,
        description="DAPO overlong soft punishment: a penalty growing linearly to "
        "overlong_penalty over the last this many tokens before max_new_tokens, added to the "
        "reward; 0: off",
    )
    overlong_penalty: float = Field(
        1.0,
        ge=0,
        le=100,
        description="the soft punishment at max_new_tokens (DAPO: 1.0), subtracted from the reward",
    )


class AlgoSection(_Section):
    mode: Mode = Field(
        "gspo",
        description="'gspo' (sequence-level ratio), 'grpo' (token-level ratio, the ablation), "
        "'gspo_token' (GSPO's token form, for per-token advantages), or a GRPO variant: "
        "'dr_grpo', 'dapo', 'cispo', 'gmpo' (the README's algorithm table)",
    )
    clip_low: float = Field(
        default_factory=mode_clip_low,
        description="ε_low: ratios below 1-ε_low are clipped (gmpo: log-ratios below -ε_low; "
        "1: no lower bound); default: algo.mode's, 3e-4 for gspo and gspo_token, 0.2 for grpo, "
        "dr_grpo and dapo, 1 for cispo, 0.4 for gmpo",
        gt=0,
        le=1,
    )
    clip_high: float = Field(
        default_factory=mode_clip_high,
        description="ε_high: ratios above 1+ε_high are clipped (gmpo: log-ratios above "
        "ε_high); default: algo.mode's, 4e-4 for gspo and gspo_token, 0.27 for grpo, 0.2 for "
        "dr_grpo, 0.28 for dapo, 4 for cispo, 0.4 for gmpo",
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
        default_factory=mode_advantage_scale,
        description="advantage denominator: the group's reward std, the batch's, or 1; "
        "default: algo.mode's, 'none' for dr_grpo, 'group' for every other mode",
    )
    max_log_ratio: float = Field(
        10.0, gt=0, description="bound on |log ratio| before exp, so the loss stays finite"
    )
    routing_replay: bool = Field(
        False,
        description="mixture-of-experts models: compute the current policy's log-probs with the "
        "experts π_old chose (gradients still reach the router); a dense model refuses it",
    )
    tis: bool = Field(
        False,
        description="truncated importance sampling (Yao et al. 2025): weight each token's loss "
        "by min(π_old / π_sampler, tis_cap), correcting the gap between the sampler's and the "
        "trainer's log-probs (bf16, MoE); a no-op where π_old is the sampler's own",
    )
    tis_cap: float = Field(
        2.0, ge=1, le=1000, description="C, the cap on the TIS weight (Yao et al. 2025: 2)"
    )


class OptimSection(_Section):
    lr: float = Field(3e-5, ge=0, description="AdamW learning rate (after warm-up; constant)")
    warmup_steps: int = Field(
        0, ge=0, le=MAX_STEPS, description="optimiser steps of linear warm-up from 0"
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    grad_clip: float = Field(1.0, ge=0, description="max global grad norm; 0 turns clipping off")


Tracker = Literal["tensorboard", "wandb", "mlflow", "trackio"]


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
    report_to: tuple[Tracker, ...] = Field(
        (),
        max_length=4,
        description="experiment trackers that also get every metrics row, the recipe and the "
        "completions samples, all offline: tensorboard, wandb, mlflow, trackio (each an extra: "
        'pip install "gspo-cli[NAME]"); none by default',
    )


class RewardTerm(_Section):
    name: str = Field(min_length=1, description="a reward name or 'package.module:function'")
    weight: float = Field(1.0, allow_inf_nan=False, description="its weight in the sum")
