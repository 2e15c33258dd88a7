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
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from gspo_cli import distributed, resources, rewards, routing, trainstate
from gspo_cli.checkpoint import link_final, save_checkpoint
from gspo_cli.data import Example
from gspo_cli.distributed import SINGLE, Cluster
from gspo_cli.errors import Interrupted, TrainingError, UserError, WatchdogStop
from gspo_cli.evaluate import greedy_correct
from gspo_cli.interrupt import StopRequest
from gspo_cli.metrics import MetricsWriter, NullWriter, Row
from gspo_cli.policy import check_model_source, load_policy, load_tokenizer, pick_device
from gspo_cli.preflight import require_working_rewards
from gspo_cli.prepare import load_task
from gspo_cli.recipe import Recipe, check_world_size
from gspo_cli.resources import MemoryEstimate, context_fit
from gspo_cli.rollout import RolloutBatch, collect
from gspo_cli.runfiles import (
    COMPLETIONS_FILE,
    METRICS_FILE,
    RECIPE_FILE,
    checkpoint_dir,
)
from gspo_cli.scoring import LogProbModel, causal_lm, support
from gspo_cli.storage import write_text_atomic
from gspo_cli.update import update
from gspo_cli.watchdog import RunWarning, Watchdog


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
        state = trainstate.restore(resume_from, policy, optimizer, scheduler, cluster)
        start_step, prompts_used = state["step"], state["prompts_used"]
        skipped_in_a_row = state["skipped_in_a_row"]
        evals = trainstate.rewind_logs(run_dir, start_step, recipe, watchdog, cluster)
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
            lambda d: trainstate.write_checkpoint(d, policy, tokenizer, optimizer, state, cluster),
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
