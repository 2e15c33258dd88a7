"""GSPO, GRPO and the GRPO family's policy losses as pure tensor functions.

Shapes: N responses (prompts x group size G), T completion positions. ``mask`` is 1.0 on
completion tokens (up to and including EOS) and 0.0 on padding; ``L_i = sum_t m_it``.

- Group advantage (one per response):  A_i = (r_i - mean_group r) / (std r + eps).
- GRPO (token level, Eq. 2-3):  w_it = exp(logp_it - old_it),
  loss = mean_i [ (1/L_i) sum_t m_it * -min(w_it A_i, clip(w_it, 1-eps_low, 1+eps_high) A_i) ].
- GSPO (sequence level, Eq. 5-7):  log s_i = (1/L_i) sum_t m_it (logp_it - old_it),
  loss = mean_i [ -min(s_i A_i, clip(s_i, 1-eps_low, 1+eps_high) A_i) ].
- GSPO-token (Eq. 13-14):  log s_it = sg[log s_i] + logp_it - sg[logp_it], then GRPO's
  token-level objective and aggregation with s_it in place of w_it. Its value and gradient
  equal GSPO's; it exists for per-token advantages.
- Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv 2503.20783, Eq. 3):
  GRPO's clipped token terms without the 1/L_i length normaliser and without the std in the
  advantage (``advantage_scale: none``):  loss = mean_i [ (1/C) sum_t m_it * term_it ], with
  the constant C = ``max_tokens`` (the paper's MAX_TOKENS; the recipe's max_new_tokens).
- DAPO (Yu et al. 2025, arXiv 2503.14476, Eq. 8-10): GRPO's clipped token terms with
  clip-higher (eps_low 0.2, eps_high 0.28), averaged over every token of the minibatch:
  loss = sum_{i,t} m_it * term_it / sum_{i,t} m_it.
- CISPO (MiniMax-M1, arXiv 2506.13585, Eq. 4-5): the token weight is truncated and detached,
  never the gradient:  loss = -sum_{i,t} m_it sg[clip(w_it, 1-eps_low, 1+eps_high)] A_i
  logp_it / sum_{i,t} m_it. The paper sets no lower bound (eps_low = 1 here: the weight is
  clipped to [0, 1+eps_high]); eps_high = 4 caps it at 5, ScaleRL's setting (arXiv 2510.13786).
- GMPO (Zhao et al. 2025, arXiv 2507.20673, Eq. 4-7): the geometric mean of the clipped token
  terms, clipped in log space (eps = 0.4 both sides):  with sgn = sign(A_i),
  log g_i = (1/L_i) sum_t m_it sgn * min(sgn * log w_it, sgn * clip(log w_it, -eps_low,
  eps_high)),  loss = mean_i [ -A_i exp(log g_i) ].
- KL (optional, k3):  exp(ref - logp) - (ref - logp) - 1 per token, token mean per response,
  then mean over responses.

Every log-ratio is clamped to +-``max_log_ratio`` before ``exp`` (an unclamped exp gives inf
and then NaN in every parameter). ``old_logprobs``, reference log-probs and advantages are
constants: gradient reaches ``logprobs`` only. Log-probs narrower than float32 (bf16, fp16)
are upcast, since GSPO's clip range (about 3e-4) is below bf16's resolution near 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import get_args

import torch
from torch import Tensor

from gspo_cli.base.constants import MINIBATCH_TOKEN_MODES
from gspo_cli.base.constants import AdvantageScale as AdvantageScale
from gspo_cli.base.constants import Mode as Mode

_MODES: tuple[str, ...] = get_args(Mode)


@dataclass(frozen=True)
class LossStats:
    """Detached statistics of one policy-loss call, as Python floats.

    Clip fractions and ratio statistics are per response for GSPO and GSPO-token (over
    responses with at least one completion token) and per completion token for the token
    modes (GMPO: the token ratio against its log-space bounds; CISPO: a weight truncated at
    either bound, whatever the advantage's sign). Ratios are the clamped ones the loss used.
    """

    clip_frac: float  # clip_frac_low + clip_frac_high
    clip_frac_low: float  # ratio < 1 - clip_low with advantage < 0
    clip_frac_high: float  # ratio > 1 + clip_high with advantage > 0
    ratio_mean: float  # GSPO: mean of s_i over responses; GRPO: masked mean of w_it
    ratio_min: float  # 1.0 when there is nothing to take the minimum of
    ratio_max: float  # 1.0 when there is nothing to take the maximum of


def masked_mean(values: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Mean of ``values`` over ``dim`` counting only positions where ``mask`` is non-zero.

    Computes ``sum(values * mask) / clamp(sum(mask), min=1)``, so a row whose mask is all
    zero gives 0 rather than NaN.
    """
    total = (values * mask).sum(dim=dim)  # [N] for [N, T] inputs and dim=1
    count = mask.sum(dim=dim).clamp(min=1)  # [N]
    return total / count


def sequence_log_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    """Length-normalised sequence log-ratio of GSPO (Eq. 7): ``[N, T] -> [N]``.

    ``log s_i = sum_t m_it (logp_it - old_it) / sum_t m_it``, the log of the geometric mean
    of the token ratios. ``old_logprobs`` is detached; padding positions are zeroed before
    the sum, so any value there (even inf) is ignored. An all-padding row gives 0.
    """
    _check_token_shapes(logprobs, old_logprobs, mask)
    log_ratio = _masked_log_ratio(logprobs, old_logprobs, mask)  # [N, T]
    return masked_mean(log_ratio, mask, dim=1)  # [N]


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    mode: Mode,
    clip_low: float,
    clip_high: float,
    max_log_ratio: float = 10.0,
    max_tokens: float | None = None,
    mean_length: float | None = None,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, LossStats]:
    """Clipped policy loss to minimise, for any ``Mode``, plus detached stats.

    ``logprobs``, ``old_logprobs`` and ``mask`` are ``[N, T]`` float tensors; ``advantages``
    is ``[N]``. GSPO, GSPO-token, GRPO, Dr. GRPO and GMPO average over responses with equal
    weight; DAPO and CISPO average over tokens. ``max_tokens`` is Dr. GRPO's constant C
    (default: T). ``mean_length`` sets DAPO's and CISPO's denominator to ``N * mean_length``
    (default: these rows' own token count), so a micro-batch given its whole minibatch's mean
    completion length is its exact share of the minibatch's token mean. An all-padding
    response contributes 0 to the loss and is left out of the GSPO stats. Raises
    ``ValueError`` on mismatched shapes, an unknown mode, or a negative clip / non-positive
    ``max_log_ratio``.

    ``token_weights`` ``[N, T]`` (detached; e.g. TIS, ``rollout/mismatch.py``) multiply each
    token's term before aggregation; a response-level term (GSPO, GMPO) stands at every token
    of its response, so it is multiplied by the response's mean weight. None (or all ones)
    leaves the loss and its gradient exactly as they are; the stats are unweighted.
    """
    _check_inputs(logprobs, old_logprobs, advantages, mask, token_weights, mode)
    _check_bounds(clip_low, clip_high, max_log_ratio)
    dtype = torch.promote_types(logprobs.dtype, torch.float32)
    logprobs = logprobs.to(dtype)  # [N, T]
    old_logprobs = old_logprobs.detach().to(dtype)  # [N, T]
    mask = mask.to(dtype)  # [N, T]
    adv = advantages.detach().to(dtype)  # [N]
    weights = None if token_weights is None else token_weights.detach().to(dtype)  # [N, T]
    bounds = (clip_low, clip_high, max_log_ratio)
    if mode in ("gspo", "gspo_token"):
        return _gspo_loss(logprobs, old_logprobs, adv, mask, *bounds, mode != "gspo", weights)
    if mode == "gmpo":
        return _gmpo_loss(logprobs, old_logprobs, adv, mask, *bounds, weights)
    per_token, stats = _token_terms(logprobs, old_logprobs, adv, mask, mode, *bounds)  # [N, T]
    if weights is not None:  # the one place token weights enter a token mode's loss
        per_token = per_token * weights  # [N, T]
    return _aggregate(per_token, mask, mode, max_tokens, mean_length), stats


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor) -> Tensor:
    """k3 estimate of KL(pi_theta || pi_ref) to a frozen reference, as a scalar.

    Per token ``exp(ref - logp) - (ref - logp) - 1`` (non-negative, 0 when equal), masked mean
    over each response's tokens, then mean over responses. ``ref_logprobs`` is detached, so
    gradient flows through ``logprobs`` only; padding positions are ignored.
    """
    _check_token_shapes(logprobs, ref_logprobs, mask)
    diff = -_masked_log_ratio(logprobs, ref_logprobs, mask)  # [N, T], ref - logp
    per_token = torch.exp(diff) - diff - 1  # [N, T]
    return masked_mean(per_token, mask, dim=1).mean()  # []


# --- private helpers ---------------------------------------------------------------------


def _check_inputs(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    token_weights: Tensor | None,
    mode: str,
) -> None:
    """`policy_loss`'s shapes and mode, or a ValueError that names the one that is wrong."""
    _check_token_shapes(logprobs, old_logprobs, mask)
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(
            f"advantages must have shape [N] = {tuple(logprobs.shape[:1])}, "
            f"got {tuple(advantages.shape)}"
        )
    if token_weights is not None and token_weights.shape != logprobs.shape:
        raise ValueError(
            f"token_weights must have shape [N, T] = {tuple(logprobs.shape)}, "
            f"got {tuple(token_weights.shape)}"
        )
    if mode not in _MODES:
        raise ValueError(f"unknown loss mode {mode!r}; expected one of {_MODES}")


def _check_bounds(clip_low: float, clip_high: float, max_log_ratio: float) -> None:
    if clip_low < 0 or clip_high < 0 or max_log_ratio <= 0:
        raise ValueError(
            "clip_low and clip_high must be >= 0 and max_log_ratio > 0, got "
            f"clip_low={clip_low}, clip_high={clip_high}, max_log_ratio={max_log_ratio}"
        )


def _check_token_shapes(logprobs: Tensor, other: Tensor, mask: Tensor) -> None:
    """Raise ``ValueError`` unless the three tensors are ``[N, T]`` with the same shape."""
    if logprobs.dim() != 2 or other.shape != logprobs.shape or mask.shape != logprobs.shape:
        raise ValueError(
            "log-prob tensors and mask must all be [N, T] with the same shape, got "
            f"{tuple(logprobs.shape)}, {tuple(other.shape)} and mask {tuple(mask.shape)}"
        )


def _masked_log_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    """``logprobs - sg[old_logprobs]`` on completion tokens, exactly 0 on padding: ``[N, T]``.

    ``torch.where`` (not a product with the mask) keeps inf/NaN padding values out of both
    the value and the gradient.
    """
    diff = logprobs - old_logprobs.detach()  # [N, T]
    return torch.where(mask > 0, diff, torch.zeros_like(diff))  # [N, T]


def _clipped_objective(ratio: Tensor, adv: Tensor, clip_low: float, clip_high: float) -> Tensor:
    """PPO-style pessimistic term ``-min(r A, clip(r, 1-lo, 1+hi) A)``, elementwise."""
    unclipped = ratio * adv  # [N] or [N, T]
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * adv  # [N] or [N, T]
    return -torch.minimum(unclipped, clipped)  # [N] or [N, T]


@torch.no_grad()
def _stats(
    ratio: Tensor,
    adv: Tensor,
    weight: Tensor,
    clip_low: float,
    clip_high: float,
    *,
    log_space: bool = False,
    any_sign: bool = False,
) -> LossStats:
    """Clip fractions and ratio summary over the entries where ``weight`` is non-zero.

    The bounds are ``1 - clip_low`` and ``1 + clip_high``, or ``exp(-clip_low)`` and
    ``exp(clip_high)`` with ``log_space``. A ratio past a bound counts when the advantage's
    sign makes the clip bind (PPO's rule), or always with ``any_sign`` (CISPO's truncation).
    """
    ratio, adv, weight = ratio.detach(), adv.detach(), weight.detach()
    count = weight.sum().clamp(min=1)  # []
    lower, upper = (
        (math.exp(-clip_low), math.exp(clip_high)) if log_space else (1 - clip_low, 1 + clip_high)
    )
    low = ((ratio < lower) & ((adv < 0) | any_sign)).to(weight.dtype)  # same shape as ratio
    high = ((ratio > upper) & ((adv > 0) | any_sign)).to(weight.dtype)  # same shape as ratio
    frac_low = float(((low * weight).sum() / count).item())
    frac_high = float(((high * weight).sum() / count).item())
    kept = ratio[weight > 0]  # [K]
    has_any = kept.numel() > 0
    return LossStats(
        clip_frac=frac_low + frac_high,
        clip_frac_low=frac_low,
        clip_frac_high=frac_high,
        ratio_mean=float(((ratio * weight).sum() / count).item()),
        ratio_min=float(kept.min().item()) if has_any else 1.0,
        ratio_max=float(kept.max().item()) if has_any else 1.0,
    )


def _token_terms(
    logprobs: Tensor,
    old_logprobs: Tensor,
    adv: Tensor,
    mask: Tensor,
    mode: str,
    clip_low: float,
    clip_high: float,
    max_log_ratio: float,
) -> tuple[Tensor, LossStats]:
    """Per-token terms of the token-ratio modes (GRPO, Dr. GRPO, DAPO: PPO's clipped term;
    CISPO: the detached truncated weight times A times log-prob), and their stats."""
    log_w = _masked_log_ratio(logprobs, old_logprobs, mask)  # [N, T]
    w = torch.exp(log_w.clamp(-max_log_ratio, max_log_ratio))  # [N, T]
    adv_t = adv.unsqueeze(1).expand_as(w)  # [N, T]
    if mode != "cispo":
        per_token = _clipped_objective(w, adv_t, clip_low, clip_high)  # [N, T]
        return per_token, _stats(w, adv_t, mask, clip_low, clip_high)
    weight = w.clamp(1 - clip_low, 1 + clip_high).detach()  # [N, T], sg[clip(w)]
    logp = torch.where(mask > 0, logprobs, torch.zeros_like(logprobs))  # [N, T]
    per_token = -weight * adv_t * logp  # [N, T]
    return per_token, _stats(w, adv_t, mask, clip_low, clip_high, any_sign=True)


def _aggregate(
    per_token: Tensor,
    mask: Tensor,
    mode: str,
    max_tokens: float | None,
    mean_length: float | None,
) -> Tensor:
    """The mode's aggregation of ``[N, T]`` token terms into the scalar loss."""
    if mode in MINIBATCH_TOKEN_MODES:  # DAPO, CISPO: one token mean over every response
        total = mask.sum() if mean_length is None else mask.new_tensor(mean_length * len(mask))
        return (per_token * mask).sum() / total.clamp(min=1e-8)  # []
    if mode == "dr_grpo":  # token sums over a constant, never the response's own length
        constant = float(mask.shape[1]) if max_tokens is None else float(max_tokens)
        return ((per_token * mask).sum(dim=1) / constant).mean()  # []
    return masked_mean(per_token, mask, dim=1).mean()  # [] GRPO: token mean per response


def _gmpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    adv: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
    max_log_ratio: float,
    weights: Tensor | None = None,
) -> tuple[Tensor, LossStats]:
    """GMPO: geometric mean of the token terms, each clipped in log space (see the module)."""
    log_w = _masked_log_ratio(logprobs, old_logprobs, mask)  # [N, T]
    sign = adv.sign().unsqueeze(1)  # [N, 1]
    bounded = log_w.clamp(-clip_low, clip_high)  # [N, T]
    log_term = sign * torch.minimum(sign * log_w, sign * bounded)  # [N, T], 0 where A = 0
    log_g = masked_mean(log_term, mask, dim=1).clamp(-max_log_ratio, max_log_ratio)  # [N]
    has_tokens = (mask.sum(dim=1) > 0).to(log_g.dtype)  # [N]
    per_response = -adv * torch.exp(log_g) * has_tokens  # [N]
    if weights is not None:  # the response's term stands at each token: its mean weight
        per_response = per_response * masked_mean(weights, mask, dim=1)  # [N]
    loss = per_response.mean()  # []
    w = torch.exp(log_w.clamp(-max_log_ratio, max_log_ratio))  # [N, T]
    adv_t = adv.unsqueeze(1).expand_as(w)  # [N, T]
    return loss, _stats(w, adv_t, mask, clip_low, clip_high, log_space=True)


def _gspo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    adv: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
    max_log_ratio: float,
    token_level: bool,
    weights: Tensor | None = None,
) -> tuple[Tensor, LossStats]:
    """GSPO (one ratio per response) or GSPO-token (same value and gradient, per token)."""
    log_s = sequence_log_ratio(logprobs, old_logprobs, mask)  # [N]
    log_s_clamped = log_s.clamp(-max_log_ratio, max_log_ratio)  # [N]
    s = torch.exp(log_s_clamped)  # [N]
    has_tokens = (mask.sum(dim=1) > 0).to(s.dtype)  # [N]
    if token_level:
        # log s_it = sg[log s_i] + logp_it - sg[logp_it]. The in-range indicator reproduces the
        # zero gradient that GSPO's clamp gives when |log s_i| > max_log_ratio.
        in_range = (log_s.abs() <= max_log_ratio).to(s.dtype).unsqueeze(1)  # [N, 1]
        token_part = _masked_log_ratio(logprobs, logprobs, mask) * in_range  # [N, T], value 0
        s_t = torch.exp(log_s_clamped.detach().unsqueeze(1) + token_part)  # [N, T]
        adv_t = adv.unsqueeze(1).expand_as(s_t)  # [N, T]
        per_token = _clipped_objective(s_t, adv_t, clip_low, clip_high)  # [N, T]
        if weights is not None:
            per_token = per_token * weights  # [N, T]
        loss = masked_mean(per_token, mask, dim=1).mean()  # []
    else:
        # One term per response, never broadcast over tokens: that would length-weight it.
        per_response = _clipped_objective(s, adv, clip_low, clip_high) * has_tokens  # [N]
        if weights is not None:  # the response's term stands at each token: its mean weight
            per_response = per_response * masked_mean(weights, mask, dim=1)  # [N]
        loss = per_response.mean()  # []
    return loss, _stats(s, adv, has_tokens, clip_low, clip_high)
