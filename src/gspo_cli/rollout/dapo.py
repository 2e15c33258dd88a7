"""DAPO's rollout-side techniques (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement
Learning System at Scale", arXiv 2503.14476): dynamic sampling (§3.2) and overlong reward
shaping (§3.4). Pure tensor functions and the step's figures; the loop calls them.

- **Dynamic sampling**: a group whose G rewards are all equal has advantage 0 everywhere and
  teaches nothing, so it is dropped and more prompts are sampled, round after round, until
  the step has `prompts_per_step` informative groups (Eq. 11's constraint
  0 < |{o_i correct}| < G, read here on the final reward). The extra rounds are capped
  (`rollout.max_extra_rounds`); a step that runs out fills up with the dropped groups, the
  most recent first, so the batch keeps its size (and its minibatch split) and trains on
  every informative group there is.
- **Overlong soft punishment** (Eq. 13): with L_max = `max_new_tokens` and a buffer L_c,
  R_length(y) = 0 for |y| <= L_max - L_c, ((L_max - L_c) - |y|) / L_c inside the buffer,
  times `overlong_penalty`, added to the reward.
- **Overlong filtering**: completions cut at `max_new_tokens` without an EOS are masked out
  of the loss; their rewards still count in their group's advantages (DAPO §3.4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class DynamicStats:
    """What dynamic sampling did in one step (all zero when it is off and nothing was dropped)."""

    groups_sampled: int  # groups sampled in every round of the step
    groups_dropped: int  # of those, with all-equal rewards, left out (or used only as filler)
    extra_rounds: int  # rounds sampled after the first
    cap_hit: int  # 1 when the extra rounds ran out before the step had enough groups
    filled_groups: int  # uninformative groups in the trained batch (cap hit, or off)

    def as_row(self) -> dict[str, float]:
        return {f"dynamic/{key}": value for key, value in self.__dict__.items()}


def informative_groups(rewards: Tensor, group_size: int) -> Tensor:
    """`[P]` bool: True for each group of `group_size` rewards (`[P*G]`, group by group) whose
    rewards are not all equal, i.e. whose advantages are not all 0."""
    grouped = rewards.reshape(-1, group_size)  # [P, G]
    return grouped.amax(dim=1) != grouped.amin(dim=1)  # [P]


def choose_groups(informative: list[Tensor], wanted: int) -> tuple[list[tuple[int, int]], int]:
    """Which groups make up the step's batch, from each round's informative flags `[P_r]`:
    the first `wanted` informative groups in sampling order, then, if there are fewer, the
    most recently sampled uninformative ones to fill up. Returns (round, group) pairs in
    batch order and how many of them are filler.

    >>> t, f = True, False
    >>> choose_groups([torch.tensor([f, t, f]), torch.tensor([t, f, f])], 3)
    ([(0, 1), (1, 0), (1, 2)], 1)
    """
    groups = [
        (r, i, ok) for r, flags in enumerate(informative) for i, ok in enumerate(flags.tolist())
    ]
    kept = [(r, i) for r, i, ok in groups if ok][:wanted]
    dropped = [(r, i) for r, i, ok in groups if not ok]
    filler = dropped[::-1][: wanted - len(kept)]
    return kept + filler, len(filler)


def overlong_penalty(lengths: Tensor, max_new_tokens: int, buffer: int, factor: float) -> Tensor:
    """DAPO's soft punishment (Eq. 13) of completions of `lengths` tokens `[N]`: 0 up to
    `max_new_tokens - buffer`, then falling linearly to `-factor` at `max_new_tokens`; `[N]`
    float, all 0 when `buffer` is 0.

    >>> overlong_penalty(torch.tensor([4, 6, 7, 8]), 8, 4, 1.0).tolist()
    [0.0, -0.5, -0.75, -1.0]
    """
    if buffer <= 0:
        return torch.zeros(lengths.shape, dtype=torch.float32)
    expected = max_new_tokens - buffer
    over = (lengths.float() - expected).clamp(min=0)  # [N] tokens into the buffer
    return -factor * over / buffer  # [N]
