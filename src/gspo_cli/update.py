"""The update: `epochs × minibatches` optimiser steps on one rollout batch.

Each minibatch's clipped policy loss (`losses.policy_loss`, + β·KL when there is a
reference) is backpropagated in token-budget micro-batches whose gradients add up to the
whole minibatch's, on one process or across N (each rank backpropagates the rows it
sampled). A non-finite loss or gradient skips that optimiser step; `train` counts the
skips in a row.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from gspo_cli.base import distributed
from gspo_cli.base.distributed import SINGLE, Cluster
from gspo_cli.base.seeding import derive
from gspo_cli.losses import LossStats, kl_k3, policy_loss
from gspo_cli.recipe import Recipe
from gspo_cli.rollout.stages import RolloutBatch
from gspo_cli.scoring import microbatch, routing
from gspo_cli.scoring.completions import completion_logprobs


@dataclass(frozen=True)
class UpdateStats:
    loss: float  # mean over optimiser steps of the minimised objective (policy + β·KL)
    kl: float
    grad_norm: float  # mean pre-clipping global norm
    clip_frac: float  # mean over minibatches
    clip_frac_low: float
    clip_frac_high: float
    # Largest clip fraction of an optimiser step after the first one taken (minibatches 2..N
    # and later epochs): the policy has moved since sampling only from there on. 0 on every
    # step of a GSPO run means it is effectively on-policy. NaN with one optimiser step.
    clip_frac_offpolicy_max: float
    ratio_mean: float
    ratio_min: float  # over all minibatches
    ratio_max: float
    skipped_steps: int  # optimiser steps skipped for a non-finite loss or gradient
    update_s: float


def _objective(
    logprobs: torch.Tensor,
    batch: RolloutBatch,
    rows: torch.Tensor,
    recipe: Recipe,
    mean_length: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, LossStats]:
    """Policy loss (+ β·KL) of `rows` given their current log-probs `[n, T_k]`; `mean_length`
    is the whole minibatch's mean completion length (DAPO's and CISPO's token mean)."""
    algo, t = recipe.algo, logprobs.shape[1]
    mask = batch.in_loss[rows, :t]  # [n, T_k] (overlong filtering zeroes truncated rows)
    weights = None if batch.token_weights is None else batch.token_weights[rows, :t]  # TIS
    loss, stats = policy_loss(
        logprobs,
        batch.old_logprobs[rows, :t],
        batch.advantages[rows],
        mask,
        mode=algo.mode,
        clip_low=algo.clip_low,
        clip_high=algo.clip_high,
        max_log_ratio=algo.max_log_ratio,
        max_tokens=recipe.rollout.max_new_tokens,
        mean_length=mean_length,
        token_weights=weights,
    )
    kl = torch.zeros((), device=loss.device)
    if batch.ref_logprobs is not None:
        kl = kl_k3(logprobs, batch.ref_logprobs[rows, :t], mask)
        loss = loss + algo.kl_beta * kl
    return loss, kl, stats


def accumulate_gradients(
    model: Any,
    batch: RolloutBatch,
    rows: torch.Tensor,
    recipe: Recipe,
    cluster: Cluster = SINGLE,
    meter: routing.DriftMeter | None = None,
) -> tuple[torch.Tensor, torch.Tensor, LossStats]:
    """Backward one minibatch in token-budget micro-batches.

    Every term of the objective is a mean over responses, so a micro-batch holding n_k of
    the minibatch's n responses is weighted n_k / n and the accumulated gradient equals the
    whole minibatch's. Across N processes each rank backpropagates only the rows it sampled,
    and FSDP averages the ranks' gradients, so the weight is N · n_k / n with n the whole
    minibatch's count, never a rank's own: the sum over ranks is again the one-process
    gradient. A rank with fewer micro-batches runs zero-weight passes so every rank runs as
    many forwards and backwards (FSDP's collectives must pair up). The returned loss, KL
    and stats are recomputed (without gradients) from every rank's log-probs, so they are
    the minibatch's own, not an average of parts.

    DAPO's and CISPO's token mean over the minibatch is such a mean too, once each
    micro-batch's denominator is n_k times the whole minibatch's mean completion length
    (never the micro-batch's own token count).

    Mixture-of-experts policies: with `algo.routing_replay` each forward routes tokens to the
    experts π_old chose; a `meter` adds up how far the routers' own choice has drifted from
    π_old's over the minibatch's completion tokens (see `routing`).
    """
    gen = batch.gen
    n, t = len(rows), gen.completion_mask.shape[1]
    p = gen.input_ids.shape[1] - t
    owned = cluster.share(gen.input_ids.shape[0])
    mine = ((rows >= owned.start) & (rows < owned.stop)).nonzero().squeeze(1)  # [n_r] in rows
    gathered = torch.zeros(n, t, device=gen.input_ids.device)  # [n, T]
    budget = recipe.train.microbatch_tokens
    plans = microbatch.plan(gen.attention_mask, gen.completion_mask, rows[mine], budget)
    passes = distributed.max_int(cluster, len(plans))  # before any pass: collectives pair up
    mean_length = float(batch.in_loss[rows].sum()) / max(n, 1)  # the whole minibatch's
    for mb in plans:
        replay = recipe.algo.routing_replay
        with routing.update_pass(
            model, batch.old_experts, gen.completion_mask, mb, p, replay=replay, meter=meter
        ):
            logprobs = completion_logprobs(
                model,
                microbatch.take(gen.input_ids, mb, p),
                microbatch.take(gen.attention_mask, mb, p),
                mb.completion_len,
                recipe.rollout.temperature,
                recipe.train.logprob_chunk_tokens,
            )  # [n_k, T_k]
        loss, _, _ = _objective(logprobs, batch, mb.rows, recipe, mean_length)
        (loss * (len(mb.rows) * cluster.world_size / n)).backward()  # type: ignore[no-untyped-call]
        gathered[mine[mb.positions], : mb.completion_len] = logprobs.detach().float()
    for _ in range(passes - len(plans)):
        _idle_pass(model, gen, owned.start)
    distributed.all_reduce(cluster, gathered)  # each row is filled on exactly one rank
    with torch.no_grad():
        return _objective(gathered, batch, rows, recipe)


def _idle_pass(model: Any, gen: Any, row: int) -> None:
    """A forward and backward of one row with weight 0: keeps this rank in step with the
    others' FSDP collectives and adds exactly nothing to the gradient."""
    t = gen.completion_mask.shape[1]
    p = gen.input_ids.shape[1] - t
    (mb,) = microbatch.plan(gen.attention_mask, gen.completion_mask, torch.tensor([row]), 0)
    ids = microbatch.take(gen.input_ids, mb, p)  # [1, P_k + T_k]
    attention = microbatch.take(gen.attention_mask, mb, p)  # [1, P_k + T_k]
    logprobs = completion_logprobs(model, ids, attention, mb.completion_len)  # [1, T_k]
    (logprobs.sum() * 0.0).backward()  # type: ignore[no-untyped-call]


def minibatch_order(n: int, seed: int, step: int, epoch: int) -> torch.Tensor:
    """A permutation of the step's n rows, a pure function of (seed, step, epoch): every
    rank computes the same one, and a resumed run the same as an uninterrupted one."""
    generator = torch.Generator().manual_seed(derive(seed, "minibatches", step, epoch))
    return torch.randperm(n, generator=generator)  # [n]


def update(
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batch: RolloutBatch,
    recipe: Recipe,
    step: int = 0,
    cluster: Cluster = SINGLE,
    meter: routing.DriftMeter | None = None,
) -> tuple[UpdateStats, list[str | None]]:
    """`epochs × minibatches` optimiser steps on one rollout batch.

    Returns the stats and, per optimiser step in order, None when it was taken or what was
    not finite when it was skipped. Every rank takes the same decisions: the loss and the
    gradient norm are the whole minibatch's. A `meter` (MoE policies) measures router drift
    at the last minibatch: its forward, before its optimiser step, is the current policy
    after all the step's other updates.
    """
    started = time.perf_counter()
    n = batch.gen.completion_mask.shape[0]
    max_norm = recipe.optim.grad_clip if recipe.optim.grad_clip > 0 else math.inf
    per_step: list[dict[str, float]] = []
    outcomes: list[str | None] = []
    for epoch in range(recipe.algo.epochs):
        order = minibatch_order(n, recipe.seed, step, epoch)  # [N]
        for i, rows in enumerate(order.chunk(recipe.algo.minibatches)):  # [N / minibatches]
            last = epoch == recipe.algo.epochs - 1 and i == recipe.algo.minibatches - 1
            loss, kl, stats = accumulate_gradients(
                model, batch, rows, recipe, cluster, meter if last else None
            )
            grad_norm = distributed.local_value(
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            )
            if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
                optimizer.zero_grad(set_to_none=True)  # never step on NaN/inf
                outcomes.append(f"loss {loss.item()}, grad norm {grad_norm.item()}")
                continue
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            outcomes.append(None)
            figures = {"loss": loss.item(), "kl": kl.item(), "grad_norm": grad_norm.item()}
            per_step.append({**figures, **asdict(stats)})

    return _summarise(per_step, outcomes, time.perf_counter() - started), outcomes


def _summarise(
    per_step: list[dict[str, float]], outcomes: list[str | None], seconds: float
) -> UpdateStats:
    """The step's update figures: means over the optimiser steps taken, extremes over all."""

    def mean(key: str) -> float:
        return sum(s[key] for s in per_step) / len(per_step) if per_step else math.nan

    return UpdateStats(
        loss=mean("loss"),
        kl=mean("kl"),
        grad_norm=mean("grad_norm"),
        clip_frac=mean("clip_frac"),
        clip_frac_low=mean("clip_frac_low"),
        clip_frac_high=mean("clip_frac_high"),
        clip_frac_offpolicy_max=max((s["clip_frac"] for s in per_step[1:]), default=math.nan),
        ratio_mean=mean("ratio_mean"),
        ratio_min=min((s["ratio_min"] for s in per_step), default=math.nan),
        ratio_max=max((s["ratio_max"] for s in per_step), default=math.nan),
        skipped_steps=sum(o is not None for o in outcomes),
        update_s=seconds,
    )
