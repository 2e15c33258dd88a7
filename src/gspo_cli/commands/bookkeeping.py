"""A training run's bookkeeping, kept out of the loop so `train.run` shows the algorithm.

`RunBook` knows where the run starts (fresh, or resumed from a checkpoint with its logs cut
back), which prompts come next, writes each step's metrics row (after the watchdog has
judged it) and completions sample (to the `train.report_to` trackers too), and after each
step: counts non-finite optimiser steps in a row, evaluates, checkpoints when due, and stops
on Ctrl-C/SIGTERM or, with `train.strict`, on a watchdog warning. Under torchrun every rank
keeps the same book; only rank 0 writes.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import torch

from gspo_cli import rewards
from gspo_cli.base import distributed
from gspo_cli.base.distributed import Cluster
from gspo_cli.base.errors import Interrupted, TrainingError, WatchdogStop
from gspo_cli.base.interrupt import StopRequest
from gspo_cli.base.storage import write_text_atomic
from gspo_cli.commands.trainsetup import Parts
from gspo_cli.data import Example
from gspo_cli.models import lora
from gspo_cli.recipe import Recipe
from gspo_cli.rollout.greedy import greedy_correct
from gspo_cli.rollout.stages import RolloutBatch, RolloutStats
from gspo_cli.rundir import trainstate
from gspo_cli.rundir.checkpoint import link_final, save_checkpoint
from gspo_cli.rundir.metrics import MetricsWriter, NullWriter, Row
from gspo_cli.rundir.paths import COMPLETIONS_FILE, METRICS_FILE, RECIPE_FILE, checkpoint_dir
from gspo_cli.rundir.trackers import Trackers
from gspo_cli.rundir.watchdog import RunWarning, Watchdog
from gspo_cli.scoring import routing
from gspo_cli.scoring.completions import LogProbModel, causal_lm
from gspo_cli.update import UpdateStats


def prompt_stream(n_examples: int, seed: int) -> Iterator[int]:
    """Example indices in a fresh seeded shuffle per pass over the data, forever."""
    rng = random.Random(seed)
    while True:
        order = list(range(n_examples))
        rng.shuffle(order)
        yield from order


def _due(step: int, every: int) -> bool:
    """True every `every` steps; never when `every` is 0."""
    return every > 0 and step % every == 0


class RunBook:
    """Everything about a run but the algorithm; see the module docstring."""

    def __init__(
        self,
        recipe: Recipe,
        run_dir: Path,
        parts: Parts,
        cluster: Cluster,
        resume_from: Path | None,
        say: Callable[[str], None],
    ) -> None:
        self.recipe, self.run_dir, self.parts, self.cluster = recipe, run_dir, parts, cluster
        self.watchdog = Watchdog(recipe.algo.mode, recipe.rollout.max_new_tokens)
        self.start, self.prompts_used, self.skipped_in_a_row = 0, 0, 0
        self.evals: list[float] = []
        self.last_saved = resume_from  # the newest complete checkpoint, if any
        self.warnings: list[RunWarning] = []
        self._say = say
        if resume_from is not None:
            state = trainstate.restore(
                resume_from, parts.policy, parts.optimizer, parts.scheduler, cluster
            )
            self.start, self.prompts_used = state["step"], state["prompts_used"]
            self.skipped_in_a_row = state["skipped_in_a_row"]
            self.evals = trainstate.rewind_logs(run_dir, self.start, recipe, self.watchdog, cluster)
            say(f"resuming {run_dir} from step {self.start} ({resume_from.name})")
        order = prompt_stream(len(parts.train_set), recipe.seed)
        self._prompts = itertools.islice(order, self.prompts_used, None)
        self._share = cluster.share(recipe.rollout.prompts_per_step)  # this rank's prompts
        if cluster.is_main:
            write_text_atomic(run_dir / RECIPE_FILE, recipe.to_yaml())  # setup succeeded
        self._stack = ExitStack()

    # --- the run's files and its stop request, open for the loop -------------------------

    def open(self, on_row: Callable[[Row], None]) -> Self:
        """Open the metrics and completions files and the stop request for the loop (closed
        when the `with` block ends), and evaluate the starting policy unless resuming."""
        main = self.cluster.is_main
        metrics: MetricsWriter | NullWriter = NullWriter()
        samples: MetricsWriter | NullWriter = NullWriter()
        if main:
            metrics = MetricsWriter(self.run_dir / METRICS_FILE)
        if main and self.recipe.train.log_completions > 0:
            samples = MetricsWriter(self.run_dir / COMPLETIONS_FILE)
        self._on_row = on_row
        try:
            self.metrics, self.samples = metrics, samples
            self._stack.enter_context(metrics)
            self._stack.enter_context(samples)
            self.trackers = self._open_trackers()
            self.stop = self._stack.enter_context(StopRequest())
            self.first_accuracy = self.evals[0] if self.evals else self.evaluate(0)
        except BaseException:
            self._stack.close()
            raise
        self.last_accuracy = self.evals[-1] if self.evals else self.first_accuracy
        return self

    def _open_trackers(self) -> Trackers:
        """`train.report_to`'s trackers (rank 0 only), given the resolved recipe; closed with
        the book."""
        names = self.recipe.train.report_to if self.cluster.is_main else ()
        opened = Trackers.open(names, self.run_dir, lambda text: self._say(f"warning: {text}"))
        self._stack.callback(opened.close)
        opened.log_config(self.recipe.model_dump(mode="json"))
        return opened

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()

    def steps(self) -> range:
        return range(self.start + 1, self.recipe.train.steps + 1)

    def next_prompts(self) -> tuple[list[int], list[Example]]:
        """The step's example indices (all ranks') and this rank's share of the examples."""
        indices = [next(self._prompts) for _ in range(self.recipe.rollout.prompts_per_step)]
        self.prompts_used += len(indices)
        mine = indices[self._share.start : self._share.stop]
        return indices, [self.parts.train_set[i] for i in mine]

    def _log(self, row: Row) -> None:
        self.metrics.write(row)
        if self.cluster.is_main:
            self.trackers.log_row(row)
            self._on_row(row)

    def evaluate(self, step: int) -> float:
        """Held-out greedy accuracy, logged as an evaluation row."""
        started = time.perf_counter()
        parts = self.parts
        accuracy = _greedy_accuracy(
            parts.policy, parts.tokenizer, parts.test_set, parts.checker, self.recipe, self.cluster
        )
        row = {"step": step, "eval_accuracy": accuracy, "eval_n": len(parts.test_set)}
        self._log({**row, "eval_s": time.perf_counter() - started})
        return accuracy

    # --- after each step ---------------------------------------------------------------

    def log_step(
        self,
        step: int,
        rollout: RolloutStats,
        update: UpdateStats,
        batch: RolloutBatch,
        indices: list[int],
        seconds: float,
    ) -> None:
        """The step's metrics row (judged by the watchdog) and completions sample."""
        row = {
            "step": step,
            **rollout.as_row(),
            **asdict(update),
            **_drift_metrics(self.parts.meter, self.cluster),
            "lr": self.parts.optimizer.param_groups[0]["lr"],
            "rollout_s": rollout.seconds,
            "step_s": seconds,
            "tokens_per_s": rollout.completion_tokens / seconds,
        }
        self.warnings = self.watchdog.observe(row)  # judged on the figures, timings unused
        self._log({**row, "warnings": [w.as_row() for w in self.warnings]})
        examples = self.parts.train_set
        sampled = completion_sample(step, batch, indices, examples, self.recipe)
        for sample in sampled:
            self.samples.write(sample)
        if self.cluster.is_main:
            self.trackers.log_table("completions", step, sampled)

    def after_step(self, step: int, outcomes: list[str | None]) -> None:
        """Non-finite streak, evaluation, checkpoint, then stop or halt if asked to."""
        self._count_skipped(step, outcomes)
        train, cluster = self.recipe.train, self.cluster
        last_step = step == train.steps
        if _due(step, train.eval_every) or last_step:
            self.last_accuracy = self.evaluate(step)
        stopping = distributed.any_rank(cluster, self.stop.requested)  # all stop together
        halting = train.strict and distributed.any_rank(cluster, bool(self.warnings))
        if _due(step, train.save_every) or last_step or stopping or halting:
            self.last_saved = self._checkpoint(step)
        if halting:
            if last_step and cluster.is_main:
                link_final(checkpoint_dir(self.run_dir, step), self.run_dir, self._merge())
            message = _strict_message(step, self.warnings, self.run_dir, last_step, cluster)
            raise WatchdogStop(message)
        if stopping and not last_step:
            signal_name = _first(distributed.gather_objects(cluster, self.stop.signal_name))
            raise Interrupted(
                f"stopped by {signal_name} after step {step}; checkpoint saved. "
                f"Resume with: gspo train --resume {self.run_dir}{_nproc_flag(cluster)}",
                signal_name,
            )

    def _count_skipped(self, step: int, outcomes: list[str | None]) -> None:
        """Too many optimiser steps in a row with a non-finite loss or gradient end the run."""
        trailing = list(itertools.takewhile(lambda o: o is not None, reversed(outcomes)))
        all_skipped = len(trailing) == len(outcomes)
        self.skipped_in_a_row = len(trailing) + (self.skipped_in_a_row if all_skipped else 0)
        if self.skipped_in_a_row >= self.recipe.train.max_skipped_steps:
            raise TrainingError(
                f"step {step}: {self.skipped_in_a_row} optimiser steps in a row had a "
                f"non-finite loss or gradient (last: {trailing[0]}); the weights were not "
                f"updated with them. Last good checkpoint: {self.last_saved or 'none'}. Try a "
                "lower optim.lr or a tighter optim.grad_clip"
            )

    def _checkpoint(self, step: int) -> Path:
        parts = self.parts
        state: dict[str, Any] = {"step": step, "prompts_used": self.prompts_used}
        state |= {"skipped_in_a_row": self.skipped_in_a_row}
        state |= {"scheduler": parts.scheduler.state_dict()}

        def write(directory: Path) -> None:
            trainstate.write_checkpoint(
                directory, parts.policy, parts.tokenizer, parts.optimizer, state, self.cluster
            )

        keep = self.recipe.train.keep_last
        return save_checkpoint(self.run_dir, step, write, keep, self.cluster)

    def finish(self) -> None:
        """`final/`: the last checkpoint's model, as an ordinary Hugging Face directory (LoRA:
        merged, with the adapter in `final/adapter/`)."""
        if self.cluster.is_main:
            last = checkpoint_dir(self.run_dir, self.recipe.train.steps)
            link_final(last, self.run_dir, self._merge())

    def _merge(self) -> Callable[[Path, Path], None] | None:
        """With LoRA, what writes `final/`'s merged model from the adapter; else None."""
        model = self.recipe.model
        if model.lora is None:
            return None
        return lambda adapter_dir, target: lora.write_merged(
            model.name, model.dtype, adapter_dir, target
        )


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
