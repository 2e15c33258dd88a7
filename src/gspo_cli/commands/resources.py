"""Memory: the peak of one training step, estimated from the recipe and the model's config
alone (no weights load), against what this machine has free.

The parts, per process, in bytes:

- weights: parameters × dtype bytes (counted by building the model on the `meta` device);
- gradients: the same again; AdamW's state: two more copies (exp_avg, exp_avg_sq), in the
  parameters' dtype; under FSDP with N processes each process holds 1/N of these three;
- the reference model (`algo.kl_beta` > 0): one more copy of the weights (sharded the same);
- sampling: the KV cache of this process's rows (`prompts_per_step / N × group_size`) at
  `prompt + rollout.max_new_tokens` tokens: layers × 2 (K, V) × kv_heads × head_dim × dtype
  bytes per token; under FSDP the weights are gathered for generation, so the other (N-1)/N
  of the weights (and of the reference) come back for it;
- training: the log-prob chunk (`train.logprob_chunk_tokens × vocab × 4` bytes × 2: logits
  and their gradient buffer; platform notes: ~1.2 GB measured for 1,024 tokens of Qwen3's
  151,936-word vocabulary, 0.62 GB per copy) and the activations one micro-batch keeps for
  backward: tokens × hidden × layers × 24 values × dtype bytes. 24 follows Korthikanti et al.
  (2022), 34 bytes per token and hidden unit per layer at 16 bits (17 values), with room for
  SwiGLU's wider MLP (3 × hidden: gate, up, their product and its input); attention scores are
  not kept (SDPA), and the logits are the log-prob chunk's.

Sampling and training never hold their memory at the same time, so the peak is the fixed
parts plus the larger of the two. Prompts are taken as `data.max_prompt_tokens` long (longer
ones are dropped), else 512 tokens, never more than the context leaves: `gspo train` decides
before any data is read, and `gspo check` shows the same figures.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gspo_cli.base.constants import ROUTER_NAMES
from gspo_cli.base.errors import UserError
from gspo_cli.commands.prepare import ContextFit
from gspo_cli.recipe import Recipe

GIB = 1024**3
ADAMW_STATES = 2  # exp_avg and exp_avg_sq, each the size of the parameters
LOGPROB_COPIES = 2  # a chunk's float32 logits and the buffer their gradient is built in
ACTIVATION_VALUES = 24  # values kept for backward per token, hidden unit and layer
PROMPT_TOKENS_UNKNOWN = 512  # the prompt length assumed before the data is read (no limit set)


@dataclass(frozen=True)
class ModelShape:
    """What the estimate reads from a model's config."""

    params: int  # parameters (tied weights once)
    layers: int
    hidden: int
    kv_heads: int
    head_dim: int
    vocab: int
    context: int | None  # max_position_embeddings; None when the config gives none
    # LoRA: per linear-layer leaf name inside the decoder (q_proj, ...), the sum of
    # in + out features over the layers; rank r adds r × that many adapter parameters
    linears: dict[str, int] = field(default_factory=dict)

    def adapter_params(self, rank: int, targets: tuple[str, ...] | None) -> int:
        """Parameters of LoRA adapters of rank `rank` on `targets` (None: the defaults,
        every projection but an MoE router, as `models.lora.default_targets`)."""
        names = targets or tuple(k for k in self.linears if k not in ROUTER_NAMES)
        return rank * sum(self.linears.get(name, 0) for name in names)


def model_config(name: str) -> Any:
    """The config of model `name` (an embedded name, a local directory or a hub id), no
    weights; a ModelError when it cannot be read."""
    from gspo_cli.models.loading import check_model_source, load_error
    from gspo_cli.models.tiny import EMBEDDED_MODELS, tiny_config

    if name in EMBEDDED_MODELS:
        return tiny_config(name)
    from transformers import AutoConfig

    source = check_model_source(name)
    try:
        config = AutoConfig.from_pretrained(source)
    except Exception as exc:
        raise load_error(name, exc, Path(source)) from None
    return config.get_text_config()


def model_shape(config: Any) -> ModelShape:
    """The shape of `config`'s model; parameters counted on the `meta` device (no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    context = getattr(config, "max_position_embeddings", None)
    head = model.get_output_embeddings()
    linears: dict[str, int] = {}
    for name, module in model.base_model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            leaf = name.rsplit(".", 1)[-1]
            linears[leaf] = linears.get(leaf, 0) + module.in_features + module.out_features
    return ModelShape(
        linears=linears,
        params=sum(p.numel() for p in model.parameters()),
        layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        vocab=config.vocab_size,
        context=context if isinstance(context, int) and context > 0 else None,
    )


def context_fit(name: str, max_new_tokens: int) -> ContextFit | None:
    """How long a prompt model `name` has room for, or None when its config names no
    context length."""
    context = getattr(model_config(name), "max_position_embeddings", None)
    if not isinstance(context, int) or context <= 0:
        return None
    return ContextFit(context, max_new_tokens)


def prompt_tokens(recipe: Recipe, context: int | None) -> int:
    """The prompt length the estimate assumes: data.max_prompt_tokens, else
    PROMPT_TOKENS_UNKNOWN; never more than the context leaves.

    >>> from gspo_cli.recipe import load_recipe
    >>> recipe = load_recipe(None)  # max_new_tokens 8
    >>> prompt_tokens(recipe, 256), prompt_tokens(recipe, None), prompt_tokens(recipe, 100_000)
    (248, 512, 512)
    """
    guess = recipe.data.max_prompt_tokens or PROMPT_TOKENS_UNKNOWN
    if context is not None:
        guess = min(guess, max(1, context - recipe.rollout.max_new_tokens))
    return guess


@dataclass(frozen=True)
class MemoryEstimate:
    """The peak of one training step on one process, by part (bytes), and what is free."""

    fixed: dict[str, int]  # held throughout: weights, gradients, optimiser, reference
    sampling: dict[str, int]  # held while sampling: KV cache (and gathered shards)
    training: dict[str, int]  # held during a micro-batch's forward and backward
    available: int | None  # bytes free for this process; None when unknown
    device: str  # "cuda" or "cpu"
    row_tokens: int  # prompt + max_new_tokens, as assumed

    @property
    def total(self) -> int:
        return sum(self.fixed.values()) + max(
            sum(self.sampling.values()), sum(self.training.values())
        )

    @property
    def parts(self) -> dict[str, int]:
        return {**self.fixed, **self.sampling, **self.training}

    @property
    def biggest(self) -> tuple[str, int]:
        return max(self.parts.items(), key=lambda item: item[1])

    @property
    def fits(self) -> bool:
        return self.available is None or self.total <= self.available

    def rows(self) -> list[tuple[str, str, str]]:
        """(part, size, phase) per part, then the peak and what is free, as `gspo check`
        shows them."""
        phases = [("held throughout", self.fixed), ("while sampling", self.sampling)]
        phases.append(("per micro-batch (training)", self.training))
        rows = [(part, gib(size), phase) for phase, parts in phases for part, size in parts.items()]
        rows.append(("peak", gib(self.total), "held throughout + the larger of the other two"))
        free = "unknown" if self.available is None else gib(self.available)
        rows.append(("free", free, self.device))
        return rows

    def summary(self) -> str:
        """One line: the total against what is free, and the biggest part."""
        part, size = self.biggest
        free = f"{gib(self.available)} free" if self.available is not None else "free unknown"
        return (
            f"memory estimate {gib(self.total)} per process of {free} on {self.device} "
            f"(largest part: {part} {gib(size)})"
        )


def gib(size: int | None) -> str:
    """Bytes in GiB, as the estimate prints them.

    >>> gib(3 * 1024**3), gib(5 * 1024**2)
    ('3.00 GiB', '0.005 GiB')
    """
    if size is None:
        return "?"
    value = size / GIB
    return f"{value:.2f} GiB" if value >= 0.1 else f"{value:.3f} GiB"


def estimate(
    recipe: Recipe,
    shape: ModelShape,
    dtype_bytes: int,
    world_size: int = 1,
    prompt: int = PROMPT_TOKENS_UNKNOWN,
    available: int | None = None,
    device: str = "cpu",
) -> MemoryEstimate:
    """The estimate of one training step of `recipe` on one of `world_size` processes, with
    prompts of `prompt` tokens. Pure: every figure follows from the arguments."""
    weights = shape.params * dtype_bytes  # bytes, whole model
    shard = -(-weights // world_size)  # bytes each process holds under FSDP
    lora = recipe.model.lora
    # policy (+ the frozen reference; with LoRA the reference is the adapter switched off)
    copies = 2 if recipe.algo.kl_beta > 0 and lora is None else 1
    trained = shard  # bytes of the trained weights (their gradients, each AdamW state)
    if lora is not None:  # peft keeps adapters in float32
        trained = -(-shape.adapter_params(lora.rank, lora.target_modules) * 4 // world_size)
    fixed = {
        "weights": shard + (trained if lora is not None else 0),
        "gradients": trained,
        "optimiser (AdamW)": ADAMW_STATES * trained,
    }
    if copies == 2:
        fixed["reference model"] = shard
    row_tokens = prompt + recipe.rollout.max_new_tokens
    rows = recipe.rollout.prompts_per_step // world_size * recipe.rollout.group_size
    kv_per_token = shape.layers * 2 * shape.kv_heads * shape.head_dim * dtype_bytes  # bytes
    sampling = {"KV cache (sampling)": rows * row_tokens * kv_per_token}
    if world_size > 1:  # the shards gathered around generation
        sampling["gathered weights (sampling)"] = copies * (weights - shard)
    tokens = forward_tokens(recipe, row_tokens, rows)
    chunk = min(recipe.train.logprob_chunk_tokens or tokens, tokens)
    training = {
        "log-prob chunk": LOGPROB_COPIES * chunk * shape.vocab * 4,  # float32 logits
        "activations": tokens * shape.hidden * shape.layers * ACTIVATION_VALUES * dtype_bytes,
    }
    return MemoryEstimate(fixed, sampling, training, available, device, row_tokens)


def forward_tokens(recipe: Recipe, row_tokens: int, rows_here: int) -> int:
    """Padded tokens in one micro-batch: whole rows up to `train.microbatch_tokens` (at least
    one row), never more rows than a minibatch gives this process.

    >>> from gspo_cli.recipe import load_recipe
    >>> forward_tokens(load_recipe(None), 100, 128)  # 8192 // 100 = 81 rows > 32 per minibatch
    3200
    """
    rows = min(recipe.responses_per_minibatch, rows_here)
    budget = recipe.train.microbatch_tokens
    fit = max(1, budget // row_tokens) if budget else rows
    return min(fit, rows) * row_tokens


def available_memory(device: str) -> int | None:
    """Bytes free now: the GPU's free memory on CUDA, MemAvailable (else the free pages) on
    CPU; None when neither can be read."""
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(int(os.environ.get("LOCAL_RANK", "0")))
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def estimate_for(recipe: Recipe, world_size: int = 1) -> MemoryEstimate:
    """The estimate for `recipe` on this machine: its model's config, the dtype it will
    train in, and the memory free here (on CPU shared by the processes of this machine)."""
    from gspo_cli.models.loading import pick_device, pick_dtype

    shape = model_shape(model_config(recipe.model.name))
    device = pick_device()
    dtype_bytes = pick_dtype(recipe.model.dtype, device).itemsize
    available = available_memory(device.type)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    if available is not None and device.type == "cpu":
        available //= max(1, local)
    prompt = prompt_tokens(recipe, shape.context)
    return estimate(recipe, shape, dtype_bytes, world_size, prompt, available, device.type)


# The setting that shrinks each part, for the refusal's "what to do".
REMEDIES = {
    "weights": "a smaller model.name or model.dtype: bfloat16",
    "gradients": "a smaller model.name or model.dtype: bfloat16",
    "optimiser (AdamW)": "a smaller model.name or model.dtype: bfloat16 (or more processes)",
    "reference model": "algo.kl_beta: 0 (no reference copy) or model.dtype: bfloat16",
    "KV cache (sampling)": "lower rollout.prompts_per_step, rollout.group_size or "
    "rollout.max_new_tokens (or set data.max_prompt_tokens)",
    "gathered weights (sampling)": "a smaller model.name or model.dtype: bfloat16",
    "log-prob chunk": "lower train.logprob_chunk_tokens",
    "activations": "lower train.microbatch_tokens",
}


def require_memory(estimated: MemoryEstimate) -> None:
    """A UserError (exit 2) when the estimate exceeds the memory free, naming the figures
    and the setting that shrinks the biggest part."""
    if estimated.fits:
        return
    part, size = estimated.biggest
    raise UserError(
        f"this recipe needs about {gib(estimated.total)} per process but {gib(estimated.available)}"
        f" is free on {estimated.device}; the largest part is the {part} ({gib(size)}, at "
        f"{estimated.row_tokens} tokens per row); {REMEDIES[part]}"
    )


def check_room(fit: ContextFit | None) -> None:
    """A UserError when rollout.max_new_tokens alone fills the model's context."""
    if fit is not None and fit.room < 1:
        raise UserError(
            f"rollout.max_new_tokens {fit.new_tokens} leaves no room for a prompt in the "
            f"model's context of {fit.context} tokens; set it below {fit.context}"
        )


def preflight(recipe: Recipe, world_size: int = 1) -> MemoryEstimate:
    """Before a run directory or a model exists: room for a prompt in the context, and an
    estimate of the step's memory that fits what is free here (else a UserError)."""
    check_room(context_fit(recipe.model.name, recipe.rollout.max_new_tokens))
    estimated = estimate_for(recipe, world_size)
    require_memory(estimated)
    return estimated
