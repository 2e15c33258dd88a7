"""Recipe names and numbers that the torch-only modules need too, without pydantic.

`losses` and the `scoring` modules import only torch and the standard library, so the
algorithm modes, the advantage scales and the log-prob chunk default live here, and the
recipe's fields use them: each is written once, here, and nowhere else.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

# The algorithms: GSPO (sequence-level ratio), GRPO (token-level ratio, the ablation), GSPO's
# token form, and the GRPO family's variants (`losses` has each one's equations and source).
Mode = Literal["gspo", "grpo", "gspo_token", "dr_grpo", "dapo", "cispo", "gmpo"]

# Modes whose ratio is GSPO's sequence ratio: their clip range is ~1e-4 wide, and with one
# on-policy minibatch they reduce to GRPO with sequence-mean aggregation.
SEQUENCE_MODES: tuple[str, ...] = ("gspo", "gspo_token")

# Modes whose loss is a token mean over the whole minibatch (DAPO's token-level loss, CISPO):
# a micro-batch's share of the minibatch is its share of the tokens, not of the responses.
MINIBATCH_TOKEN_MODES: tuple[str, ...] = ("dapo", "cispo")


class ModeInfo(NamedTuple):
    """What a mode is, in words: the README's algorithm table and `gspo compare`'s report."""

    ratio: str  # the importance ratio and how it is clipped
    aggregation: str  # how per-token or per-response terms become the loss
    source: str  # the paper


MODE_INFO: dict[str, ModeInfo] = {
    "gspo": ModeInfo(
        "sequence (geometric mean of token ratios), clipped",
        "mean over responses",
        "Zheng et al. 2025, arXiv 2507.18071",
    ),
    "gspo_token": ModeInfo(
        "sequence value, token gradient (GSPO-token), clipped",
        "token mean per response, mean over responses",
        "Zheng et al. 2025, arXiv 2507.18071 §4.3",
    ),
    "grpo": ModeInfo(
        "token, clipped",
        "token mean per response, mean over responses",
        "Shao et al. 2024, arXiv 2402.03300",
    ),
    "dr_grpo": ModeInfo(
        "token, clipped",
        "token sum per response / max_new_tokens, mean over responses",
        "Liu et al. 2025, arXiv 2503.20783",
    ),
    "dapo": ModeInfo(
        "token, clipped (clip-higher)",
        "token mean over the whole minibatch",
        "Yu et al. 2025, arXiv 2503.14476",
    ),
    "cispo": ModeInfo(
        "token, weight truncated and detached, times log-prob",
        "token mean over the whole minibatch",
        "MiniMax 2025, arXiv 2506.13585",
    ),
    "gmpo": ModeInfo(
        "token, clipped in log space",
        "geometric mean per response, mean over responses",
        "Zhao et al. 2025, arXiv 2507.20673",
    ),
}

# The advantage denominator: the group's reward std, the batch's, or 1.
AdvantageScale = Literal["group", "batch", "none"]

# Tokens whose full-vocabulary logits exist at once when computing log-probs: the default of
# `train.logprob_chunk_tokens`, and of the log-prob functions when called without a recipe.
LOGPROB_CHUNK_TOKENS = 1024

# Leaf names of linear layers that are mixture-of-experts routers, not projections (Qwen2/3-MoE,
# Mixtral, OLMoE: `gate`; GPT-OSS: `router`): LoRA's default targets leave them out.
ROUTER_NAMES = ("gate", "router")
