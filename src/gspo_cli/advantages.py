"""Group-normalised advantages: each response's reward against its prompt's group of G.

Every loss mode (`losses`) takes these as its ``[N]`` advantages; GRPO-style modes scale
by the group's standard deviation, Dr. GRPO does not (`AdvantageScale`).
"""

from __future__ import annotations

from typing import get_args

import torch
from torch import Tensor

from gspo_cli.base.constants import AdvantageScale

_SCALES: tuple[str, ...] = get_args(AdvantageScale)


def group_advantages(
    rewards: Tensor,
    group_size: int,
    *,
    scale: AdvantageScale = "group",
    eps: float = 1e-6,
) -> tuple[Tensor, float]:
    """Group-relative advantages ``A_i = (r_i - mean_group) / (std + eps)``.

    ``rewards`` is ``[N]`` laid out group by group: the ``group_size`` responses of prompt p
    are rows ``p*G .. p*G+G-1``. The denominator is the group's std for ``scale="group"``, the
    whole batch's std for ``"batch"``, and 1 for ``"none"`` (no division, ``eps`` not added).
    The std is torch's default unbiased estimate (Bessel's correction, ``correction=1``), as
    in TRL, verl and the paper's reference code.

    A group whose rewards are all equal teaches nothing: it gets advantage exactly 0 for
    every scale (no floating-point residue from the mean) and counts toward
    ``zero_std_frac = (#groups with zero std) / (#groups)``.

    Returns ``(advantages [N], zero_std_frac)``; advantages carry no gradient. Raises
    ``ValueError`` if ``rewards`` is not 1-D and non-empty, if ``group_size < 2``, if ``N`` is
    not a multiple of ``group_size``, or if ``scale`` is unknown.
    """
    if group_size < 2:
        raise ValueError(
            f"group_size must be at least 2 to compare responses within a group, got {group_size}"
        )
    if rewards.dim() != 1 or rewards.numel() == 0:
        raise ValueError(
            f"rewards must be a non-empty 1-D tensor [N], got shape {tuple(rewards.shape)}"
        )
    if rewards.numel() % group_size != 0:
        raise ValueError(
            f"number of rewards ({rewards.numel()}) is not a multiple of group_size "
            f"({group_size}); rewards must hold group_size responses for every prompt"
        )
    if scale not in _SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; expected one of {_SCALES}")

    r = rewards.detach()
    if not r.is_floating_point():
        r = r.to(torch.get_default_dtype())
    grouped = r.reshape(-1, group_size)  # [P, G]
    constant = grouped.amax(dim=1) == grouped.amin(dim=1)  # [P]
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # [P, G]
    if scale == "group":
        advantages = centred / (grouped.std(dim=1, keepdim=True) + eps)  # [P, G]
    elif scale == "batch":
        advantages = centred / (r.std() + eps)  # [P, G]
    else:
        advantages = centred  # [P, G]
    advantages = torch.where(constant.unsqueeze(1), torch.zeros_like(advantages), advantages)
    zero_std_frac = float(constant.to(r.dtype).mean().item())
    return advantages.reshape(-1), zero_std_frac  # [N]
