"""One rollout batch: sample G completions per prompt, score them, and fix π_old.

Everything here runs without gradients. The returned `RolloutBatch` holds what the
update needs (sequences, masks, advantages, π_old and reference log-probs); the
`RolloutStats` hold what the metrics row needs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from gspo_cli.data import Example, render_prompt
from gspo_cli.losses import group_advantages
from gspo_cli.policy import Generation, batched_logprobs, generate
from gspo_cli.recipe import Recipe
from gspo_cli.rewards import RewardFn, score
from gspo_cli.rewards import label as reward_label


@dataclass(frozen=True)
class RolloutBatch:
    gen: Generation  # N = prompts × G rows, the G completions of a prompt adjacent
    rewards: torch.Tensor  # [N]
    advantages: torch.Tensor  # [N]
    old_logprobs: torch.Tensor  # [N, T] log π_old, fixed for every minibatch and epoch
    ref_logprobs: torch.Tensor | None  # [N, T] frozen reference, only when kl_beta > 0


@dataclass(frozen=True)
class RolloutStats:
    reward_mean: float
    reward_std: float
    zero_std_frac: float
    completion_len_mean: float
    completion_len_max: int
    truncated_frac: float
    completion_tokens: int
    sample_s: float
    score_s: float
    old_logprob_s: float

    @property
    def seconds(self) -> float:
        """Sampling, scoring and π_old log-probs together."""
        return self.sample_s + self.score_s + self.old_logprob_s


@torch.no_grad()
def collect(
    model: Any,
    ref_model: Any | None,
    tokenizer: Any,
    examples: list[Example],
    reward_fn: RewardFn,
    recipe: Recipe,
) -> tuple[RolloutBatch, RolloutStats]:
    """Sample, score and compute advantages and π_old log-probs for one rollout step."""
    g, temperature = recipe.rollout.group_size, recipe.rollout.temperature
    started = time.perf_counter()
    prompts = [render_prompt(tokenizer, e.prompt) for e in examples for _ in range(g)]
    gen = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=recipe.rollout.max_new_tokens,
        temperature=temperature,
        top_p=recipe.rollout.top_p,
    )
    sampled = time.perf_counter()

    references = [e.reference for e in examples for _ in range(g)]
    label = reward_label(recipe.reward_terms)
    rewards = torch.tensor(score(reward_fn, label, gen.texts, references))  # [N]
    advantages, zero_std_frac = group_advantages(rewards, g, scale=recipe.algo.advantage_scale)
    scored = time.perf_counter()

    budget, chunk = recipe.train.microbatch_tokens, recipe.train.logprob_chunk_tokens
    old = batched_logprobs(
        model, gen, temperature=temperature, max_tokens=budget, chunk_tokens=chunk
    )  # [N, T]
    ref = None
    if ref_model is not None:
        ref = batched_logprobs(
            ref_model, gen, temperature=temperature, max_tokens=budget, chunk_tokens=chunk
        )  # [N, T]
    done = time.perf_counter()

    lengths = gen.completion_mask.sum(dim=1)  # [N]
    batch = RolloutBatch(gen, rewards, advantages.to(old.device), old, ref)
    stats = RolloutStats(
        reward_mean=rewards.mean().item(),
        reward_std=rewards.std().item() if rewards.numel() > 1 else 0.0,
        zero_std_frac=zero_std_frac,
        completion_len_mean=lengths.mean().item(),
        completion_len_max=int(lengths.max().item()),
        truncated_frac=gen.truncated.float().mean().item(),
        completion_tokens=int(lengths.sum().item()),
        sample_s=sampled - started,
        score_s=scored - sampled,
        old_logprob_s=done - scored,
    )
    return batch, stats
