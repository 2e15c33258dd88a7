"""The training loop: sample → score → advantages → clipped policy loss → optimiser → log.

One rollout step samples `prompts_per_step × group_size` completions with the current
policy, which becomes π_old for the step: its log-probs are computed once, right after
sampling. With dynamic sampling (DAPO), groups whose G rewards are all equal are dropped
and more prompts sampled, round by round, until the step has `prompts_per_step` informative
groups (`rollout.rounds`). Rewards are normalised within each prompt's group into
advantages. The batch is then split into `minibatches` (× `epochs`) optimiser steps
(`update`). The first minibatch is on-policy (ratio 1); later ones see the policy drift,
which is what GSPO's sequence ratio and tight clip range control. `run` is the whole
algorithm; read it top to bottom.

What is not the algorithm lives behind well-named calls: building the model, data, reward
and optimiser (`trainsetup.build`), and the bookkeeping (`bookkeeping.RunBook`): resume,
data position, metrics and completions logs, evaluations, the non-finite streak,
checkpoint cadence, and stopping on Ctrl-C/SIGTERM or a strict watchdog warning. A resumed
CPU run repeats an uninterrupted one exactly.

Scale-out: under torchrun (`cluster.world_size` N > 1) the model is sharded with FSDP2,
each rank samples 1/N of the step's prompts, the rollout batch is gathered onto every
rank, and each rank backpropagates its own rows of each minibatch with the weights of the
whole minibatch, so the update equals one process's on the same global batch. Only rank 0
writes metrics and files.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from gspo_cli.advantages import group_advantages
from gspo_cli.base.distributed import SINGLE, Cluster
from gspo_cli.commands import resources, trainsetup
from gspo_cli.commands.bookkeeping import RunBook
from gspo_cli.commands.preflight import check_trackers
from gspo_cli.commands.resources import MemoryEstimate
from gspo_cli.models.loading import check_model_source
from gspo_cli.recipe import Recipe, check_world_size
from gspo_cli.rollout.rounds import Round, enough, select
from gspo_cli.rollout.stages import assemble, gather, sample, score_samples
from gspo_cli.rundir.metrics import Row
from gspo_cli.update import update


@dataclass(frozen=True)
class TrainSummary:
    run_dir: Path
    steps: int
    first_eval_accuracy: float
    last_eval_accuracy: float
    seconds: float


Listener = Callable[[Row], None]


def preflight(recipe: Recipe, world_size: int = 1) -> MemoryEstimate:
    """Cheap checks that fail before a run directory or a model exists (rewards were
    resolved when the recipe was validated): a local model path is there, its context has
    room for a prompt, every `train.report_to` tracker is installed, and the step's estimated
    memory fits what is free (the estimate)."""
    check_trackers(recipe)
    check_model_source(recipe.model.name)
    return resources.preflight(recipe, world_size)


def run(
    recipe: Recipe,
    run_dir: Path,
    on_row: Listener = lambda row: None,
    announce: Callable[[str], None] = print,
    resume_from: Path | None = None,
    cluster: Cluster = SINGLE,
) -> TrainSummary:
    """Train `recipe`'s policy, writing metrics, checkpoints and the final model into
    `run_dir`; with `resume_from`, continue from that checkpoint. Under torchrun, every
    rank calls this with its `cluster`; only rank 0 writes."""
    started = time.perf_counter()
    check_world_size(recipe, cluster.world_size)
    random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)  # also seeds CUDA
    say = announce if cluster.is_main else (lambda _: None)
    parts = trainsetup.build(recipe, resume_from, cluster, say)  # data, model, reward, optimiser
    policy, reference, tokenizer = parts.policy, parts.reference, parts.tokenizer
    g, scale = recipe.rollout.group_size, recipe.algo.advantage_scale
    reward_fn, pad_id = parts.reward_fn, tokenizer.pad_token_id

    with RunBook(recipe, run_dir, parts, cluster, resume_from, say).open(on_row) as book:
        for step in book.steps():
            step_start = time.perf_counter()
            rounds: list[Round] = []
            while not enough(rounds, recipe):  # one round, or more with dynamic sampling
                indices, examples = book.next_prompts()  # this rank's share of the prompts
                # 1. sample G completions per prompt with π_old (the current policy), and
                #    their log-probs under π_old, the sampler and the reference
                samples = sample(
                    policy, reference, tokenizer, examples, recipe, step, cluster, len(rounds)
                )
                # 2. score every completion against its reference answer: rewards [N]
                rewards, score_s = score_samples(samples, examples, reward_fn, recipe, cluster)
                rounds.append(Round(gather(samples, pad_id, cluster), rewards, indices, score_s))
            # dynamic sampling keeps the groups whose rewards differ (all of one round if off)
            samples, rewards, indices, score_s, dynamic = select(rounds, recipe, pad_id)
            # 3. advantages: each reward normalised within its prompt's group of G
            advantages, zero_std = group_advantages(rewards, g, scale=scale)  # [N]
            batch, stats = assemble(
                samples, rewards, advantages, zero_std, score_s, recipe, dynamic, cluster
            )
            # 4. the clipped policy loss (sequence ratio: GSPO; token ratio: GRPO), minibatch
            #    by minibatch, each an optimiser step
            updated, outcomes = update(
                policy, parts.optimizer, parts.scheduler, batch, recipe, step, cluster, parts.meter
            )
            # 5. log the step; then evaluate, checkpoint, stop when due
            book.log_step(step, stats, updated, batch, indices, time.perf_counter() - step_start)
            book.after_step(step, outcomes)
    book.finish()
    seconds = time.perf_counter() - started
    return TrainSummary(
        run_dir, recipe.train.steps, book.first_accuracy, book.last_accuracy, seconds
    )
