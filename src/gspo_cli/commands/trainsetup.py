"""What a training run is built from, once, before its first step: the data (with the
tokenizer alone, so a bad source fails before a model loads), the policy (sharded under
torchrun), the frozen reference for the KL term, the reward, the optimiser and its schedule,
and a router-drift meter for a mixture-of-experts policy."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gspo_cli import rewards
from gspo_cli.base import distributed
from gspo_cli.base.distributed import Cluster
from gspo_cli.base.errors import UserError
from gspo_cli.commands.prepare import load_task
from gspo_cli.commands.resources import context_fit
from gspo_cli.commands.reward_probes import require_working_rewards
from gspo_cli.data import Example
from gspo_cli.models import lora
from gspo_cli.models.loading import load_policy, load_tokenizer, pick_device
from gspo_cli.recipe import Recipe
from gspo_cli.rundir import adapter
from gspo_cli.scoring import routing
from gspo_cli.scoring.adapters import AdaptersOff
from gspo_cli.scoring.completions import LogProbModel, support


@dataclass(frozen=True)
class Parts:
    train_set: list[Example]
    test_set: list[Example]  # the first data.eval_size held-out examples
    policy: LogProbModel
    tokenizer: Any
    reference: LogProbModel | AdaptersOff | None  # the initial model, when algo.kl_beta > 0
    reward_fn: rewards.RewardFn  # the recipe's (weighted) reward
    checker: rewards.RewardFn  # decides correct answers in evaluations
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    meter: routing.DriftMeter | None  # router drift of a mixture-of-experts policy, else None


def build(
    recipe: Recipe, resume_from: Path | None, cluster: Cluster, say: Callable[[str], None]
) -> Parts:
    """Everything the loop uses. With `resume_from` the policy's weights come from that
    checkpoint (its optimiser and RNG states are restored by `trainstate.restore`); with
    LoRA, the base model's from `model.name` and the adapter's from that checkpoint."""
    if recipe.model.lora is not None:
        lora.require_peft()  # before any data or model loads
    fit = context_fit(recipe.model.name, recipe.rollout.max_new_tokens)
    tokenizer = load_tokenizer(recipe.model.name, say)
    _, splits = load_task(recipe.data, tokenizer, recipe.model.name, say, fit)
    train_set, test_set = splits["train"], splits["test"][: recipe.data.eval_size]
    require_working_rewards(recipe, train_set, say)  # a broken reward fails before the model
    policy, tokenizer = _build_policy(recipe, resume_from, cluster, say)
    policy.train()
    meter = _drift_meter(policy, recipe)
    reference = _reference(policy, recipe, resume_from is not None, cluster, say)
    optim = recipe.optim
    lr = optim.lr if recipe.model.lora is None else recipe.model.lora.lr
    trainable = [p for p in policy.parameters() if p.requires_grad]  # LoRA: the adapter only
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=optim.weight_decay)
    warmup = optim.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min(1.0, (i + 1) / warmup) if warmup else 1.0
    )
    reward_fn = rewards.combine(recipe.reward_terms)
    checker = rewards.checker(recipe.reward_terms)
    return Parts(
        train_set,
        test_set,
        policy,
        tokenizer,
        reference,
        reward_fn,
        checker,
        optimizer,
        scheduler,
        meter,
    )


def _build_policy(
    recipe: Recipe, checkpoint: Path | None, cluster: Cluster, say: Callable[[str], None]
) -> tuple[LogProbModel, Any]:
    """Load the model (rank 0 first, so a cache is built once) as a `LogProbModel`, sharded
    with FSDP2 when there are several processes: `model.name`'s weights, or `checkpoint`'s.
    With `model.lora` the adapter is injected into the loaded model in place (so sampling and
    scoring both use the live adapter) and the checkpoint holds only the adapter."""
    device = cluster.device() if cluster.is_distributed else pick_device()
    section = recipe.model.lora
    base = recipe.model.name if section is not None or checkpoint is None else str(checkpoint)
    with distributed.main_first(cluster):
        model, tokenizer = load_policy(base, recipe.model.dtype, device, say)
    if section is not None:
        lora.attach(model, section, recipe.model.name)
        if checkpoint is not None:
            adapter.load_adapter_weights(model, checkpoint)
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
) -> LogProbModel | AdaptersOff | None:
    """The frozen initial model for the KL term (None without one), sharded like the policy;
    with LoRA, the policy itself with its adapter switched off."""
    if recipe.algo.kl_beta == 0:
        return None
    if recipe.model.lora is not None:
        return AdaptersOff(policy)  # the base weights: the policy with its adapter off
    if resumed or cluster.is_distributed:
        ref, _ = _build_policy(recipe, None, cluster, say)
    else:
        ref = LogProbModel(copy.deepcopy(policy.model))  # taken before any update
    ref.eval().requires_grad_(False)
    return ref


def _drift_meter(policy: LogProbModel, recipe: Recipe) -> routing.DriftMeter | None:
    """A router-drift meter for a mixture-of-experts policy, else None (each rank measures
    its own rows; the metrics row sums the ranks). `algo.routing_replay` needs one: it is
    refused before any step otherwise."""
    routers = routing.find_routers(policy)
    if recipe.algo.routing_replay and not routers:
        raise UserError(
            f"algo.routing_replay: model {recipe.model.name!r} has no Qwen3-MoE routers, so "
            "there is no expert choice to replay; use a Qwen3-MoE model (e.g. model.name: "
            "tiny-qwen3-moe) or set algo.routing_replay: false"
        )
    return routing.DriftMeter() if routers else None
