"""`python dump_worker.py DUMP_DIR gspo-args...`: run the gspo CLI and, on every rank, save
what the distributed tests compare to DUMP_DIR/rank{r}.pt: this rank's view of the whole
final weights (as it gathers them for generation) and, per step, the prompts it sampled,
the step's prompts in row order and which rank sampled each row. A test worker, so the
product carries no debug hook for it; also usable as a torchrun target."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from gspo_cli.base import distributed
from gspo_cli.cli import app
from gspo_cli.commands import train as trainer
from gspo_cli.commands import trainsetup
from gspo_cli.scoring.completions import causal_lm

DUMP = Path(sys.argv[1])
steps: list[dict[str, Any]] = []
policies: list[Any] = []
real_sample, real_build, real_run = trainer.sample, trainsetup._build_policy, trainer.run


def recording_sample(*args: Any) -> Any:
    samples = real_sample(*args)
    examples, recipe, step, cluster = args[3], args[4], args[5], args[6]
    mine = [e.prompt for e in examples]
    every = distributed.gather_objects(cluster, mine)  # each rank's prompts, in rank order
    g = recipe.rollout.group_size
    steps.append(
        {
            "step": step,
            "prompts": [p for part in every for p in part],  # the step's, in row order
            "mine": mine,
            "sampled_by": [r for r, part in enumerate(every) for _ in range(len(part) * g)],
        }
    )
    return samples


def capturing_build(*args: Any, **kwargs: Any) -> Any:
    policy, tokenizer = real_build(*args, **kwargs)
    policies.append(policy)  # the first one built is the policy (a reference comes later)
    return policy, tokenizer


def run_then_dump(*args: Any, **kwargs: Any) -> Any:
    summary = real_run(*args, **kwargs)
    cluster = kwargs.get("cluster", distributed.SINGLE)
    policy = policies[0]
    with distributed.unsharded(policy):
        named = causal_lm(policy).named_parameters()
        weights = {k: v.detach().cpu().clone() for k, v in named}
    DUMP.mkdir(parents=True, exist_ok=True)
    record = {"rank": cluster.rank, "world_size": cluster.world_size, "weights": weights}
    torch.save(record | {"steps": steps}, DUMP / f"rank{cluster.rank}.pt")
    return summary


trainer.sample = recording_sample  # type: ignore[assignment]
trainsetup._build_policy = capturing_build  # type: ignore[assignment]
trainer.run = run_then_dump  # type: ignore[assignment]
sys.argv = ["gspo", *sys.argv[2:]]
app()
