"""Recipe names and numbers that the torch-only modules need too, without pydantic.

`losses` and the `scoring` modules import only torch and the standard library, so the
algorithm modes, the advantage scales and the log-prob chunk default live here, and the
recipe's fields use them: each is written once, here, and nowhere else.
"""

from __future__ import annotations

from typing import Literal

# The algorithms: sequence-level ratio, token-level ratio (the ablation), GSPO's token form.
Mode = Literal["gspo", "grpo", "gspo_token"]

# The advantage denominator: the group's reward std, the batch's, or 1.
AdvantageScale = Literal["group", "batch", "none"]

# Tokens whose full-vocabulary logits exist at once when computing log-probs: the default of
# `train.logprob_chunk_tokens`, and of the log-prob functions when called without a recipe.
LOGPROB_CHUNK_TOKENS = 1024

# Leaf names of linear layers that are mixture-of-experts routers, not projections (Qwen2/3-MoE,
# Mixtral, OLMoE: `gate`; GPT-OSS: `router`): LoRA's default targets leave them out.
ROUTER_NAMES = ("gate", "router")
