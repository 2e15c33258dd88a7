"""Our losses against TRL's on the same tensors: loss and gradient to 1e-6 (float64).

TRL computes its loss inside `GRPOTrainer._compute_loss`, which needs a model and a trainer,
so `_trl_loss` re-creates its lines, from trl 1.16.0's `trl/trainer/grpo_trainer.py`:
the log-ratio and `importance_sampling_level` (lines 3083-3095), the per-token loss for
"cispo" and the clipped family (3109-3120) and the aggregation per `loss_type` (3153-3173),
with β = 0, no vLLM correction and one process without gradient accumulation (so DAPO's and
CISPO's `num_items_in_batch` is the batch's token count). TRL's `epsilon_high` is CISPO's
absolute cap (`clamp(coef_1, max=epsilon_high)`): our `1 + clip_high` with no lower bound.
GMPO is not in TRL; `_verl_gmpo` re-creates verl's `compute_policy_loss_geo_mean`
(`verl/trainer/ppo/core_algos.py`, the GMPO authors' reference). Skipped without the `bench`
extra (trl).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from gspo_cli.losses import Mode, policy_loss

pytest.importorskip("trl")

F64 = torch.float64
MAX_COMPLETION = 7  # TRL's max_completion_length: Dr. GRPO's constant


def _batch(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(logprobs, old logprobs, advantages, mask): 6 responses of 1-7 tokens, off-policy
    enough that some tokens clip under ε = 0.2."""
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(6, MAX_COMPLETION, generator=gen, dtype=F64) * 3  # [N, T]
    logprobs = old + 0.3 * torch.randn(6, MAX_COMPLETION, generator=gen, dtype=F64)  # [N, T]
    adv = torch.randn(6, generator=gen, dtype=F64)  # [N]
    lengths = torch.tensor([1, 7, 3, 5, 2, 6])
    mask = (torch.arange(MAX_COMPLETION)[None] < lengths[:, None]).to(F64)  # [N, T]
    return logprobs, old, adv, mask


def _trl_loss(
    loss_type: str,
    level: str,
    per_token_logps: Tensor,
    old_per_token_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    epsilon_low: float,
    epsilon_high: float,
) -> Tensor:
    """TRL 1.16's loss lines (see the module docstring), with its variable names."""
    advantages = advantages.unsqueeze(1)  # TRL's inputs["advantages"][:, None]
    log_ratio = per_token_logps - old_per_token_logps
    if level == "token":
        log_importance_weights = log_ratio
    else:
        log_importance_weights = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        log_importance_weights = log_importance_weights.unsqueeze(-1)
    coef_1 = torch.exp(log_importance_weights)
    if loss_type == "cispo":
        clamped_ratios = torch.clamp(coef_1, max=epsilon_high).detach()
        per_token_loss = -clamped_ratios * advantages * per_token_logps
    else:
        coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
        per_token_loss = -torch.min(coef_1 * advantages, coef_2 * advantages)
    if loss_type == "grpo":
        return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "dr_grpo":
        return (per_token_loss * mask).sum() / (per_token_loss.size(0) * MAX_COMPLETION)
    normalizer = mask.sum().clamp(min=1.0)  # cispo, dapo: num_items_in_batch, one process
    return (per_token_loss * mask).sum() / normalizer


def _verl_gmpo(
    log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, mask: Tensor, lo: float, hi: float
) -> Tensor:
    """verl's `compute_policy_loss_geo_mean` (advantages given per response)."""
    advantages = advantages.unsqueeze(1).expand_as(mask)
    negative_approx_kl = log_prob - old_log_prob
    sgn_advantage = torch.sign(advantages)
    clamp = torch.clamp(negative_approx_kl, -lo, hi)
    kl_min = sgn_advantage * torch.min(sgn_advantage * negative_approx_kl, sgn_advantage * clamp)
    mask_sum = mask.sum(dim=-1)
    ratio = torch.exp((kl_min * mask).sum(dim=-1) / (mask_sum + 1e-8))
    advantage = (advantages * mask).sum(dim=-1) / (mask_sum + 1e-8)
    return torch.mean(-advantage * ratio)


def _ours(
    mode: Mode, lp: Tensor, old: Tensor, adv: Tensor, mask: Tensor, clip: tuple[float, float]
) -> Tensor:
    loss, _ = policy_loss(
        lp,
        old,
        adv,
        mask,
        mode=mode,
        clip_low=clip[0],
        clip_high=clip[1],
        max_tokens=MAX_COMPLETION,
    )
    return loss


def _loss_and_grad(fn: object, lp: Tensor) -> tuple[float, Tensor]:
    leaf = lp.detach().clone().requires_grad_()
    loss = fn(leaf)  # type: ignore[operator]
    loss.backward()
    assert leaf.grad is not None
    return loss.item(), leaf.grad


# (our mode, our clip, TRL loss_type, TRL importance_sampling_level, TRL ε, TRL ε_high)
CASES = [
    ("grpo", (0.2, 0.27), "grpo", "token", 0.2, 0.27),
    ("gspo", (3e-4, 4e-4), "grpo", "sequence", 3e-4, 4e-4),
    ("dr_grpo", (0.2, 0.2), "dr_grpo", "token", 0.2, 0.2),
    ("dapo", (0.2, 0.28), "dapo", "token", 0.2, 0.28),
    ("cispo", (1.0, 4.0), "cispo", "token", 0.2, 5.0),
    ("cispo", (1.0, 0.1), "cispo", "token", 0.2, 1.1),  # a cap that binds often
]


@pytest.mark.parametrize(("mode", "clip", "loss_type", "level", "eps", "eps_high"), CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_trl(
    mode: Mode,
    clip: tuple[float, float],
    loss_type: str,
    level: str,
    eps: float,
    eps_high: float,
    seed: int,
) -> None:
    lp, old, adv, mask = _batch(seed)
    ours = _loss_and_grad(lambda x: _ours(mode, x, old, adv, mask, clip), lp)
    theirs = _loss_and_grad(
        lambda x: _trl_loss(loss_type, level, x, old, adv, mask, eps, eps_high), lp
    )
    assert ours[0] == pytest.approx(theirs[0], abs=1e-6, rel=0)
    assert torch.allclose(ours[1], theirs[1], rtol=0, atol=1e-6), (ours[1] - theirs[1]).abs().max()
    assert ours[1].abs().max() > 1e-3, "the comparison needs a real gradient"


@pytest.mark.parametrize("seed", [0, 1])
def test_gmpo_matches_verl(seed: int) -> None:
    lp, old, adv, mask = _batch(seed)
    ours = _loss_and_grad(lambda x: _ours("gmpo", x, old, adv, mask, (0.4, 0.4)), lp)
    theirs = _loss_and_grad(lambda x: _verl_gmpo(x, old, adv, mask, 0.4, 0.4), lp)
    assert ours[0] == pytest.approx(theirs[0], abs=1e-6, rel=0)
    assert torch.allclose(ours[1], theirs[1], rtol=0, atol=1e-6)
