"""The training loop: rollout → rewards → advantages → clipped policy loss → optimiser.

One rollout step samples `prompts_per_step × group_size` completions with the current
policy, which becomes π_old for the step: its log-probs are computed once, right after
sampling. The batch is then split into `minibatches` (× `epochs`) optimiser steps. The
first minibatch is on-policy (ratio 1); later ones see the policy drift, which is what
GSPO's sequence ratio and tight clip range control. `run` is the whole algorithm; read
it top to bottom.

Reliability: a checkpoint holds the weights, optimiser, scheduler, RNG states and data
position, so a resumed CPU run repeats an uninterrupted one exactly. A non-finite loss
or gradient skips that optimiser step; too many in a row stop the run. Ctrl-C or SIGTERM
finishes the current step, checkpoints, and exits non-zero.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from gspo_cli import microbatch, rewards
from gspo_cli.checkpoint import (
    METRICS_FILE,
    RECIPE_FILE,
    checkpoint_dir,
    link_final,
    load_trainer_state,
    save_checkpoint,
    write_text_atomic,
)
from gspo_cli.errors import Interrupted, TrainingError, UserError
from gspo_cli.evaluate import greedy_accuracy
from gspo_cli.interrupt import StopRequest
from gspo_cli.losses import LossStats, kl_k3, policy_loss
from gspo_cli.metrics import MetricsWriter, Row, read_metrics
from gspo_cli.policy import (
    check_model_source,
    completion_logprobs,
    load_policy,
    load_tokenizer,
    pick_device,
)
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
    skipped_steps: int  # optimiser steps skipped for a non-finite loss or gradient
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


def prompt_stream(n_examples: int, seed: int) -> Iterator[int]:
    """Example indices in a fresh seeded shuffle per pass over the data, forever."""
    rng = random.Random(seed)
    while True:
        order = list(range(n_examples))
        rng.shuffle(order)
        yield from order


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _objective(
    logprobs: torch.Tensor, batch: RolloutBatch, rows: torch.Tensor, recipe: Recipe
) -> tuple[torch.Tensor, torch.Tensor, LossStats]:
    """Policy loss (+ β·KL) of `rows` given their current log-probs `[n, T_k]`."""
    algo, t = recipe.algo, logprobs.shape[1]
    mask = batch.gen.completion_mask[rows, :t]  # [n, T_k]
    loss, stats = policy_loss(
        logprobs,
        batch.old_logprobs[rows, :t],
        batch.advantages[rows],
        mask,
        mode=algo.mode,
        clip_low=algo.clip_low,
        clip_high=algo.clip_high,
        max_log_ratio=algo.max_log_ratio,
    )
    kl = torch.zeros((), device=loss.device)
    if batch.ref_logprobs is not None:
        kl = kl_k3(logprobs, batch.ref_logprobs[rows, :t], mask)
        loss = loss + algo.kl_beta * kl
    return loss, kl, stats


def accumulate_gradients(
    model: Any, batch: RolloutBatch, rows: torch.Tensor, recipe: Recipe
) -> tuple[torch.Tensor, torch.Tensor, LossStats]:
    """Backward one minibatch in token-budget micro-batches.

    Every term of the objective is a mean over responses, so a micro-batch holding n_k of
    the minibatch's n responses is weighted n_k / n and the accumulated gradient equals the
    whole minibatch's. The returned loss, KL and stats are recomputed (without gradients)
    from the gathered log-probs, so they are the minibatch's own, not an average of parts.
    """
    gen = batch.gen
    n, t = len(rows), gen.completion_mask.shape[1]
    p = gen.input_ids.shape[1] - t
    gathered = torch.zeros(n, t, device=gen.input_ids.device)  # [n, T]
    budget = recipe.train.microbatch_tokens
    for mb in microbatch.plan(gen.attention_mask, gen.completion_mask, rows, budget):
        logprobs = completion_logprobs(
            model,
            microbatch.take(gen.input_ids, mb, p),
            microbatch.take(gen.attention_mask, mb, p),
            mb.completion_len,
            recipe.rollout.temperature,
            recipe.train.logprob_chunk_tokens,
        )  # [n_k, T_k]
        loss, _, _ = _objective(logprobs, batch, mb.rows, recipe)
        (loss * (len(mb.rows) / n)).backward()  # type: ignore[no-untyped-call]
        gathered[mb.positions, : mb.completion_len] = logprobs.detach().float()
    with torch.no_grad():
        return _objective(gathered, batch, rows, recipe)


def update(
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batch: RolloutBatch,
    recipe: Recipe,
) -> tuple[UpdateStats, list[str | None]]:
    """`epochs × minibatches` optimiser steps on one rollout batch.

    Returns the stats and, per optimiser step in order, None when it was taken or what was
    not finite when it was skipped.
    """
    started = time.perf_counter()
    n = batch.gen.completion_mask.shape[0]
    max_norm = recipe.optim.grad_clip if recipe.optim.grad_clip > 0 else math.inf
    per_step: list[dict[str, float]] = []
    outcomes: list[str | None] = []
    for _ in range(recipe.algo.epochs):
        for rows in torch.randperm(n).chunk(recipe.algo.minibatches):  # [N / minibatches] each
            loss, kl, stats = accumulate_gradients(model, batch, rows, recipe)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
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

    def mean(key: str) -> float:
        return sum(s[key] for s in per_step) / len(per_step) if per_step else math.nan

    return UpdateStats(
        loss=mean("loss"),
        kl=mean("kl"),
        grad_norm=mean("grad_norm"),
        clip_frac=mean("clip_frac"),
        clip_frac_low=mean("clip_frac_low"),
        clip_frac_high=mean("clip_frac_high"),
        ratio_mean=mean("ratio_mean"),
        ratio_min=min((s["ratio_min"] for s in per_step), default=math.nan),
        ratio_max=max((s["ratio_max"] for s in per_step), default=math.nan),
        skipped_steps=sum(o is not None for o in outcomes),
        update_s=time.perf_counter() - started,
    ), outcomes


def preflight(recipe: Recipe) -> None:
    """Cheap checks that fail before a run directory or a model exists (rewards were
    resolved when the recipe was validated): a local model path is there."""
    check_model_source(recipe.model.name)


def run(
    recipe: Recipe,
    run_dir: Path,
    on_row: Listener = lambda row: None,
    announce: Callable[[str], None] = print,
    resume_from: Path | None = None,
) -> TrainSummary:
    """Train `recipe`'s policy, writing metrics, checkpoints and the final model into
    `run_dir`; with `resume_from`, continue from that checkpoint."""
    started = time.perf_counter()
    random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)  # also seeds CUDA

    # --- setup: data, model, reference, reward, optimiser --------------------------------
    # Data first, with the tokenizer alone: a bad source fails before a model loads.
    tokenizer = load_tokenizer(recipe.model.name, announce)
    _, splits = load_task(recipe.data, tokenizer, recipe.model.name, announce)
    train_set, test_set = splits["train"], splits["test"][: recipe.data.eval_size]
    device = pick_device()
    source = str(resume_from) if resume_from else recipe.model.name
    model, tokenizer = load_policy(source, recipe.model.dtype, device, announce)
    model.train()
    ref_model = None
    if recipe.algo.kl_beta > 0:  # the reference is always the initial model
        ref_model = copy.deepcopy(model) if resume_from is None else None
        if ref_model is None:
            ref_model, _ = load_policy(recipe.model.name, recipe.model.dtype, device, announce)
        ref_model.eval().requires_grad_(False)
    reward_fn = rewards.combine(recipe.reward_terms)
    checker = rewards.checker(recipe.reward_terms)  # decides correct answers in evaluations
    optim = recipe.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
    warmup = optim.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min(1.0, (i + 1) / warmup) if warmup else 1.0
    )
    start_step, prompts_used, skipped_in_a_row = 0, 0, 0
    evals: list[float] = []
    if resume_from is not None:
        state = load_trainer_state(resume_from)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_step, prompts_used = state["step"], state["prompts_used"]
        skipped_in_a_row = state["skipped_in_a_row"]
        if start_step >= recipe.train.steps:
            raise UserError(
                f"{run_dir} already finished {start_step} steps; to train further, raise "
                f"train.steps, e.g. --set train.steps={start_step + recipe.train.steps}"
            )
        kept = [r for r in read_metrics(run_dir / METRICS_FILE) if r["step"] <= start_step]
        evals = [r["eval_accuracy"] for r in kept if "eval_accuracy" in r]
        write_text_atomic(run_dir / METRICS_FILE, "".join(MetricsWriter.line(r) for r in kept))
        set_rng_state(state["rng"])
        announce(f"resuming {run_dir} from step {start_step} ({resume_from.name})")
    prompts = itertools.islice(prompt_stream(len(train_set), recipe.seed), prompts_used, None)
    write_text_atomic(run_dir / RECIPE_FILE, recipe.to_yaml())  # only once setup succeeded

    def checkpoint(step: int) -> Path:
        state = {
            "step": step,
            "prompts_used": prompts_used,
            "skipped_in_a_row": skipped_in_a_row,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
        }
        return save_checkpoint(run_dir, step, model, tokenizer, state, recipe.train.keep_last)

    with MetricsWriter(run_dir / METRICS_FILE) as writer, StopRequest() as stop:

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
                {"step": step, "eval_accuracy": accuracy, "eval_n": len(test_set)}
                | {"eval_s": seconds}
            )
            return accuracy

        first_accuracy = evals[0] if evals else evaluate(0)
        last_accuracy = evals[-1] if evals else first_accuracy
        last_saved = resume_from  # the newest complete checkpoint, if any

        # --- the loop ----------------------------------------------------------------------
        for step in range(start_step + 1, recipe.train.steps + 1):
            step_start = time.perf_counter()
            examples = [train_set[next(prompts)] for _ in range(recipe.rollout.prompts_per_step)]
            prompts_used += len(examples)
            batch, rollout_stats = collect(model, ref_model, tokenizer, examples, reward_fn, recipe)
            update_stats, outcomes = update(model, optimizer, scheduler, batch, recipe)
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
            trailing = list(itertools.takewhile(lambda o: o is not None, reversed(outcomes)))
            all_skipped = len(trailing) == len(outcomes)
            skipped_in_a_row = len(trailing) + (skipped_in_a_row if all_skipped else 0)
            if skipped_in_a_row >= recipe.train.max_skipped_steps:
                raise TrainingError(
                    f"step {step}: {skipped_in_a_row} optimiser steps in a row had a non-finite "
                    f"loss or gradient (last: {trailing[0]}); the weights were not updated with "
                    f"them. Last good checkpoint: {last_saved or 'none'}. Try a lower optim.lr "
                    "or a tighter optim.grad_clip"
                )
            if _due(step, recipe.train.eval_every) or step == recipe.train.steps:
                last_accuracy = evaluate(step)
            if _due(step, recipe.train.save_every) or step == recipe.train.steps or stop.requested:
                last_saved = checkpoint(step)
            if stop.requested and step < recipe.train.steps:
                raise Interrupted(
                    f"stopped by {stop.signal_name} after step {step}; checkpoint saved. "
                    f"Resume with: gspo train --resume {run_dir}",
                    stop.signal_name or "SIGINT",
                )

    link_final(checkpoint_dir(run_dir, recipe.train.steps), run_dir)
    return TrainSummary(
        run_dir, recipe.train.steps, first_accuracy, last_accuracy, time.perf_counter() - started
    )
