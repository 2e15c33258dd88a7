"""One rollout batch: sample G completions per prompt, fix π_old, score them, and put the
step's batch together.

`sample` → `score_samples` → (`advantages.group_advantages`) → `assemble`, the stages
`train.run` calls in order. Everything here runs
without gradients. The returned `RolloutBatch` holds what the update needs (sequences,
masks, advantages, π_old and reference log-probs); the `RolloutStats` hold what the
metrics row needs.

Across N processes each rank samples its own share of the prompts (all G completions of
each), then the pieces are gathered, so every rank returns the same, whole batch: the
one a single process would have sampled. Completion row i of step s is always sampled
with the seed `derive(seed, "sample", s, i)`, whichever rank samples it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from gspo_cli.base import distributed
from gspo_cli.base.distributed import SINGLE, Cluster
from gspo_cli.base.seeding import derive
from gspo_cli.data import Example, render_prompt
from gspo_cli.recipe import Recipe
from gspo_cli.rewards import RewardFn, score
from gspo_cli.rewards import label as reward_label
from gspo_cli.rollout import dapo, mismatch
from gspo_cli.rollout.sampling import Generation, generate, sampler_logprobs_suffice
from gspo_cli.scoring import routing
from gspo_cli.scoring.completions import batched_logprobs, causal_lm
from gspo_cli.scoring.microbatch import MicroBatch


@dataclass(frozen=True)
class RolloutBatch:
    gen: Generation  # N = prompts × G rows, the G completions of a prompt adjacent
    rewards: torch.Tensor  # [N]
    advantages: torch.Tensor  # [N]
    old_logprobs: torch.Tensor  # [N, T] log π_old, fixed for every minibatch and epoch
    ref_logprobs: torch.Tensor | None  # [N, T] frozen reference, only when kl_beta > 0
    # [N, P+T, L, k] experts π_old chose per (row, column, MoE layer); None for a dense model
    old_experts: torch.Tensor | None = None
    # [N, T] the loss's mask: the completion mask with filtered rows (overlong) zeroed; None:
    # the completion mask itself
    loss_mask: torch.Tensor | None = None
    # [N, T] per-token loss weights (TIS), detached; None: all 1
    token_weights: torch.Tensor | None = None

    @property
    def in_loss(self) -> torch.Tensor:
        """[N, T] the tokens the loss counts: `loss_mask`, or else the completion mask."""
        return self.gen.completion_mask if self.loss_mask is None else self.loss_mask


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
    # namespaced figures of the options that shape the batch (dynamic/*, overlong/*, tis/*)
    # and the mismatch ledger (mismatch/*)
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        """Sampling, scoring and π_old log-probs together."""
        return self.sample_s + self.score_s + self.old_logprob_s

    def as_row(self) -> dict[str, float]:
        """The metrics row's rollout part: every field, `extra` flattened into it."""
        row = {k: v for k, v in self.__dict__.items() if k != "extra"}
        return {**row, **self.extra}


@dataclass(frozen=True)
class Samples:
    """This rank's share of a step before scoring: its G completions per prompt and their
    log-probs under π_old (the policy that sampled them) and the reference."""

    gen: Generation  # n = its prompts × G rows
    old_logprobs: torch.Tensor  # [n, T]
    ref_logprobs: torch.Tensor | None  # [n, T], only when kl_beta > 0
    old_experts: torch.Tensor | None  # [n, P+T, L, k] π_old's expert choices (MoE), else None
    sample_s: float
    old_logprob_s: float


@torch.no_grad()
def sample(
    policy: Any,
    ref_policy: Any | None,
    tokenizer: Any,
    examples: list[Example],
    recipe: Recipe,
    step: int = 0,
    cluster: Cluster = SINGLE,
    round_: int = 0,
) -> Samples:
    """G completions of each of this rank's `examples` with the current policy, which is
    π_old for the step, and their log-probs under π_old (from the sampling pass itself when
    that is exact, else a separate forward that also records MoE routing) and the reference;
    `gen.logprobs` holds the sampler's own log-probs either way (the mismatch ledger).
    Completion row i of the step's round r (dynamic sampling samples more rounds) is sampled
    with seed `derive(seed, "sample", step, r * N + i)`, N the completions per round."""
    g, temperature = recipe.rollout.group_size, recipe.rollout.temperature
    started = time.perf_counter()
    # this share's first row in the whole step, counting the rounds before
    first_row = (round_ * cluster.world_size + cluster.rank) * len(examples) * g
    seeds = [derive(recipe.seed, "sample", step, first_row + i) for i in range(len(examples) * g)]
    prompts = [render_prompt(tokenizer, e.prompt) for e in examples for _ in range(g)]
    budget, chunk = recipe.train.microbatch_tokens, recipe.train.logprob_chunk_tokens
    with distributed.unsharded(policy, ref_policy):
        gen = generate(
            causal_lm(policy),
            tokenizer,
            prompts,
            max_new_tokens=recipe.rollout.max_new_tokens,
            temperature=temperature,
            top_p=recipe.rollout.top_p,
            seeds=seeds,
            sampler_logprobs=True,
        )
        sampled = time.perf_counter()
        old_experts, around = _routing_recorder(policy, gen)
        old = gen.logprobs  # [n, T] from sampling itself, when that is exact enough
        if old is None or around is not None or not sampler_logprobs_suffice(causal_lm(policy)):
            # a separate π_old forward (records MoE routing)
            old = batched_logprobs(
                policy,
                gen,
                temperature=temperature,
                max_tokens=budget,
                chunk_tokens=chunk,
                around=around,
            )  # [n, T]
        ref = None
        if ref_policy is not None:
            ref = batched_logprobs(
                ref_policy, gen, temperature=temperature, max_tokens=budget, chunk_tokens=chunk
            )  # [n, T]
    return Samples(gen, old, ref, old_experts, sampled - started, time.perf_counter() - sampled)


def score_samples(
    samples: Samples,
    examples: list[Example],
    reward_fn: RewardFn,
    recipe: Recipe,
    cluster: Cluster = SINGLE,
) -> tuple[torch.Tensor, float]:
    """The reward of every completion of the step, `[N]` in row order on every rank (each
    rank scores its own rows), and the seconds this rank's scoring took."""
    started = time.perf_counter()
    g = recipe.rollout.group_size
    references = [e.reference for e in examples for _ in range(g)]
    label = reward_label(recipe.reward_terms)
    mine = torch.tensor(score(reward_fn, label, samples.gen.texts, references))  # [n]
    rollout = recipe.rollout
    if rollout.overlong_buffer > 0:  # DAPO's soft punishment, part of the reward
        lengths = samples.gen.completion_mask.sum(dim=1).cpu()  # [n]
        mine = mine + dapo.overlong_penalty(
            lengths, rollout.max_new_tokens, rollout.overlong_buffer, rollout.overlong_penalty
        )  # [n]
    return distributed.gather_rows(cluster, mine), time.perf_counter() - started  # [N]


def gather(samples: Samples, pad_id: int, cluster: Cluster = SINGLE) -> Samples:
    """The whole round's samples on every rank: each rank's rows in rank order, re-padded to
    the widest prompt and completion (as one process would have sampled them)."""
    gen, old, ref, experts = _gather(
        cluster,
        samples.gen,
        samples.old_logprobs,
        samples.ref_logprobs,
        pad_id,
        samples.old_experts,
    )
    return replace(samples, gen=gen, old_logprobs=old, ref_logprobs=ref, old_experts=experts)


def assemble(
    samples: Samples,
    rewards: torch.Tensor,
    advantages: torch.Tensor,
    zero_std_frac: float,
    score_s: float,
    recipe: Recipe,
    extra: dict[str, float],
    cluster: Cluster = SINGLE,
) -> tuple[RolloutBatch, RolloutStats]:
    """The step's batch from its whole `samples` (`gather`ed, on every rank) with their
    `rewards` and `advantages` `[N]`: the loss mask (overlong filtering), the TIS weights, and
    the step's rollout figures with the mismatch ledger and the `extra` ones (dynamic/*)."""
    gen, old = samples.gen, samples.old_logprobs
    mask = gen.completion_mask  # [N, T]
    sampler = gen.logprobs if gen.logprobs is not None else old  # [N, T]
    figures = {**extra, **mismatch.ledger(old, sampler, mask)}
    loss_mask, weights = None, None
    rollout = recipe.rollout
    if rollout.overlong_filter:
        loss_mask = mask * (~gen.truncated).to(mask.dtype)[:, None]  # [N, T]
    if rollout.overlong_filter or rollout.overlong_buffer > 0:
        figures |= _overlong_figures(gen, recipe)
    if recipe.algo.tis:
        weights = mismatch.tis_weights(old, sampler, mask, recipe.algo.tis_cap)  # [N, T]
        figures |= mismatch.tis_figures(weights, mask, recipe.algo.tis_cap)
    batch = RolloutBatch(
        gen, rewards, advantages.to(old.device), old, samples.ref_logprobs, samples.old_experts
    )
    batch = replace(batch, loss_mask=loss_mask, token_weights=weights)
    timings = {
        "sample_s": samples.sample_s,
        "score_s": score_s,
        "old_logprob_s": samples.old_logprob_s,
    }
    lengths = mask.sum(dim=1)  # [N]
    stats = RolloutStats(
        reward_mean=rewards.mean().item(),
        reward_std=rewards.std().item() if rewards.numel() > 1 else 0.0,
        zero_std_frac=zero_std_frac,
        completion_len_mean=lengths.mean().item(),
        completion_len_max=int(lengths.max().item()),
        truncated_frac=gen.truncated.float().mean().item(),
        completion_tokens=int(lengths.sum().item()),
        **distributed.max_floats(cluster, timings),  # the slowest rank sets the pace
        extra=figures,
    )
    return batch, stats


def _overlong_figures(gen: Generation, recipe: Recipe) -> dict[str, float]:
    """The trained batch's overlong figures: the fraction masked out of the loss (0 without
    overlong_filter), the mean soft punishment and the fraction punished at all."""
    rollout = recipe.rollout
    lengths = gen.completion_mask.sum(dim=1).cpu()  # [N]
    penalty = dapo.overlong_penalty(
        lengths, rollout.max_new_tokens, rollout.overlong_buffer, rollout.overlong_penalty
    )  # [N]
    filtered = gen.truncated.float().mean().item() if rollout.overlong_filter else 0.0
    return {
        "overlong/filtered_frac": filtered,
        "overlong/penalty_mean": penalty.mean().item(),
        "overlong/punished_frac": (penalty < 0).float().mean().item(),
    }


def _routing_recorder(
    policy: Any, gen: Generation
) -> tuple[torch.Tensor | None, Callable[[MicroBatch], AbstractContextManager[Any]] | None]:
    """For a mixture-of-experts policy: an empty `[n, P+T, L, k]` tensor for π_old's expert
    choices on this rank's rows (gathered with the rest by `_gather`) and the
    `batched_logprobs` hook that fills it. (None, None) for a dense model."""
    routers = routing.find_routers(policy)
    if not routers:
        return None, None
    n, width = gen.input_ids.shape
    into = routing.empty_choice(routers, n, width, gen.input_ids.device)
    return into, routing.recording(routers, into, width - gen.completion_mask.shape[1])


def _pad(tensor: torch.Tensor, width: int, value: float, *, left: bool) -> torch.Tensor:
    """`[n, w, ...]` padded with `value` to `[n, width, ...]` on the left or the right of
    dim 1 (F.pad lists trailing dims first; the ones after dim 1 get no padding)."""
    extra = width - tensor.shape[1]
    trailing = [0, 0] * (tensor.dim() - 2)
    return F.pad(tensor, [*trailing, *((extra, 0) if left else (0, extra))], value=value)


def _gather(
    cluster: Cluster,
    gen: Generation,
    old: torch.Tensor,
    ref: torch.Tensor | None,
    pad_id: int,
    experts: torch.Tensor | None = None,
) -> tuple[Generation, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Every rank's rows in rank order, re-padded to the widest prompt and completion: the
    tensors one process would have produced for the whole batch. π_old's `experts`
    `[n, P+T, L, k]` are re-padded like the input ids (with `NO_EXPERT`), so they stay in the
    gathered batch's column layout."""
    if not cluster.is_distributed:
        return gen, old, ref, experts
    t = gen.completion_mask.shape[1]
    p = gen.input_ids.shape[1] - t
    wide_p, wide_t = distributed.max_int(cluster, p), distributed.max_int(cluster, t)

    def rows(tensor: torch.Tensor, value: float) -> torch.Tensor:
        prompt = _pad(tensor[:, :p], wide_p, value, left=True)  # [n, P, ...]
        completion = _pad(tensor[:, p:], wide_t, value, left=False)  # [n, T, ...]
        return distributed.gather_rows(cluster, torch.cat([prompt, completion], dim=1))

    def completions(tensor: torch.Tensor) -> torch.Tensor:
        return distributed.gather_rows(cluster, _pad(tensor, wide_t, 0.0, left=False))

    whole = Generation(
        input_ids=rows(gen.input_ids, pad_id),  # [N, P+T]
        attention_mask=rows(gen.attention_mask, 0),  # [N, P+T]
        completion_mask=completions(gen.completion_mask),  # [N, T]
        truncated=distributed.gather_rows(cluster, gen.truncated.to(torch.uint8)).bool(),  # [N]
        texts=[text for part in distributed.gather_objects(cluster, gen.texts) for text in part],
        logprobs=None if gen.logprobs is None else completions(gen.logprobs),  # [N, T]
    )
    return (
        whole,
        completions(old),  # [N, T]
        completions(ref) if ref is not None else None,  # [N, T]
        # [N, P+T, L, k], sent as int32: gloo has no int16 collectives
        None if experts is None else rows(experts.int(), routing.NO_EXPERT).to(experts.dtype),
    )
