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

Explaining itself: each step's row goes through the watchdog (`watchdog.py`), whose warnings
(no learning signal, constant reward, truncation, no clipping) are recorded on the row and,
with `train.strict`, stop the run after a checkpoint. A sample of each step's completions
goes to completions.jsonl.

Scale-out: under torchrun (`cluster.world_size` N > 1) the model is sharded with FSDP2,
each rank samples 1/N of the step's prompts, the rollout batch is gathered onto every
rank, and each rank backpropagates its own rows of each minibatch with the weights of the
whole minibatch, so the update equals one process's on the same global batch. Only rank 0
writes metrics and files.
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

from gspo_cli import distributed, microbatch, resources, rewards, routing, safestate
from gspo_cli.checkpoint import link_final, load_trainer_state, save_checkpoint
from gspo_cli.data import Example
from gspo_cli.distributed import SINGLE, Cluster
from gspo_cli.errors import CheckpointError, Interrupted, TrainingError, UserError, WatchdogStop
from gspo_cli.evaluate import greedy_correct
from gspo_cli.interrupt import StopRequest
from gspo_cli.losses import LossStats, kl_k3, policy_loss
from gspo_cli.metrics import MetricsWriter, NullWriter, Row, read_metrics
from gspo_cli.policy import check_model_source, load_policy, load_tokenizer, pick_device
from gspo_cli.preflight import require_working_rewards
from gspo_cli.prepare import load_task
from gspo_cli.recipe import Recipe, check_world_size
from gspo_cli.resources import MemoryEstimate, context_fit
from gspo_cli.rollout import RolloutBatch, collect
from gspo_cli.runfiles import (
    COMPLETIONS_FILE,
    METRICS_FILE,
    OPTIMIZER_DIR,
    RECIPE_FILE,
    RNG_DIR,
    STATE_STEM,
    checkpoint_dir,
)
from gspo_cli.scoring import LogProbModel, causal_lm, completion_logprobs, support
from gspo_cli.seeding import derive
from gspo_cli.storage import write_text_atomic
from gspo_cli.watchdog import RunWarning, Watchdog


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
    replay = recipe.algo.routing_replay
    for mb in plans:
        experts = batch.old_experts
        with routing.update_pass(
            model, experts, gen.completion_mask, mb, p, replay=replay, meter=meter
        ):
            logprobs = completion_logprobs(
                model,
                microbatch.take(gen.input_ids, mb, p),
                microbatch.take(gen.attention_mask, mb, p),
                mb.completion_len,
                recipe.rollout.temperature,
                recipe.train.logprob_chunk_tokens,
            )  # [n_k, T_k]
        loss, _, _ = _objective(logprobs, batch, mb.rows, recipe)
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
        update_s=time.perf_counter() - started,
    ), outcomes


def preflight(recipe: Recipe, world_size: int = 1) -> MemoryEstimate:
    """Cheap checks that fail before a run directory or a model exists (rewards were
    resolved when the recipe was validated): a local model path is there, its context has
    room for a prompt, and the step's estimated memory fits what is free (the estimate)."""
    check_model_source(recipe.model.name)
    return resources.preflight(recipe, world_size)


def _build_policy(
    source: str, recipe: Recipe, cluster: Cluster, say: Callable[[str], None]
) -> tuple[LogProbModel, Any]:
    """Load the model (rank 0 first, so a cache is built once) as a `LogProbModel`, sharded
    with FSDP2 when there are several processes."""
    device = cluster.device() if cluster.is_distributed else pick_device()
    with distributed.main_first(cluster):
        model, tokenizer = load_policy(source, recipe.model.dtype, device, say)
    if note := support(model).note:  # probed here, before sharding, the same on every rank
        say(f"{recipe.model.name}: {note}")
    policy = LogProbModel(model)
    if cluster.is_distributed:
        distributed.shard(policy, model)
    return policy, tokenizer


def _reference(
    policy: LogProbModel,
    recipe: Recipe,
    resumed: bool,
    cluster: Cluster,
    say: Callable[[str], None],
) -> LogProbModel | None:
    """The frozen initial model for the KL term (None without one), sharded like the policy."""
    if recipe.algo.kl_beta == 0:
        return None
    if resumed or cluster.is_distributed:
        ref, _ = _build_policy(recipe.model.name, recipe, cluster, say)
    else:
        ref = LogProbModel(copy.deepcopy(policy.model))  # taken before any update
    ref.eval().requires_grad_(False)
    return ref


def _write_checkpoint(
    directory: Path,
    policy: LogProbModel,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    cluster: Cluster,
) -> None:
    """This rank's part of a checkpoint. One process: the model directory and everything
    else in trainer_state.{json,safetensors}. N processes: rank 0 writes the model from a
    full state dict gathered from the shards; every rank writes its optimiser shard and RNG
    states. Nothing is pickled (see `safestate`)."""
    model = causal_lm(policy)
    if not cluster.is_distributed:
        model.save_pretrained(directory, safe_serialization=True)
        state = {**state, "optimizer": optimizer.state_dict(), "rng": rng_state()}
    else:
        weights = distributed.full_state_dict(model)  # collective; empty off rank 0
        if cluster.is_main:
            model.save_pretrained(directory, state_dict=weights, safe_serialization=True)
        for part in (OPTIMIZER_DIR, RNG_DIR):
            (directory / part).mkdir(exist_ok=True)
        rank = f"rank{cluster.rank}"
        distributed.save_optimizer(policy, optimizer, directory / OPTIMIZER_DIR / rank)
        safestate.save_state(rng_state(), directory / RNG_DIR / rank)
    if cluster.is_main:
        tokenizer.save_pretrained(directory)
        safestate.save_state({**state, "world_size": cluster.world_size}, directory / STATE_STEM)


def _restore(
    checkpoint: Path,
    policy: LogProbModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cluster: Cluster,
) -> dict[str, Any]:
    """Load a checkpoint's optimiser, scheduler and RNG states; returns its trainer state.
    The weights were already loaded with the model."""
    state = load_trainer_state(checkpoint)
    written_by = state.get("world_size", 1)
    if written_by != cluster.world_size:
        raise UserError(
            f"{checkpoint} was written by {written_by} process(es) and this run has "
            f"{cluster.world_size}; resume with the same number (gspo train --resume RUN_DIR "
            f"--nproc {written_by})"
        )
    try:
        if cluster.is_distributed:
            rank = f"rank{cluster.rank}"
            distributed.load_optimizer(policy, optimizer, checkpoint / OPTIMIZER_DIR / rank)
            set_rng_state(safestate.load_state(checkpoint / RNG_DIR / rank))
        else:
            optimizer.load_state_dict(state["optimizer"])
            _require_matching_shapes(optimizer)
            set_rng_state(state["rng"])
        scheduler.load_state_dict(state["scheduler"])
        int(state["skipped_in_a_row"])
    except (KeyError, TypeError, ValueError, RuntimeError, OSError) as exc:
        raise CheckpointError(
            f"{checkpoint}: its trainer state does not fit this model and optimiser "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}); "
            "resume from another checkpoint"
        ) from None
    return state


def _require_matching_shapes(optimizer: torch.optim.Optimizer) -> None:
    """Every loaded per-parameter tensor (AdamW's moments) has its parameter's shape, so a
    tampered or mismatched state fails here rather than inside the first optimiser step."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for name, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.ndim and value.shape != param.shape:
                    raise ValueError(
                        f"{name} has shape {list(value.shape)}, not {list(param.shape)}"
                    )


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

    # --- setup: data, model, reference, reward, optimiser --------------------------------
    # Data first, with the tokenizer alone: a bad source fails before a model loads.
    fit = context_fit(recipe.model.name, recipe.rollout.max_new_tokens)
    _, splits = load_task(
        recipe.data, load_tokenizer(recipe.model.name, say), recipe.model.name, say, fit
    )
    train_set, test_set = splits["train"], splits["test"][: recipe.data.eval_size]
    require_working_rewards(recipe, train_set, say)  # a broken reward fails before the model
    source = str(resume_from) if resume_from else recipe.model.name
    policy, tokenizer = _build_policy(source, recipe, cluster, say)
    policy.train()
    meter = _drift_meter(policy, recipe)  # None for a dense model
    ref_policy = _reference(policy, recipe, resume_from is not None, cluster, say)
    reward_fn = rewards.combine(recipe.reward_terms)
    checker = rewards.checker(recipe.reward_terms)  # decides correct answers in evaluations
    optim = recipe.optim
    optimizer = torch.optim.AdamW(policy.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
    warmup = optim.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min(1.0, (i + 1) / warmup) if warmup else 1.0
    )
    start_step, prompts_used, skipped_in_a_row = 0, 0, 0
    evals: list[float] = []
    watchdog = Watchdog(recipe.algo.mode, recipe.rollout.max_new_tokens)
    if resume_from is not None:
        state = _restore(resume_from, policy, optimizer, scheduler, cluster)
        start_step, prompts_used = state["step"], state["prompts_used"]
        skipped_in_a_row = state["skipped_in_a_row"]
        evals = _rewind_logs(run_dir, start_step, recipe, watchdog, cluster)
        say(f"resuming {run_dir} from step {start_step} ({resume_from.name})")
    prompts = itertools.islice(prompt_stream(len(train_set), recipe.seed), prompts_used, None)
    if cluster.is_main:
        write_text_atomic(run_dir / RECIPE_FILE, recipe.to_yaml())  # only once setup succeeded
    share = cluster.share(recipe.rollout.prompts_per_step)  # this rank's prompts of each step

    def checkpoint(step: int) -> Path:
        state: dict[str, Any] = {"step": step, "prompts_used": prompts_used}
        state |= {"skipped_in_a_row": skipped_in_a_row, "scheduler": scheduler.state_dict()}
        return save_checkpoint(
            run_dir,
            step,
            lambda d: _write_checkpoint(d, policy, tokenizer, optimizer, state, cluster),
            recipe.train.keep_last,
            cluster,
        )

    writer = MetricsWriter(run_dir / METRICS_FILE) if cluster.is_main else NullWriter()
    samples_on = cluster.is_main and recipe.train.log_completions > 0
    samples = MetricsWriter(run_dir / COMPLETIONS_FILE) if samples_on else NullWriter()
    with writer, samples, StopRequest() as stop:

        def log(row: Row) -> None:
            writer.write(row)
            if cluster.is_main:
                on_row(row)

        def evaluate(step: int) -> float:
            t0 = time.perf_counter()
            accuracy = _greedy_accuracy(policy, tokenizer, test_set, checker, recipe, cluster)
            seconds = time.perf_counter() - t0
            row = {"step": step, "eval_accuracy": accuracy, "eval_n": len(test_set)}
            log({**row, "eval_s": seconds})
            return accuracy

        first_accuracy = evals[0] if evals else evaluate(0)
        last_accuracy = evals[-1] if evals else first_accuracy
        last_saved = resume_from  # the newest complete checkpoint, if any

        # --- the loop ----------------------------------------------------------------------
        for step in range(start_step + 1, recipe.train.steps + 1):
            step_start = time.perf_counter()
            indices = [next(prompts) for _ in range(recipe.rollout.prompts_per_step)]
            prompts_used += len(indices)
            examples = [train_set[i] for i in indices[share.start : share.stop]]
            batch, rollout_stats = collect(
                policy,
                ref_policy,
                tokenizer,
                examples,
                reward_fn,
                recipe,
                step=step,
                cluster=cluster,
            )
            update_stats, outcomes = update(
                policy, optimizer, scheduler, batch, recipe, step, cluster, meter
            )
            step_s = time.perf_counter() - step_start
            row = {
                "step": step,
                **asdict(rollout_stats),
                **asdict(update_stats),
                **_drift_metrics(meter, cluster),
                "lr": optimizer.param_groups[0]["lr"],
                "rollout_s": rollout_stats.seconds,
                "step_s": step_s,
                "tokens_per_s": rollout_stats.completion_tokens / step_s,
            }
            warnings = watchdog.observe(row)  # judged on the row's figures, timings unused
            log({**row, "warnings": [w.as_row() for w in warnings]})
            for sample in completion_sample(step, batch, indices, train_set, recipe):
                samples.write(sample)
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
            stopping = distributed.any_rank(cluster, stop.requested)  # every rank stops together
            halting = recipe.train.strict and distributed.any_rank(cluster, bool(warnings))
            last_step = step == recipe.train.steps
            if _due(step, recipe.train.save_every) or last_step or stopping or halting:
                last_saved = checkpoint(step)
            if halting:
                if last_step and cluster.is_main:
                    link_final(checkpoint_dir(run_dir, step), run_dir)
                raise WatchdogStop(_strict_message(step, warnings, run_dir, last_step, cluster))
            if stopping and step < recipe.train.steps:
                signal_name = _first(distributed.gather_objects(cluster, stop.signal_name))
                raise Interrupted(
                    f"stopped by {signal_name} after step {step}; checkpoint saved. "
                    f"Resume with: gspo train --resume {run_dir}{_nproc_flag(cluster)}",
                    signal_name,
                )

    if cluster.is_main:
        link_final(checkpoint_dir(run_dir, recipe.train.steps), run_dir)
    return TrainSummary(
        run_dir, recipe.train.steps, first_accuracy, last_accuracy, time.perf_counter() - started
    )


def _rewind_logs(
    run_dir: Path, start_step: int, recipe: Recipe, watchdog: Watchdog, cluster: Cluster
) -> list[float]:
    """Cut `metrics.jsonl` and `completions.jsonl` back to the checkpoint's step, replay the
    kept rows into the watchdog (so it picks up where it was), and return the evaluations
    kept, oldest first."""
    if start_step >= recipe.train.steps:
        raise UserError(
            f"{run_dir} already finished {start_step} steps; to train further, raise "
            f"train.steps, e.g. --set train.steps={start_step + recipe.train.steps}"
        )
    kept = [r for r in read_metrics(run_dir / METRICS_FILE) if r["step"] <= start_step]
    for row in kept:
        if "eval_accuracy" not in row:
            watchdog.observe(row)
    distributed.barrier(cluster)  # every rank has read the metrics before rank 0 cuts them
    if cluster.is_main:
        write_text_atomic(run_dir / METRICS_FILE, "".join(MetricsWriter.line(r) for r in kept))
        _cut_back(run_dir / COMPLETIONS_FILE, start_step)
    return [r["eval_accuracy"] for r in kept if "eval_accuracy" in r]


def _drift_meter(policy: LogProbModel, recipe: Recipe) -> routing.DriftMeter | None:
    """A router-drift meter for a mixture-of-experts policy, else None (each rank measures
    its own rows; `_drift_metrics` sums the ranks). `algo.routing_replay` needs one: it is
    refused before any step otherwise."""
    routers = routing.find_routers(policy)
    if recipe.algo.routing_replay and not routers:
        raise UserError(
            f"algo.routing_replay: model {recipe.model.name!r} has no Qwen3-MoE routers, so "
            "there is no expert choice to replay; use a Qwen3-MoE model (e.g. model.name: "
            "tiny-qwen3-moe) or set algo.routing_replay: false"
        )
    return routing.DriftMeter() if routers else None


def _drift_metrics(meter: routing.DriftMeter | None, cluster: Cluster) -> dict[str, float]:
    """The metrics row's router drift over the whole last minibatch: every rank's counts
    summed (collective), then the fractions; {} for a dense model."""
    if meter is None:
        return {}
    distributed.all_reduce(cluster, meter.counts)
    return meter.metrics()


def _greedy_accuracy(
    policy: LogProbModel,
    tokenizer: Any,
    examples: list[Example],
    checker: rewards.RewardFn,
    recipe: Recipe,
    cluster: Cluster,
) -> float:
    """Held-out greedy accuracy; with N processes each rank decodes a share and the counts
    are summed."""
    share = cluster.uneven_share(len(examples))
    with distributed.unsharded(policy):
        correct = greedy_correct(
            causal_lm(policy),
            tokenizer,
            examples[share.start : share.stop],
            checker,
            max_new_tokens=recipe.rollout.max_new_tokens,
        )
    total = int(distributed.all_reduce(cluster, torch.tensor([correct])).item())
    return total / max(len(examples), 1)


def completion_sample(
    step: int,
    batch: RolloutBatch,
    indices: list[int],
    examples: list[Example],
    recipe: Recipe,
) -> list[Row]:
    """The step's first `train.log_completions` completions, group by group, as rows of
    completions.jsonl: what the model wrote for which prompt and how it was scored. Row r of
    the batch answers `examples[indices[r // G]]` (the whole step's indices, in row order)."""
    g = recipe.rollout.group_size
    rows = []
    for r in range(min(recipe.train.log_completions, len(batch.gen.texts))):
        example = examples[indices[r // g]]
        rows.append(
            {
                "step": step,
                "group": r // g,
                "prompt": example.prompt,
                "reference": example.reference,
                "completion": batch.gen.texts[r],
                "truncated": bool(batch.gen.truncated[r].item()),
                "reward": batch.rewards[r].item(),
                "advantage": batch.advantages[r].item(),
            }
        )
    return rows


def _cut_back(path: Path, step: int) -> None:
    """Drop the rows of a JSONL run file after `step` (a resume repeats them)."""
    if path.is_file():
        kept = [r for r in read_metrics(path) if r.get("step", 0) <= step]
        write_text_atomic(path, "".join(MetricsWriter.line(r) for r in kept))


def _strict_message(
    step: int, warnings: list[RunWarning], run_dir: Path, finished: bool, cluster: Cluster
) -> str:
    """Why a strict run stopped, where its checkpoint is, and how to go on."""
    named = "; ".join(f"{w.code}: {w.message}" for w in warnings) or "a warning on rank 0"
    where = checkpoint_dir(run_dir, step)
    then = (
        "the run had reached its last step (final model in final/)"
        if finished
        else "fix the recipe and start a new run, or continue this one without train.strict: "
        f"gspo train --resume {run_dir} --set train.strict=false{_nproc_flag(cluster)}"
    )
    return f"train.strict stopped the run after step {step}: {named}. Checkpoint: {where}; {then}"


def _nproc_flag(cluster: Cluster) -> str:
    """` --nproc N` when the run has N > 1 processes (a resume needs as many), else ''."""
    return f" --nproc {cluster.world_size}" if cluster.is_distributed else ""


def _first(names: list[str | None]) -> str:
    return next((n for n in names if n is not None), "SIGINT")
