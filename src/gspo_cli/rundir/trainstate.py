"""What a checkpoint holds of the trainer, and how a resume puts it back.

A checkpoint is the model directory plus the optimiser, scheduler and RNG states and the
data position (`safestate`: JSON + safetensors, nothing that runs code). A resume loads
them, checks they fit this model and optimiser, and cuts `metrics.jsonl` and
`completions.jsonl` back to the checkpoint's step so the rows repeat exactly.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from gspo_cli.base import distributed, safestate
from gspo_cli.base.distributed import Cluster
from gspo_cli.base.errors import CheckpointError, UserError
from gspo_cli.base.storage import write_text_atomic
from gspo_cli.recipe import Recipe
from gspo_cli.rundir import adapter
from gspo_cli.rundir.checkpoint import load_trainer_state
from gspo_cli.rundir.metrics import MetricsWriter, read_metrics
from gspo_cli.rundir.paths import COMPLETIONS_FILE, METRICS_FILE, OPTIMIZER_DIR, RNG_DIR, STATE_STEM
from gspo_cli.rundir.watchdog import Watchdog
from gspo_cli.scoring.completions import LogProbModel, causal_lm


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


def write_checkpoint(
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
    states. With LoRA the model directory is the adapter alone (PEFT's format). Nothing is
    pickled (see `safestate`)."""
    model = causal_lm(policy)
    if not cluster.is_distributed:
        _save_weights(model, directory, None)
        state = {**state, "optimizer": optimizer.state_dict(), "rng": rng_state()}
    else:
        weights = distributed.full_state_dict(model)  # collective; empty off rank 0
        if cluster.is_main:
            _save_weights(model, directory, weights)
        for part in (OPTIMIZER_DIR, RNG_DIR):
            (directory / part).mkdir(exist_ok=True)
        rank = f"rank{cluster.rank}"
        distributed.save_optimizer(policy, optimizer, directory / OPTIMIZER_DIR / rank)
        safestate.save_state(rng_state(), directory / RNG_DIR / rank)
    if cluster.is_main:
        tokenizer.save_pretrained(directory)
        safestate.save_state({**state, "world_size": cluster.world_size}, directory / STATE_STEM)


def _save_weights(model: Any, directory: Path, weights: dict[str, torch.Tensor] | None) -> None:
    """The model directory, or with LoRA the adapter alone in PEFT's format (`weights`: a
    full state dict gathered from the shards, when sharded)."""
    if adapter.has_adapter(model):
        adapter.save_adapter(model, directory, weights)
    else:
        model.save_pretrained(directory, state_dict=weights, safe_serialization=True)


def restore(
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


def rewind_logs(
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


def _cut_back(path: Path, step: int) -> None:
    """Drop the rows of a JSONL run file after `step` (a resume repeats them)."""
    if path.is_file():
        kept = [r for r in read_metrics(path) if r.get("step", 0) <= step]
        write_text_atomic(path, "".join(MetricsWriter.line(r) for r in kept))
