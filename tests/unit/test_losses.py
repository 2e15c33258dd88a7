"""Unit tests for gspo_cli.losses: hand-computed values and invariants, float64, tight atol."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import astuple

import pytest
import torch
from torch import Tensor

from gspo_cli.advantages import group_advantages
from gspo_cli.losses import (
    LossStats,
    Mode,
    kl_k3,
    masked_mean,
    policy_loss,
    sequence_log_ratio,
)

F64 = torch.float64
ATOL = 1e-12
MODES: tuple[Mode, ...] = ("gspo", "grpo", "gspo_token")


def _t(rows: Sequence[Sequence[float]] | Sequence[float], grad: bool = False) -> Tensor:
    """A float64 tensor, optionally a leaf that requires grad."""
    return torch.tensor(rows, dtype=F64, requires_grad=grad)


def _close(actual: Tensor | float, expected: Tensor | float, atol: float = ATOL) -> bool:
    """Elementwise closeness with an absolute tolerance and no relative slack."""
    a = torch.as_tensor(actual, dtype=F64)
    e = torch.as_tensor(expected, dtype=F64)
    return bool(torch.allclose(a, e, rtol=0.0, atol=atol))


def _random_batch(
    seed: int, n: int, t: int, noise: float, lengths: list[int] | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random off-policy (logprobs leaf, old, advantages, mask) in float64."""
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(n, t, generator=gen, dtype=F64) * 3  # [N, T]
    logprobs = (old + noise * torch.randn(n, t, generator=gen, dtype=F64)).requires_grad_()
    adv = torch.randn(n, generator=gen, dtype=F64)  # [N]
    if lengths is None:
        lengths = torch.randint(1, t + 1, (n,), generator=gen).tolist()
    mask = (torch.arange(t).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).to(F64)  # [N, T]
    return logprobs, old, adv, mask


def _loss_and_grad(
    logprobs: Tensor,
    old: Tensor,
    adv: Tensor,
    mask: Tensor,
    mode: Mode,
    clip_low: float,
    clip_high: float,
    max_log_ratio: float = 10.0,
) -> tuple[Tensor, Tensor, LossStats]:
    """Loss, gradient wrt a fresh copy of logprobs, and stats."""
    leaf = logprobs.detach().clone().requires_grad_()
    loss, stats = policy_loss(
        leaf,
        old,
        adv,
        mask,
        mode=mode,
        clip_low=clip_low,
        clip_high=clip_high,
        max_log_ratio=max_log_ratio,
    )
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad, stats


# --- policy_loss: hand-computed values -------------------------------------------------------


def test_gspo_loss_and_clip_fractions_hand_computed() -> None:
    """GSPO loss, gradient and per-response clip stats match a hand-worked 3-response case."""
    # old = -1 everywhere; logp - old per token (x = padding, value ignored):
    #   r0: [0.6, 0.0, 0.3] L=3 -> log s = 0.3  -> s = e^0.3  = 1.3499 > 1.25, A=+1   -> clip high
    #   r1: [-0.5, -0.3, x] L=2 -> log s = -0.4 -> s = e^-0.4 = 0.6703 < 0.80, A=-2   -> clip low
    #   r2: [0.5, x, x]     L=1 -> log s = 0.5  -> s = e^0.5  = 1.6487 > 1.25, A=-0.5 -> NOT
    #       clipped: min(sA, 1.25A) = min(-0.8244, -0.625) = sA, the unclipped term.
    # per response -min(sA, clip(s)A): r0 = -1.25, r1 = -(0.8 * -2) = 1.6, r2 = 0.5 e^0.5
    # loss = (-1.25 + 1.6 + 0.5 e^0.5) / 3
    # grad: r0, r1 clipped -> 0. r2: d/dlogp_20 of (0.5 s / 3) = 0.5 e^0.5 * (1/L=1) / 3
    old = torch.full((3, 3), -1.0, dtype=F64)
    logprobs = old + _t([[0.6, 0.0, 0.3], [-0.5, -0.3, 7.0], [0.5, -9.0, 9.0]])
    mask = _t([[1, 1, 1], [1, 1, 0], [1, 0, 0]])
    adv = _t([1.0, -2.0, -0.5])
    loss, grad, stats = _loss_and_grad(logprobs, old, adv, mask, "gspo", 0.2, 0.25)

    expected_loss = (-1.25 + 1.6 + 0.5 * math.exp(0.5)) / 3
    expected_grad = torch.zeros(3, 3, dtype=F64)
    expected_grad[2, 0] = 0.5 * math.exp(0.5) / 3
    assert _close(loss, expected_loss), f"loss {loss.item()} != {expected_loss}"
    assert _close(grad, expected_grad), f"grad {grad} != {expected_grad}"
    assert _close(stats.clip_frac_low, 1 / 3), f"clip_frac_low {stats.clip_frac_low}"
    assert _close(stats.clip_frac_high, 1 / 3), f"clip_frac_high {stats.clip_frac_high}"
    assert _close(stats.clip_frac, 2 / 3), f"clip_frac {stats.clip_frac}"
    expected_mean = (math.exp(0.3) + math.exp(-0.4) + math.exp(0.5)) / 3
    assert _close(stats.ratio_mean, expected_mean), f"ratio_mean {stats.ratio_mean}"
    assert _close(stats.ratio_min, math.exp(-0.4)), f"ratio_min {stats.ratio_min}"
    assert _close(stats.ratio_max, math.exp(0.5)), f"ratio_max {stats.ratio_max}"


def test_grpo_loss_and_clip_fractions_hand_computed() -> None:
    """GRPO token-level loss, gradient and per-token clip stats match a hand-worked case."""
    # old = -2 everywhere; clip range [0.8, 1.25]; logp - old per token (x = padding):
    #   r0 (A=+1, L=3): [0.5, 0.1, -0.5]
    #     t0: w=e^0.5=1.6487 > 1.25, A>0 -> min(1.6487, 1.25) = 1.25 (clipped high), loss -1.25
    #     t1: w=e^0.1 in range                                 -> loss -e^0.1
    #     t2: w=e^-0.5=0.6065 < 0.8 but A>0 -> min(0.6065, 0.8) = w (NOT clipped), loss -e^-0.5
    #   r1 (A=-1, L=2): [-0.5, 0.5, x]
    #     t0: w=e^-0.5 < 0.8, A<0 -> min(-0.6065, -0.8) = -0.8 (clipped low), loss 0.8
    #     t1: w=e^0.5 > 1.25 but A<0 -> min(-1.6487, -1.25) = -w (NOT clipped), loss e^0.5
    # loss = mean(r0 token mean, r1 token mean)
    #      = ( -(1.25 + e^0.1 + e^-0.5)/3 + (0.8 + e^0.5)/2 ) / 2
    # grad (1/N=1/2, 1/L): r0t1 = -e^0.1/6, r0t2 = -e^-0.5/6, r1t1 = +e^0.5/4, clipped ones 0
    # stats over 5 tokens: 1 low, 1 high; ratios e^.5, e^.1, e^-.5, e^-.5, e^.5
    old = torch.full((2, 3), -2.0, dtype=F64)
    logprobs = old + _t([[0.5, 0.1, -0.5], [-0.5, 0.5, -50.0]])
    mask = _t([[1, 1, 1], [1, 1, 0]])
    adv = _t([1.0, -1.0])
    loss, grad, stats = _loss_and_grad(logprobs, old, adv, mask, "grpo", 0.2, 0.25)

    e = math.exp
    expected_loss = (-(1.25 + e(0.1) + e(-0.5)) / 3 + (0.8 + e(0.5)) / 2) / 2
    expected_grad = _t([[0.0, -e(0.1) / 6, -e(-0.5) / 6], [0.0, e(0.5) / 4, 0.0]])
    assert _close(loss, expected_loss), f"loss {loss.item()} != {expected_loss}"
    assert _close(grad, expected_grad), f"grad {grad} != {expected_grad}"
    assert _close(stats.clip_frac_low, 0.2), f"clip_frac_low {stats.clip_frac_low}"
    assert _close(stats.clip_frac_high, 0.2), f"clip_frac_high {stats.clip_frac_high}"
    assert _close(stats.clip_frac, 0.4), f"clip_frac {stats.clip_frac}"
    expected_mean = (2 * e(0.5) + e(0.1) + 2 * e(-0.5)) / 5
    assert _close(stats.ratio_mean, expected_mean), f"ratio_mean {stats.ratio_mean}"
    assert _close(stats.ratio_min, e(-0.5)), f"ratio_min {stats.ratio_min}"
    assert _close(stats.ratio_max, e(0.5)), f"ratio_max {stats.ratio_max}"


def test_sequence_log_ratio_is_length_normalised_mean() -> None:
    """sequence_log_ratio is the masked token mean of logp - old, ignoring padding."""
    # r0: (0.6 + 0.0 + 0.3)/3 = 0.3; r1: (-0.5 - 0.3)/2 = -0.4; r2: all padding -> 0
    old = torch.zeros(3, 3, dtype=F64)
    logprobs = _t([[0.6, 0.0, 0.3], [-0.5, -0.3, 1e9], [5.0, 5.0, 5.0]])
    mask = _t([[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    log_s = sequence_log_ratio(logprobs, old, mask)
    assert _close(log_s, _t([0.3, -0.4, 0.0])), f"log s = {log_s}"


# --- policy_loss: invariants -----------------------------------------------------------------


def test_on_policy_gspo_equals_grpo_value_and_grad() -> None:
    """At ratio 1 GSPO and GRPO both give -mean(A) and the same gradient -A_i/(N L_i)."""
    # lengths [5, 3, 1, 4], A = [0.5, -1, 2, -0.25]: loss = -(1.25)/4 = -0.3125
    logprobs, _, _, mask = _random_batch(seed=0, n=4, t=5, noise=0.0, lengths=[5, 3, 1, 4])
    old = logprobs.detach().clone()
    adv = _t([0.5, -1.0, 2.0, -0.25])
    gspo_loss, gspo_grad, _ = _loss_and_grad(logprobs, old, adv, mask, "gspo", 3e-4, 4e-4)
    grpo_loss, grpo_grad, _ = _loss_and_grad(logprobs, old, adv, mask, "grpo", 0.2, 0.27)
    lengths = _t([5.0, 3.0, 1.0, 4.0])
    expected_grad = (-adv / (4 * lengths)).unsqueeze(1) * mask
    assert _close(gspo_loss, -0.3125), f"GSPO loss {gspo_loss.item()} != -0.3125"
    assert _close(grpo_loss, -0.3125), f"GRPO loss {grpo_loss.item()} != -0.3125"
    assert _close(gspo_grad, expected_grad), f"GSPO grad {gspo_grad} != {expected_grad}"
    assert _close(grpo_grad, gspo_grad), f"GRPO grad {grpo_grad} != GSPO grad {gspo_grad}"


@pytest.mark.parametrize("mode", MODES)
def test_padding_columns_change_nothing(mode: Mode) -> None:
    """Appending masked columns holding garbage (±100, inf, NaN) leaves loss, grad, stats alone."""
    logprobs, old, adv, mask = _random_batch(seed=1, n=5, t=6, noise=0.05)
    base_loss, base_grad, base_stats = _loss_and_grad(logprobs, old, adv, mask, mode, 0.03, 0.04)

    pad_logp = _t([[100.0, -100.0, math.inf]] * 5)
    pad_old = _t([[-100.0, 100.0, math.nan]] * 5)
    padded_logp = torch.cat([logprobs.detach(), pad_logp], dim=1)
    padded_old = torch.cat([old, pad_old], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(5, 3, dtype=F64)], dim=1)
    loss, grad, stats = _loss_and_grad(padded_logp, padded_old, adv, padded_mask, mode, 0.03, 0.04)

    assert 0 < base_stats.clip_frac < 1, f"case should mix clipped and unclipped: {base_stats}"
    assert _close(loss, base_loss), f"{mode}: loss {loss.item()} != {base_loss.item()}"
    assert _close(grad[:, :6], base_grad), f"{mode}: grad on real columns changed"
    assert torch.equal(grad[:, 6:], torch.zeros(5, 3, dtype=F64)), f"{mode}: padding got grad"
    assert astuple(stats) == pytest.approx(astuple(base_stats), abs=ATOL), f"{mode}: {stats}"


@pytest.mark.parametrize(
    ("seed", "clip_low", "clip_high", "noise"),
    [(2, 3e-4, 4e-4, 3e-3), (4, 3e-4, 4e-4, 3e-3), (5, 0.2, 0.27, 1.0), (6, 0.2, 0.27, 1.0)],
)
def test_gspo_token_matches_gspo_off_policy(
    seed: int, clip_low: float, clip_high: float, noise: float
) -> None:
    """GSPO-token's loss, gradient and stats equal GSPO's on random off-policy batches."""
    lengths = [7, 1, 3, 5, 0, 6, 2, 4]  # varied, including an all-padding response
    logprobs, old, adv, mask = _random_batch(seed, n=8, t=7, noise=noise, lengths=lengths)
    seq_loss, seq_grad, seq_stats = _loss_and_grad(
        logprobs, old, adv, mask, "gspo", clip_low, clip_high
    )
    tok_loss, tok_grad, tok_stats = _loss_and_grad(
        logprobs, old, adv, mask, "gspo_token", clip_low, clip_high
    )
    assert 0 < seq_stats.clip_frac < 1, f"case should mix clipped and unclipped: {seq_stats}"
    assert _close(tok_loss, seq_loss), f"loss {tok_loss.item()} != GSPO {seq_loss.item()}"
    assert _close(tok_grad, seq_grad), f"grad differs by {(tok_grad - seq_grad).abs().max()}"
    assert tok_stats == seq_stats, f"stats {tok_stats} != GSPO {seq_stats}"


@pytest.mark.parametrize(("diff", "max_log_ratio"), [(500.0, 10.0), (0.6, 0.5), (-0.6, 0.5)])
def test_gspo_token_matches_gspo_beyond_clamp(diff: float, max_log_ratio: float) -> None:
    """Where |log s_i| exceeds max_log_ratio, GSPO's clamp zeroes the grad and GSPO-token's too."""
    # r0 has log s = diff outside ±max_log_ratio; its sign of A makes the unclipped term the
    # min (A<0 when s is large, A>0 when s is small), so only the clamp stops its gradient.
    # r1 is an ordinary response (log s = 0.0075, s inside the clip range) that keeps its grad.
    old = torch.zeros(2, 4, dtype=F64)
    logprobs = _t([[diff] * 4, [0.01, 0.0, 0.02, 0.0]])
    mask = _t([[1, 1, 1, 0], [1, 1, 1, 1]])
    adv = _t([-1.0 if diff > 0 else 1.0, 0.7])
    seq_loss, seq_grad, _ = _loss_and_grad(
        logprobs, old, adv, mask, "gspo", 0.2, 0.27, max_log_ratio
    )
    tok_loss, tok_grad, _ = _loss_and_grad(
        logprobs, old, adv, mask, "gspo_token", 0.2, 0.27, max_log_ratio
    )
    assert torch.equal(seq_grad[0], torch.zeros(4, dtype=F64)), f"GSPO grad r0 {seq_grad[0]}"
    assert bool((seq_grad[1] != 0).all()), f"in-range response lost its grad: {seq_grad[1]}"
    assert _close(tok_loss, seq_loss), f"loss {tok_loss.item()} != GSPO {seq_loss.item()}"
    assert _close(tok_grad, seq_grad), f"grad {tok_grad} != GSPO {seq_grad}"


@pytest.mark.parametrize("mode", MODES)
def test_huge_log_ratio_stays_finite(mode: Mode) -> None:
    """A log-ratio of ±500 on some tokens gives a finite loss, gradient and stats (float32)."""
    old = torch.zeros(4, 3)
    logprobs = torch.tensor(
        [[500.0, 500.0, 0.0], [-500.0, 0.0, 0.0], [500.0, -500.0, 500.0], [0.1, 0.0, 0.0]],
        requires_grad=True,
    )
    mask = torch.tensor([[1.0, 1, 0], [1, 1, 1], [1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([-1.0, 1.0, -0.5, 0.5])
    loss, stats = policy_loss(logprobs, old, adv, mask, mode=mode, clip_low=3e-4, clip_high=4e-4)
    (grad,) = torch.autograd.grad(loss, logprobs)
    assert bool(torch.isfinite(loss)), f"{mode}: loss {loss.item()} not finite"
    assert bool(torch.isfinite(grad).all()), f"{mode}: grad {grad} not finite"
    values = [stats.clip_frac, stats.ratio_mean, stats.ratio_min, stats.ratio_max]
    assert all(math.isfinite(v) for v in values), f"{mode}: stats {stats} not finite"


def test_gspo_weights_responses_equally_regardless_of_length() -> None:
    """Equal per-token log-ratio gives equal s_i; GSPO's per-token grad is -A s/(N L_i)."""
    # delta = 0.01 on every real token; lengths 2 and 4; A = [1, 1]; clip range [0.8, 1.27]
    #   s_0 = s_1 = e^0.01 (in range), loss = -(e^0.01 + e^0.01)/2 = -e^0.01
    #   grad per token: r0 = -e^0.01/(2*2), r1 = -e^0.01/(2*4); per-response sum = -e^0.01/2 each
    old = torch.zeros(2, 4, dtype=F64)
    logprobs = _t([[0.01, 0.01, 0.0, 0.0], [0.01, 0.01, 0.01, 0.01]])
    mask = _t([[1, 1, 0, 0], [1, 1, 1, 1]])
    adv = _t([1.0, 1.0])
    loss, grad, stats = _loss_and_grad(logprobs, old, adv, mask, "gspo", 0.2, 0.27)
    s = math.exp(0.01)
    expected_grad = _t([[-s / 4, -s / 4, 0.0, 0.0], [-s / 8, -s / 8, -s / 8, -s / 8]])
    assert _close(loss, -s), f"loss {loss.item()} != {-s}"
    assert _close(stats.ratio_min, stats.ratio_max), f"s_i differ: {stats}"
    assert _close(grad, expected_grad), f"grad {grad} != {expected_grad}"
    assert _close(grad.sum(dim=1), _t([-s / 2, -s / 2])), f"per-response weights {grad.sum(1)}"


def test_gspo_is_not_the_length_weighted_trl_variant() -> None:
    """GSPO averages per response; the TRL #3823 broadcast-and-token-mean variant differs."""
    # r0: L=1, logp-old = 0.1  -> s_0 = e^0.1,  A=+1
    # r1: L=3, logp-old = -0.1 -> s_1 = e^-0.1, A=-1
    # both in [0.8, 1.27] so nothing clips; per response -s A = [-e^0.1, +e^-0.1]
    #   correct: mean over responses = (e^-0.1 - e^0.1)/2 = -0.10017
    #   buggy:   broadcast over tokens, mean over all 4 tokens = (-e^0.1 + 3 e^-0.1)/4 = 0.40223
    old = torch.zeros(2, 3, dtype=F64)
    logprobs = _t([[0.1, 0.0, 0.0], [-0.1, -0.1, -0.1]], grad=True)
    mask = _t([[1, 0, 0], [1, 1, 1]])
    adv = _t([1.0, -1.0])
    loss, _ = policy_loss(logprobs, old, adv, mask, mode="gspo", clip_low=0.2, clip_high=0.27)

    with torch.no_grad():  # the buggy variant, inline
        s = torch.exp(((logprobs - old) * mask).sum(1) / mask.sum(1))  # [N]
        per_resp = -torch.minimum(s * adv, s.clamp(0.8, 1.27) * adv)  # [N]
        buggy = (per_resp.unsqueeze(1) * mask).sum() / mask.sum()  # [] length-weighted
    correct = (math.exp(-0.1) - math.exp(0.1)) / 2
    assert _close(buggy, (-math.exp(0.1) + 3 * math.exp(-0.1)) / 4), f"bug model {buggy}"
    assert _close(loss.detach(), correct), f"loss {loss.item()} != {correct}"
    assert abs(loss.item() - buggy.item()) > 0.1, f"loss {loss.item()} matches the buggy variant"


@pytest.mark.parametrize("mode", MODES)
def test_old_logprobs_get_no_gradient(mode: Mode) -> None:
    """old_logprobs are constants: even if they require grad, none flows to them."""
    logprobs, old, adv, mask = _random_batch(seed=6, n=3, t=4, noise=0.1)
    old_leaf = old.clone().requires_grad_()
    loss, _ = policy_loss(logprobs, old_leaf, adv, mask, mode=mode, clip_low=0.2, clip_high=0.27)
    grad, old_grad = torch.autograd.grad(loss, [logprobs, old_leaf], allow_unused=True)
    assert old_grad is None, f"{mode}: gradient reached old_logprobs"
    assert grad is not None and bool((grad != 0).any()), f"{mode}: no gradient reached logprobs"


@pytest.mark.parametrize("mode", MODES)
def test_all_padding_response_gives_no_nan(mode: Mode) -> None:
    """A response with an all-zero mask contributes 0 and leaves loss, grad and stats finite."""
    # r0: logp - old = 0.1 on 2 tokens, A = 1, in range -> loss -e^0.1 / 2 (N=2); r1 empty
    old = torch.zeros(2, 2, dtype=F64)
    logprobs = _t([[0.1, 0.1], [3.0, -3.0]])
    mask = _t([[1, 1], [0, 0]])
    adv = _t([1.0, -1.0])
    loss, grad, stats = _loss_and_grad(logprobs, old, adv, mask, mode, 0.2, 0.27)
    assert _close(loss, -math.exp(0.1) / 2), f"{mode}: loss {loss.item()}"
    assert torch.equal(grad[1], torch.zeros(2, dtype=F64)), f"{mode}: empty row got grad"
    assert _close(stats.ratio_mean, math.exp(0.1)), f"{mode}: ratio_mean {stats.ratio_mean}"
    assert stats.clip_frac == 0.0, f"{mode}: clip_frac {stats.clip_frac}"


def test_policy_loss_all_padding_batch_stats_are_finite() -> None:
    """A batch with no completion tokens at all gives loss 0 and neutral ratio stats."""
    zeros = torch.zeros(2, 3, dtype=F64)
    for mode in MODES:
        loss, stats = policy_loss(
            zeros, zeros, _t([1.0, -1.0]), zeros, mode=mode, clip_low=0.2, clip_high=0.2
        )
        assert loss.item() == 0.0, f"{mode}: loss {loss.item()}"
        assert (stats.ratio_min, stats.ratio_max) == (1.0, 1.0), f"{mode}: {stats}"


def test_bf16_inputs_are_upcast() -> None:
    """Half-precision log-probs are computed in float32, so GSPO's tiny clip range survives."""
    logprobs = torch.zeros(1, 2, dtype=torch.bfloat16, requires_grad=True)
    loss, _ = policy_loss(
        logprobs,
        torch.zeros(1, 2, dtype=torch.bfloat16),
        torch.ones(1),
        torch.ones(1, 2),
        mode="gspo",
        clip_low=3e-4,
        clip_high=4e-4,
    )
    assert loss.dtype == torch.float32, f"loss dtype {loss.dtype}"


def test_policy_loss_rejects_bad_inputs() -> None:
    """Mismatched shapes, bad advantages, an unknown mode or bad clip values raise ValueError."""
    x = torch.zeros(2, 3)
    ok = {"mode": "gspo", "clip_low": 0.2, "clip_high": 0.2}
    with pytest.raises(ValueError, match="same shape"):
        policy_loss(x, torch.zeros(2, 4), torch.zeros(2), x, **ok)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same shape"):
        policy_loss(x, x, torch.zeros(2), torch.zeros(3, 3), **ok)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(x, x, torch.zeros(3), x, **ok)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown loss mode"):
        policy_loss(x, x, torch.zeros(2), x, mode="ppo", clip_low=0.2, clip_high=0.2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clip_low"):
        policy_loss(x, x, torch.zeros(2), x, mode="grpo", clip_low=-0.1, clip_high=0.2)


def test_masked_mean_empty_row_is_zero() -> None:
    """masked_mean is sum(v m)/max(sum m, 1): a fully masked row gives 0, not NaN."""
    # r0: (1 + 3)/2 = 2; r1: no tokens -> 0/1 = 0
    values = _t([[1.0, 5.0, 3.0], [7.0, 8.0, 9.0]])
    mask = _t([[1, 0, 1], [0, 0, 0]])
    assert _close(masked_mean(values, mask, dim=1), _t([2.0, 0.0])), "masked_mean wrong"


# --- group_advantages ------------------------------------------------------------------------


def test_group_advantages_hand_computed_unbiased_std() -> None:
    """Group scale divides by each group's unbiased std plus eps."""
    # g0 = [1, 2, 3]: mean 2, unbiased var ((1 + 0 + 1)/2) = 1 -> A = [-1, 0, 1]/(1 + eps)
    #   (the population std would be sqrt(2/3) and give [-1.2247, 0, 1.2247])
    # g1 = [0, 0, 1]: mean 1/3, var ((1/9 + 1/9 + 4/9)/2) = 1/3
    #   -> A = [-1/3, -1/3, 2/3] / (sqrt(1/3) + eps)
    adv, zero_frac = group_advantages(_t([1.0, 2.0, 3.0, 0.0, 0.0, 1.0]), 3)
    d0, d1 = 1 + 1e-6, math.sqrt(1 / 3) + 1e-6
    expected = _t([-1 / d0, 0.0, 1 / d0, -1 / 3 / d1, -1 / 3 / d1, 2 / 3 / d1])
    assert _close(adv, expected), f"advantages {adv} != {expected}"
    assert zero_frac == 0.0, f"zero_std_frac {zero_frac} != 0"


def test_group_advantages_batch_scale() -> None:
    """Batch scale divides every group's centred rewards by the whole batch's unbiased std."""
    # rewards [1,2,3,0,0,1]: batch mean 7/6; squared deviations (1+25+121+49+49+1)/36 = 246/36
    # unbiased var = (246/36)/5 = 41/30 -> d = sqrt(41/30) + eps
    adv, _ = group_advantages(_t([1.0, 2.0, 3.0, 0.0, 0.0, 1.0]), 3, scale="batch")
    d = math.sqrt(41 / 30) + 1e-6
    expected = _t([-1 / d, 0.0, 1 / d, -1 / 3 / d, -1 / 3 / d, 2 / 3 / d])
    assert _close(adv, expected), f"advantages {adv} != {expected}"


def test_group_advantages_no_scale() -> None:
    """Scale 'none' only subtracts the group mean (no division, no eps)."""
    # g0 = [1,2,3] - 2 ; g1 = [0,0,1] - 1/3
    adv, _ = group_advantages(_t([1.0, 2.0, 3.0, 0.0, 0.0, 1.0]), 3, scale="none")
    expected = _t([-1.0, 0.0, 1.0, -1 / 3, -1 / 3, 2 / 3])
    assert _close(adv, expected), f"advantages {adv} != {expected}"


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_constant_group_is_exactly_zero(scale: str) -> None:
    """A group of equal rewards gets advantage exactly 0 and counts in zero_std_frac (0.5 here)."""
    # In float64, [0.1]*3 - mean([0.1]*3) leaves a residue of about 1.4e-17 (the mean rounds
    # to 0.10000000000000002); the constant group must still get exactly 0, not residue / std.
    adv, zero_frac = group_advantages(
        _t([0.1, 0.1, 0.1, 1.0, 2.0, 3.0]),
        3,
        scale=scale,  # type: ignore[arg-type]
    )
    assert torch.equal(adv[:3], torch.zeros(3, dtype=F64)), f"{scale}: constant group {adv[:3]}"
    assert bool((adv[3:] != 0).any()), f"{scale}: varied group got all-zero {adv[3:]}"
    assert zero_frac == 0.5, f"{scale}: zero_std_frac {zero_frac} != 0.5"


@pytest.mark.parametrize(
    ("rewards", "group_size", "scale", "match"),
    [
        (torch.zeros(6), 1, "group", "at least 2"),
        (torch.zeros(5), 3, "group", "multiple"),
        (torch.zeros(6), 4, "group", "multiple"),
        (torch.zeros(2, 3), 3, "group", "1-D"),
        (torch.zeros(0), 2, "group", "1-D"),
        (torch.zeros(6), 3, "std", "unknown advantage scale"),
    ],
)
def test_group_advantages_rejects_bad_input(
    rewards: Tensor, group_size: int, scale: str, match: str
) -> None:
    """Bad group sizes, shapes or scales raise ValueError with a clear message."""
    with pytest.raises(ValueError, match=match):
        group_advantages(rewards, group_size, scale=scale)  # type: ignore[arg-type]


# --- kl_k3 -----------------------------------------------------------------------------------


def test_kl_k3_zero_when_equal() -> None:
    """k3 is exactly 0 when the policy equals the reference."""
    logprobs, _, _, mask = _random_batch(seed=7, n=4, t=5, noise=0.0)
    kl = kl_k3(logprobs, logprobs.detach().clone(), mask)
    assert kl.item() == 0.0, f"kl {kl.item()} != 0"


def test_kl_k3_hand_computed() -> None:
    """k3 value and gradient match a hand-worked case; padding is ignored."""
    # d = ref - logp on real tokens, k = e^d - d - 1, dk/dlogp = 1 - e^d
    #   r0 (L=2): d = [0.5, -0.5] -> mean k = (e^0.5 - 1.5 + e^-0.5 - 0.5)/2
    #   r1 (L=1): d = [1.0]       -> k = e - 2
    # kl = (r0 + r1)/2 ; grad = (1 - e^d)/(N L): r0 -> (1 - e^±0.5)/4, r1 -> (1 - e)/2
    logprobs = _t([[0.0, -1.0, 50.0], [-2.0, 9.0, -9.0]], grad=True)
    ref = _t([[0.5, -1.5, -50.0], [-1.0, -9.0, 9.0]])
    mask = _t([[1, 1, 0], [1, 0, 0]])
    kl = kl_k3(logprobs, ref, mask)
    (grad,) = torch.autograd.grad(kl, logprobs)
    e = math.exp
    expected = ((e(0.5) + e(-0.5) - 2) / 2 + (e(1.0) - 2)) / 2
    expected_grad = _t([[(1 - e(0.5)) / 4, (1 - e(-0.5)) / 4, 0.0], [(1 - e(1.0)) / 2, 0.0, 0.0]])
    assert _close(kl.detach(), expected), f"kl {kl.item()} != {expected}"
    assert _close(grad, expected_grad), f"grad {grad} != {expected_grad}"


@pytest.mark.parametrize("seed", range(5))
def test_kl_k3_non_negative(seed: int) -> None:
    """k3 is non-negative for arbitrary policy and reference log-probs."""
    logprobs, ref, _, mask = _random_batch(seed=seed, n=6, t=8, noise=2.0)
    kl = kl_k3(logprobs, ref, mask)
    assert kl.item() >= 0.0, f"kl {kl.item()} < 0"
    assert kl.item() > 0.0, f"kl {kl.item()} should be positive when policy != reference"
