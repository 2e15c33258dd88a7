"""Preflight: what a recipe will do, before anything expensive.

`batch_plan` spells the batch arithmetic out in user terms for `gspo check` and the start of
`gspo train`: prompts and completions per step, responses per minibatch, optimiser steps per
rollout step and in total, micro-batches per minibatch, and the share of each process. (Whether
the rewards work is `reward_probes`.) `check_trackers` refuses a `train.report_to` tracker that
is not installed. Nothing here prints, and no torch is imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gspo_cli.base.errors import RecipeError
from gspo_cli.recipe import Recipe, check_world_size
from gspo_cli.rundir import trackers


def tracker_problems(recipe: Recipe) -> list[str]:
    """One line per `train.report_to` tracker that is not installed, with its pip line."""
    return trackers.missing(recipe.train.report_to)


def check_trackers(recipe: Recipe) -> None:
    """Refuse (RecipeError) a named tracker that is not installed, before any model loads."""
    problems = tracker_problems(recipe)
    if problems:
        raise RecipeError(problems)


@dataclass(frozen=True)
class BatchPlan:
    """The batch arithmetic of one recipe on `nproc` processes."""

    prompts_per_step: int
    group_size: int
    completions_per_step: int  # prompts × group size
    minibatches: int
    epochs: int
    responses_per_minibatch: int  # completions / minibatches
    optimizer_steps_per_step: int  # minibatches × epochs
    steps: int  # rollout steps
    optimizer_steps_total: int  # steps × optimiser steps per step
    nproc: int
    prompts_per_rank: int  # prompts each process samples per step
    completions_per_rank: int
    microbatch_tokens: int  # the token budget per forward pass; 0: no split
    row_tokens: int | None  # longest prompt + max_new_tokens, when the prompts are known
    rows_per_microbatch: int | None  # rows of row_tokens that fit the budget
    microbatches_per_minibatch: int | None  # at most, on each process

    def summary(self) -> str:
        """The arithmetic in one line, as `gspo train` prints it."""
        ranks = (
            f"; per process {self.prompts_per_rank} prompts, {self.completions_per_rank} "
            "completions"
            if self.nproc > 1
            else ""
        )
        return (
            f"{self.prompts_per_step} prompts × {self.group_size} = {self.completions_per_step} "
            f"completions per step in {self.minibatches} minibatches of "
            f"{self.responses_per_minibatch}; {self.optimizer_steps_per_step} optimiser steps "
            f"per rollout step, {self.optimizer_steps_total} in total{ranks}"
        )


def batch_plan(recipe: Recipe, nproc: int = 1, longest_prompt: int | None = None) -> BatchPlan:
    """The arithmetic of `recipe` on `nproc` processes; `longest_prompt` (tokens, of the
    prepared training prompts) bounds the micro-batches. A RecipeError when the step's prompts
    do not split over the processes (the recipe itself already divides into minibatches)."""
    check_world_size(recipe, nproc)
    rollout, algo = recipe.rollout, recipe.algo
    n, per_step = recipe.completions_per_step, algo.minibatches * algo.epochs
    prompts_per_rank = rollout.prompts_per_step // nproc
    completions_per_rank = prompts_per_rank * rollout.group_size
    budget = recipe.train.microbatch_tokens
    row_tokens = fit = count = None
    if longest_prompt is not None:
        row_tokens = longest_prompt + rollout.max_new_tokens
        # A minibatch's rows are shuffled over the step, so one process may hold all of them
        # (at most its own completions); the planner packs rows until the budget is full.
        rows = min(recipe.responses_per_minibatch, completions_per_rank)
        fit = max(1, budget // row_tokens) if budget else rows
        count = math.ceil(rows / fit)
    return BatchPlan(
        prompts_per_step=rollout.prompts_per_step,
        group_size=rollout.group_size,
        completions_per_step=n,
        minibatches=algo.minibatches,
        epochs=algo.epochs,
        responses_per_minibatch=recipe.responses_per_minibatch,
        optimizer_steps_per_step=per_step,
        steps=recipe.train.steps,
        optimizer_steps_total=recipe.train.steps * per_step,
        nproc=nproc,
        prompts_per_rank=prompts_per_rank,
        completions_per_rank=completions_per_rank,
        microbatch_tokens=budget,
        row_tokens=row_tokens,
        rows_per_microbatch=fit,
        microbatches_per_minibatch=count,
    )
