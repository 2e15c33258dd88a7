"""A torchrun worker for test_distributed.py: ranks decode different numbers of tokens from
one FSDP2-sharded model, then train a step; it must neither hang nor crash at exit.

Usage: torchrun --nproc_per_node 2 dist_worker.py MODEL_DIR
"""

from __future__ import annotations

import os
import sys

import torch

from gspo_cli.base import distributed
from gspo_cli.models.loading import load_policy
from gspo_cli.rollout.sampling import generate
from gspo_cli.scoring.completions import LogProbModel, completion_logprobs


def main(model_dir: str) -> None:
    with distributed.session(distributed.from_env()) as cluster:
        model, tokenizer = load_policy(model_dir, "float32", torch.device("cpu"), print)
        policy = LogProbModel(model)
        distributed.shard(policy, model)
        new_tokens = 2 if cluster.rank == 0 else 12  # rank 0 finishes long before rank 1
        prompts = ["12+34="] * (3 + cluster.rank)
        seeds = list(range(len(prompts)))
        with distributed.unsharded(policy):
            gen = generate(model, tokenizer, prompts, max_new_tokens=new_tokens, seeds=seeds)
        t = gen.completion_mask.shape[1]
        logprobs = completion_logprobs(policy, gen.input_ids, gen.attention_mask, t)  # [n, T]
        logprobs.sum().backward()
        norm = distributed.local_value(torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0))
        line = f"rank {cluster.rank} decoded {t} tokens, grad norm {float(norm):.6f}\n"
        os.write(1, line.encode())  # one write: the ranks share stdout, lines must not interleave


if __name__ == "__main__":
    main(sys.argv[1])
