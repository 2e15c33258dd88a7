"""A torchrun worker for test_distributed.py: ranks with different prompt and completion
widths gather a rollout batch; π_old's experts must come out in the input ids' layout.

Each rank's experts are its input ids repeated over (layer, top-k), `NO_EXPERT` on padding,
and the pad id is `NO_EXPERT` too, so after `rollout._gather` the two tensors must agree in
every (row, column, layer, slot). Usage: torchrun --nproc_per_node 2 gather_worker.py
"""

from __future__ import annotations

import torch

from gspo_cli.base import distributed
from gspo_cli.rollout import stages as rollout
from gspo_cli.rollout.sampling import Generation
from gspo_cli.scoring.routing import NO_EXPERT


def main() -> None:
    with distributed.session(distributed.from_env()) as cluster:
        r = cluster.rank
        n, p, t = 2, 2 + 3 * r, 5 - 3 * r  # rank 0: P 2, T 5; rank 1: P 5, T 2
        ids = torch.arange(n * (p + t)).reshape(n, p + t) + 100 * r  # [n, P+T] all distinct
        ids[0, 0] = NO_EXPERT  # a left-padded prompt position
        ids[1, -1] = NO_EXPERT  # a right-padded completion position
        gen = Generation(
            input_ids=ids,
            attention_mask=(ids != NO_EXPERT).long(),
            completion_mask=(ids[:, p:] != NO_EXPERT).float(),
            truncated=torch.zeros(n, dtype=torch.bool),
            texts=[f"rank {r} row {i}" for i in range(n)],
        )
        experts = ids[:, :, None, None].expand(n, p + t, 3, 2).to(torch.int16)  # [n, P+T, 3, 2]
        old = torch.zeros(n, t)
        whole, _, _, gathered = rollout._gather(cluster, gen, old, None, NO_EXPERT, experts)
        assert gathered is not None and gathered.dtype == torch.int16
        assert gathered.shape == (2 * n, 5 + 5, 3, 2), gathered.shape
        want = whole.input_ids[:, :, None, None].expand_as(gathered)
        assert torch.equal(gathered.long(), want), (gathered[..., 0, 0], whole.input_ids)
        print(f"rank {r} gathered experts in the input ids' layout", flush=True)


if __name__ == "__main__":
    main()
