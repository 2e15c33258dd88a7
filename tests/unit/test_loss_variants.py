"""The GRPO family's variants in `policy_loss`: Dr. GRPO, DAPO, CISPO and GMPO, on hand-computed
numbers, plus the per-mode recipe defaults and the properties every mode shares."""

from __future__ import annotations

import math
from typing import get_args

import pytest
import torch
from torch import Tensor

from gspo_cli.losses import LossStats, Mode, policy_loss
from gspo_cli.recipe import DEFAULT_CLIP, load_recipe

F64 = torch.float64
VARIANTS: tuple[Mode, ...] = ("dr_grpo", "dapo", "cispo", "gmpo")

# Two responses: lengths 2 and 3 (T = 3), advantages +1 and -1, unless a test says otherwise.
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=F64)
ADV = torch.tensor([1.0, -1.0], dtype=F64)


def _run(
    logprobs: list[list[float]],
    old: list[list[float]],
    mode: Mode,
    clip: tuple[float, float],
    adv: Tensor = ADV,
    **kwargs: float,
) -> tuple[float, Tensor, LossStats]:
    """Loss, d loss / d logprobs and stats for the two-response batch."""
    leaf = torch.tensor(logprobs, dtype=F64, requires_grad=True)
    loss, stats = policy_loss(
        leaf,
        torch.tensor(old, dtype=F64),
        adv,
        MASK,
        mode=mode,
        clip_low=clip[0],
        clip_high=clip[1],
        **kwargs,  # type: ignore[arg-type]
    )
    loss.backward()  # type: ignore[no-untyped-call]
    assert leaf.grad is not None
    return loss.item(), leaf.grad, stats


def _on_policy() -> list[list[float]]:
    return [[-1.0, -2.0, 0.0], [-0.5, -1.0, -1.5]]


def test_dr_grpo_divides_token_sums_by_the_constant() -> None:
    """On-policy every token term is -A: sums -2 and +3, over C = 4 → (-0.5 + 0.75) / 2."""
    lp = _on_policy()
    loss, grad, _ = _run(lp, lp, "dr_grpo", (0.2, 0.2), max_tokens=4)
    assert loss == pytest.approx(0.125, abs=1e-12)
    # d/d logp of -w A / C / N = -A / 8 on every real token, 0 on padding
    expected = torch.tensor([[-0.125, -0.125, 0.0], [0.125, 0.125, 0.125]], dtype=F64)
    assert torch.allclose(grad, expected, rtol=0, atol=1e-12), grad
    grpo, _, _ = _run(lp, lp, "grpo", (0.2, 0.2))
    assert grpo == pytest.approx(0.0, abs=1e-12), "GRPO's per-response mean cancels here"


def test_dr_grpo_constant_defaults_to_the_width() -> None:
    """Without max_tokens C is T = 3: (-2/3 + 3/3) / 2."""
    lp = _on_policy()
    loss, _, _ = _run(lp, lp, "dr_grpo", (0.2, 0.2))
    assert loss == pytest.approx(1 / 6, abs=1e-12)


def test_dapo_is_a_token_mean_with_clip_higher() -> None:
    """Ratios 1.3, 1.25 (A = +1) and 0.7, 0.9, 1.0 (A = -1), ε 0.2/0.28: token terms
    -1.28 (clipped at 1.28), -1.25, +0.8 (clipped at 0.8), +0.9, +1.0; sum 0.17 over 5."""
    old = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    lp = [[math.log(1.3), math.log(1.25), 0.0], [math.log(0.7), math.log(0.9), 0.0]]
    loss, grad, stats = _run(lp, old, "dapo", (0.2, 0.28))
    assert loss == pytest.approx(0.034, abs=1e-12)
    # unclipped token: d/dlogp (-w A / 5) = -w A / 5; clipped tokens: 0
    expected = torch.tensor([[0.0, -1.25 / 5, 0.0], [0.0, 0.9 / 5, 1.0 / 5]], dtype=F64)
    assert torch.allclose(grad, expected, rtol=0, atol=1e-12), grad
    assert (stats.clip_frac_low, stats.clip_frac_high) == pytest.approx((0.2, 0.2), abs=1e-12)


def test_dapo_mean_length_makes_a_micro_batch_its_share() -> None:
    """Each response alone, with the pair's mean length 2.5 and weight 1/2, adds up to the
    pair's token mean (and its own token mean would not: -2/2 and 3/3 average to 0)."""
    lp = _on_policy()
    whole, _, _ = _run(lp, lp, "dapo", (0.2, 0.28))
    assert whole == pytest.approx(0.2, abs=1e-12)  # (-2 + 3) / 5
    parts = []
    for row in (0, 1):
        loss, _ = policy_loss(
            torch.tensor([lp[row]], dtype=F64),
            torch.tensor([lp[row]], dtype=F64),
            ADV[row : row + 1],
            MASK[row : row + 1],
            mode="dapo",
            clip_low=0.2,
            clip_high=0.28,
            mean_length=2.5,
        )
        parts.append(loss.item() / 2)
    assert sum(parts) == pytest.approx(whole, abs=1e-12)


def test_cispo_detaches_the_truncated_weight() -> None:
    """Weights 1.5, 1.0 (A = 2) and 0.5, 1.1, 1.0 (A = -1), clipped to [0.8, 1.2]: terms
    -w·A·logp = 2.4, 4.0, -0.4, -1.1, -1.5; sum 3.4 over 5 tokens. The gradient is -w·A/5:
    no gradient through the weight, and the truncated tokens keep theirs."""
    lp = _on_policy()
    w = [[1.5, 1.0, 1.0], [0.5, 1.1, 1.0]]
    old = [[lp[i][j] - math.log(w[i][j]) for j in range(3)] for i in range(2)]
    adv = torch.tensor([2.0, -1.0], dtype=F64)
    loss, grad, stats = _run(lp, old, "cispo", (0.2, 0.2), adv=adv)
    assert loss == pytest.approx(0.68, abs=1e-12)
    expected = torch.tensor([[-0.48, -0.4, 0.0], [0.16, 0.22, 0.2]], dtype=F64)
    assert torch.allclose(grad, expected, rtol=0, atol=1e-12), grad
    assert (stats.clip_frac_low, stats.clip_frac_high) == pytest.approx((0.2, 0.2), abs=1e-12)


def test_cispo_default_has_no_lower_bound() -> None:
    """ε_low = 1 (the default) never lifts a small weight: 0.1 stays 0.1, 6 is cut to 5."""
    lp = [[-1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]
    mask = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=F64)
    old = torch.tensor([[-1.0 - math.log(0.1), 0, 0], [-1.0 - math.log(6.0), 0, 0]], dtype=F64)
    leaf = torch.tensor(lp, dtype=F64, requires_grad=True)
    low, high = DEFAULT_CLIP["cispo"]
    loss, _ = policy_loss(
        leaf, old, ADV, mask, mode="cispo", clip_low=low, clip_high=high
    )  # terms: -0.1·1·(-1) = 0.1 and -5·(-1)·(-1) = -5, over 2 tokens
    assert loss.item() == pytest.approx((0.1 - 5.0) / 2, abs=1e-12)


def test_gmpo_is_a_geometric_mean_clipped_in_log_space() -> None:
    """ε 0.4: row 0 (A = +1) log-ratios 0.5, -0.1 → 0.4 (clipped), -0.1, mean 0.15; row 1
    (A = -1) -0.6, 0.2, 0 → -0.4 (clipped), 0.2, 0, mean -1/15. Loss = mean of
    -A·exp(mean): (-e^0.15 + e^(-1/15)) / 2."""
    old = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    lp = [[0.5, -0.1, 0.0], [-0.6, 0.2, 0.0]]
    loss, grad, stats = _run(lp, old, "gmpo", (0.4, 0.4))
    assert loss == pytest.approx((-math.exp(0.15) + math.exp(-1 / 15)) / 2, abs=1e-12)
    # clipped tokens get no gradient; the others get -A·exp(mean)/L_i/N
    g0, g1 = -math.exp(0.15) / 2 / 2, math.exp(-1 / 15) / 3 / 2
    expected = torch.tensor([[0.0, g0, 0.0], [0.0, g1, g1]], dtype=F64)
    assert torch.allclose(grad, expected, rtol=0, atol=1e-12), grad
    assert (stats.clip_frac_low, stats.clip_frac_high) == pytest.approx((0.2, 0.2), abs=1e-12)


def test_gmpo_on_policy_equals_the_sequence_mean_of_advantages() -> None:
    """Ratio 1 everywhere: every geometric mean is 1, so the loss is -mean(A)."""
    lp = _on_policy()
    adv = torch.tensor([0.7, -0.2], dtype=F64)
    loss, _, stats = _run(lp, lp, "gmpo", (0.4, 0.4), adv=adv)
    assert loss == pytest.approx(-0.25, abs=1e-12)
    assert stats.clip_frac == 0.0


@pytest.mark.parametrize("mode", VARIANTS)
def test_padding_values_change_nothing(mode: Mode) -> None:
    """inf and NaN in padding positions leave the loss and gradient finite and unchanged."""
    gen = torch.Generator().manual_seed(3)
    old = -torch.rand(2, 3, generator=gen, dtype=F64)
    lp = (old + 0.1 * torch.randn(2, 3, generator=gen, dtype=F64)).tolist()
    clip = DEFAULT_CLIP[mode]
    clean_loss, clean_grad, _ = _run(lp, old.tolist(), mode, clip)
    lp[0][2], dirty_old = float("nan"), old.clone()
    dirty_old[0, 2] = float("-inf")
    loss, grad, _ = _run(lp, dirty_old.tolist(), mode, clip)
    assert loss == pytest.approx(clean_loss, abs=1e-12)
    assert torch.allclose(grad, clean_grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", get_args(Mode))
def test_zero_advantages_give_zero_loss_and_gradient(mode: Mode) -> None:
    """A batch of all-equal-reward groups (A = 0) teaches nothing in every mode."""
    lp = _on_policy()
    old = [[v - 0.05 for v in row] for row in lp]
    loss, grad, _ = _run(lp, old, mode, DEFAULT_CLIP[mode], adv=torch.zeros(2, dtype=F64))
    assert loss == 0.0 and bool((grad == 0).all())


@pytest.mark.parametrize(
    ("mode", "clip", "scale"),
    [
        ("gspo", (3e-4, 4e-4), "group"),
        ("grpo", (0.2, 0.27), "group"),
        ("dr_grpo", (0.2, 0.2), "none"),
        ("dapo", (0.2, 0.28), "group"),
        ("cispo", (1.0, 4.0), "group"),
        ("gmpo", (0.4, 0.4), "group"),
    ],
)
def test_each_mode_takes_its_papers_defaults(
    mode: str, clip: tuple[float, float], scale: str
) -> None:
    algo = load_recipe(None, [f"algo.mode={mode}"]).algo
    assert (algo.clip_low, algo.clip_high, algo.advantage_scale) == (*clip, scale)


def test_explicit_advantage_scale_wins_over_the_modes() -> None:
    algo = load_recipe(None, ["algo.mode=dr_grpo", "algo.advantage_scale=group"]).algo
    assert algo.advantage_scale == "group"


@pytest.mark.parametrize("mode", VARIANTS)
def test_gspo_only_warnings_stay_quiet_for_the_variants(mode: str) -> None:
    """One on-policy minibatch and a 0.2-sized clip are the GRPO family's normal settings:
    neither the recipe's GSPO warnings nor the watchdog's on_policy warning fire."""
    from gspo_cli.recipe import warnings_for
    from gspo_cli.rundir.watchdog import Watchdog

    recipe = load_recipe(None, [f"algo.mode={mode}", "algo.minibatches=1"])
    assert warnings_for(recipe) == []
    flat = {"reward_std": 0.5, "zero_std_frac": 0.1, "truncated_frac": 0.0}
    rows = [{**flat, "step": i, "clip_frac_offpolicy_max": 0.0} for i in range(8)]
    dog, control = Watchdog(mode, 8), Watchdog("gspo", 8)
    assert all(dog.observe(r) == [] for r in rows)
    fired = [w.code for r in rows for w in control.observe(r)]
    assert fired == ["on_policy"], "the same rows warn for GSPO"
    assert warnings_for(load_recipe(None, ["algo.minibatches=1"])), "and so does its recipe"
