"""The train-inference mismatch ledger, and its truncated importance-sampling correction.

The sampler scores each token it draws (log π_sampler, from the cached decoding pass); the
trainer's π_old is a separate full forward wherever the sampler's numbers are not exact
enough to stand in for it (bf16 and fp16 models, mixture-of-experts models whose routing is
recorded, a model the probe does not trust). Both are then log-probs of the same tokens
under the same weights, and any gap between them is numerics: the ledger logs it per step.
Where π_old *is* the sampler's own log-probs (a dense float32 model) the gap is exactly 0.

Per completion token, Δ_t = log π_old(y_t) - log π_sampler(y_t); per response, the GSPO
sequence ratio between trainer and sampler, exp(mean_t Δ_t).

TIS (Yao, Liu, Zhang, Lu, Gao et al. 2025, "Your Efficient RL Framework Secretly Brings You
Off-Policy RL Training", https://fengyao.notion.site/off-policy-rl; verl's
`tis_imp_ratio_cap`): each token's loss term is weighted by min(exp(Δ_t), C), detached, so
the gradient estimate is corrected toward the trainer's distribution with bounded variance;
the source's C is 2.
"""

from __future__ import annotations

import torch
from torch import Tensor


def ledger(trainer: Tensor, sampler: Tensor, mask: Tensor) -> dict[str, float]:
    """The step's mismatch figures from trainer and sampler log-probs `[N, T]` on the
    completion tokens of `mask` `[N, T]`: mean and max |Δ| over tokens, and the sequence
    ratio exp(mean_t Δ) between trainer and sampler: its mean, min and max over responses
    with at least one token."""
    real = mask > 0  # [N, T]
    delta = torch.where(real, trainer.float() - sampler.float(), 0.0)  # [N, T]
    tokens = real.sum().clamp(min=1)
    lengths = real.sum(dim=1)  # [N]
    ratio = torch.exp(delta.sum(dim=1) / lengths.clamp(min=1))[lengths > 0]  # [N']
    some = ratio.numel() > 0
    return {
        "mismatch/token_abs_mean": float(delta.abs().sum() / tokens),
        "mismatch/token_abs_max": float(delta.abs().max()) if delta.numel() else 0.0,
        "mismatch/seq_ratio_mean": float(ratio.mean()) if some else 1.0,
        "mismatch/seq_ratio_min": float(ratio.min()) if some else 1.0,
        "mismatch/seq_ratio_max": float(ratio.max()) if some else 1.0,
    }


def tis_weights(trainer: Tensor, sampler: Tensor, mask: Tensor, cap: float) -> Tensor:
    """TIS weights `[N, T]`: min(exp(log π_old - log π_sampler), cap) on completion tokens,
    1 on padding; float32, no gradient. Exactly 1 wherever the two log-probs are equal."""
    delta = torch.where(mask > 0, trainer.float() - sampler.float(), 0.0)  # [N, T]
    return torch.exp(delta).clamp(max=cap).detach()  # [N, T]


def tis_figures(weights: Tensor, mask: Tensor, cap: float) -> dict[str, float]:
    """The TIS weights' mean over completion tokens and the fraction of tokens at the cap."""
    real = mask > 0  # [N, T]
    tokens = real.sum().clamp(min=1)
    return {
        "tis/weight_mean": float(weights[real].sum() / tokens),
        "tis/capped_frac": float((real & (weights >= cap)).sum() / tokens),
    }
