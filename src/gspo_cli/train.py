"""The training loop: rollout → rewards → advantages → clipped policy loss → optimiser.

One rollout step samples `prompts_per_step × group_size` completions with the current
policy, which becomes π_old for the step: its log-probs are computed once, right after
sampling. The batch is then split into `minibatches` (× `epochs`) optimiser steps. The
first minibatch is on-policy (ratio 1); later ones see the policy drift, which is what
GSPO's sequence ratio and tight clip range control. `run` is the whole algorithm; read
it top to bottom.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from gspo_cli import rewards
from gspo_cli.checkpoint import (
    FINAL_DIR,
    METRICS_FILE,
    RECIPE_FILE,
    checkpoint_dir,
    save_model_dir,
    write_text_atomic,
)
from gspo_cli.evaluate import greedy_accuracy
from gspo_cli.losses import kl_k3, policy_loss
from gspo_cli.metrics import MetricsWriter, Row
from gspo_cli.policy import completion_logprobs, load_policy, load_tokenizer, pick_device
from gspo_cli.prepare import load_task
from gspo_cli.recipe import Recipe
from gspo_cli.rollout import RolloutBatch, collect


@dataclass(frozen=True)
class UpdateStats:
    loss: float  # mean over optimiser steps of the minimised objective (policy + β·KL)
    kl: float
    grad_norm: float  # mean pre-clipping global norm
    clip_frac: float  # mean over minibatches
    clip_frac_low: float
    clip_frac_high: float
    ratio_mean: float
    ratio_min: float  # over all minibatches
    ratio_max: float
    update_s: float


@dataclass(frozen=True)
class TrainSummary:
    run_dir: Path
    steps: int
    first_eval_accuracy: float
    last_eval_accuracy: float
    seconds: float


Listener = Callable[[Row], None]


def _due(step: int, every: int) -> bool:
    """True every `every` steps; never when `every` is 0."""
    return every > 0 and step % every == 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA


def prompt_stream(n_examples: int, seed: int) -> Iterator[int]:
    """Example indices in a fresh seeded shuffle per pass over the data, forever."""
    rng = random.Random(seed)
    while True:
        order = list(range(n_examples))
        rng.shuffle(order)
        yield from order


def update(
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batch: RolloutBatch,
    recipe: Recipe,
) -> UpdateStats:
    """`epochs × minibatches` optimiser steps on one rollout batch."""
    started = time.perf_counter()
    algo, temperature = recipe.algo, recipe.rollout.temperature
    gen = batch.gen
    n, t = gen.completion_mask.shape
    per_step: list[dict[str, float]] = []
    for _ in range(algo.epochs):
        for idx in torch.randperm(n).chunk(algo.minibatches):  # [N / minibatches] each
            logprobs = completion_logprobs(
                model, gen.input_ids[idx], gen.attention_mask[idx], t, temperature
            )  # [n, T]
            mask = gen.completion_mask[idx]  # [n, T]
            loss, stats = policy_loss(
                logprobs,
                batch.old_logprobs[idx],
                batch.advantages[idx],
                mask,
                mode=algo.mode,
                clip_low=algo.clip_low,
                clip_high=algo.clip_high,
                max_log_ratio=algo.max_log_ratio,
            )
            kl = torch.zeros(())
            if batch.ref_logprobs is not None:
                kl = kl_k3(logprobs, batch.ref_logprobs[idx], mask)
                loss = loss + algo.kl_beta * kl
            loss.backward()  # type: ignore[no-untyped-call]
            max_norm = recipe.optim.grad_clip if recipe.optim.grad_clip > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            per_step.append(
                {
                    "loss": loss.item(),
                    "kl": kl.item(),
                    "grad_norm": grad_norm.item(),
                    **asdict(stats),
                }
            )

    def mean(key: str) -> float:
        return sum(s[key] for s in per_step) / len(per_step)

    return UpdateStats(
        loss=mean("loss"),
        kl=mean("kl"),
        grad_norm=mean("grad_norm"),
        clip_frac=mean("clip_frac"),
        clip_frac_low=mean("clip_frac_low"),
        clip_frac_high=mean("clip_frac_high"),
        ratio_mean=mean("ratio_mean"),
        ratio_min=min(s["ratio_min"] for s in per_step),
        ratio_max=max(s["ratio_max"] for s in per_step),
        update_s=time.perf_counter() - started,
    )


def run(
    recipe: Recipe,
    run_dir: Path,
    on_row: Listener = lambda row: None,
    announce: Callable[[str], None] = print,
) -> TrainSummary:
    """Train `recipe`'s policy, writing metrics and models into `run_dir`."""
    started = time.perf_counter()
    seed_everything(recipe.seed)
    write_text_atomic(run_dir / RECIPE_FILE, recipe.to_yaml())

    # --- setup: data, model, reference, reward, optimiser --------------------------------
    # Data first, with the tokenizer alone: a bad source fails before a model loads.
    tokenizer = load_tokenizer(recipe.model.name, announce)
    _, splits = load_task(recipe.data, tokenizer, recipe.model.name, announce)
    train_set, test_set = splits["train"], splits["test"][: recipe.data.eval_size]
    device = pick_device()
    model, tokenizer = load_policy(recipe.model.name, recipe.model.dtype, device, announce)
    model.train()
    ref_model = None
    if recipe.algo.kl_beta > 0:
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    reward_fn = rewards.combine(recipe.reward_terms)
    checker = rewards.checker(recipe.reward_terms)  # decides correct answers in evaluations
    prompts = prompt_stream(len(train_set), recipe.seed)
    optim = recipe.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
    warmup = optim.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min(1.0, (i + 1) / warmup) if warmup else 1.0
    )

    with MetricsWriter(run_dir / METRICS_FILE) as writer:

        def log(row: Row) -> None:
            writer.write(row)
            on_row(row)

        def evaluate(step: int) -> float:
            t0 = time.perf_counter()
            accuracy = greedy_accuracy(
                model, tokenizer, test_set, checker, max_new_tokens=recipe.rollout.max_new_tokens
            )
            seconds = time.perf_counter() - t0
            log(
                {
                    "step": step,
                    "eval_accuracy": accuracy,
                    "eval_n": len(test_set),
                    "eval_s": seconds,
                }
            )
            return accuracy

        first_accuracy = last_accuracy = evaluate(0)

        # --- the loop ----------------------------------------------------------------------
        for step in range(1, recipe.train.steps + 1):
            step_start = time.perf_counter()
            examples = [train_set[next(prompts)] for _ in range(recipe.rollout.prompts_per_step)]
            batch, rollout_stats = collect(model, ref_model, tokenizer, examples, reward_fn, recipe)
            update_stats = update(model, optimizer, scheduler, batch, recipe)
            step_s = time.perf_counter() - step_start
            log(
                {
                    "step": step,
                    **asdict(rollout_stats),
                    **asdict(update_stats),
                    "lr": optimizer.param_groups[0]["lr"],
                    "rollout_s": rollout_stats.seconds,
                    "step_s": step_s,
                    "tokens_per_s": rollout_stats.completion_tokens / step_s,
                }
            )
            if _due(step, recipe.train.eval_every) or step == recipe.train.steps:
                last_accuracy = evaluate(step)
            if _due(step, recipe.train.save_every):
                save_model_dir(model, tokenizer, checkpoint_dir(run_dir, step))

    save_model_dir(model, tokenizer, run_dir / FINAL_DIR)
    return TrainSummary(
        run_dir, recipe.train.steps, first_accuracy, last_accuracy, time.perf_counter() - started
    )
