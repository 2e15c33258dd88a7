"""DAPO's rollout options (dynamic sampling, overlong shaping and filtering) and the
train-inference mismatch ledger with its TIS correction: hand-computed values, the real
sampling path on the tiny model, and rank-invariant seeds for extra sampling rounds."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest
import torch

from gspo_cli.advantages import group_advantages
from gspo_cli.base.constants import Mode
from gspo_cli.base.distributed import SINGLE, Cluster
from gspo_cli.base.errors import RecipeError
from gspo_cli.data import Example
from gspo_cli.losses import policy_loss
from gspo_cli.models.loading import load_policy
from gspo_cli.recipe import load_recipe
from gspo_cli.rollout import dapo, mismatch
from gspo_cli.rollout.rounds import Round, enough, select
from gspo_cli.rollout.sampling import Generation
from gspo_cli.rollout.stages import Samples, assemble, gather, sample
from gspo_cli.scoring.completions import LogProbModel

CPU = torch.device("cpu")

# --- overlong soft punishment and group choice ---------------------------------------------


def test_overlong_penalty_ramps_over_the_buffer() -> None:
    """L_max 10, buffer 4, factor 0.5: 0 up to 6 tokens, then -(|y| - 6) / 4 * 0.5."""
    lengths = torch.tensor([3, 6, 7, 9, 10])
    got = dapo.overlong_penalty(lengths, 10, 4, 0.5)
    assert got.tolist() == [0.0, 0.0, -0.125, -0.375, -0.5]
    assert dapo.overlong_penalty(lengths, 10, 0, 0.5).tolist() == [0.0] * 5, "buffer 0: off"


def test_informative_groups_are_those_whose_rewards_differ() -> None:
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.5])  # G = 2
    assert dapo.informative_groups(rewards, 2).tolist() == [False, True, False, False]


def test_choose_groups_takes_informative_first_then_fills_with_the_latest() -> None:
    """Informative (0,1), (1,0), (1,2) with 2 wanted: the first two, no filler. With 5
    wanted: all three, then the most recent uninformative ones (1,1), (0,2)."""
    flags = [torch.tensor([False, True, False]), torch.tensor([True, False, True])]
    assert dapo.choose_groups(flags, 2) == ([(0, 1), (1, 0)], 0)
    assert dapo.choose_groups(flags, 5) == ([(0, 1), (1, 0), (1, 2), (1, 1), (0, 2)], 2)


# --- rounds: when to stop sampling, and the batch chosen ----------------------------------


def _round(rewards: list[float], prompt: int, completion: int, first_index: int) -> Round:
    """A whole round of len(rewards) rows: prompt ids 1..P, completion ids 100+row (length
    `completion`, no EOS), old log-probs -row/10, sampler log-probs -row/10 - 0.01."""
    n = len(rewards)
    ids = torch.cat(
        [
            torch.arange(1, prompt + 1).expand(n, prompt),
            100 + torch.arange(n)[:, None].expand(n, completion),
        ],
        dim=1,
    )
    mask = torch.ones(n, completion)
    old = -torch.arange(n, dtype=torch.float32)[:, None].expand(n, completion) / 10
    gen = Generation(
        ids,
        torch.ones_like(ids),
        mask,
        torch.ones(n, dtype=torch.bool),
        [str(i) for i in range(n)],
        old - 0.01,
    )
    samples = Samples(gen, old.clone(), None, None, 1.0, 0.5)
    g = 2
    return Round(
        samples, torch.tensor(rewards), list(range(first_index, first_index + n // g)), 0.25
    )


def _recipe(*sets: str) -> Any:
    return load_recipe(None, ["rollout.prompts_per_step=2", "rollout.group_size=2", *sets])


def test_without_dynamic_sampling_one_round_is_the_batch() -> None:
    recipe = _recipe()
    rounds = [_round([1.0, 1.0, 0.0, 1.0], 3, 4, 0)]
    assert not enough([], recipe) and enough(rounds, recipe)
    samples, rewards, indices, score_s, figures = select(rounds, recipe, pad_id=0)
    assert samples is rounds[0].samples and indices == [0, 1] and figures == {}
    assert torch.equal(rewards, rounds[0].rewards) and score_s == 0.25


def test_dynamic_sampling_keeps_informative_groups_across_rounds() -> None:
    """Round 0 (prompt 3, completion 4): groups 0 (equal) and 1; round 1 (prompt 2,
    completion 6): groups 2 and 3 (equal). Two wanted: round 0's group 1 and round 1's group
    2, re-padded to prompt 3 (left) and completion 6 (right), rows in that order."""
    recipe = _recipe("rollout.dynamic_sampling=true", "rollout.max_extra_rounds=3")
    first = _round([1.0, 1.0, 0.0, 1.0], 3, 4, 0)
    assert not enough([first], recipe), "one informative group of two wanted"
    second = _round([0.0, 1.0, 0.5, 0.5], 2, 6, 2)
    assert enough([first, second], recipe)
    samples, rewards, indices, score_s, figures = select([first, second], recipe, pad_id=0)
    assert indices == [1, 2] and rewards.tolist() == [0.0, 1.0, 0.0, 1.0] and score_s == 0.5
    gen = samples.gen
    assert gen.input_ids.tolist() == [
        [1, 2, 3, 102, 102, 102, 102, 0, 0],
        [1, 2, 3, 103, 103, 103, 103, 0, 0],
        [0, 1, 2, 100, 100, 100, 100, 100, 100],
        [0, 1, 2, 101, 101, 101, 101, 101, 101],
    ]
    assert gen.attention_mask[0].tolist() == [1] * 7 + [0, 0]
    assert gen.attention_mask[2].tolist() == [0] + [1] * 8
    assert gen.completion_mask.sum(dim=1).tolist() == [4, 4, 6, 6]
    assert gen.texts == ["2", "3", "0", "1"]
    assert samples.old_logprobs[:, 0].tolist() == pytest.approx([-0.2, -0.3, 0.0, -0.1])
    assert samples.old_logprobs[0, 4:].tolist() == [0.0, 0.0], "completion padding"
    assert samples.sample_s == 2.0 and samples.old_logprob_s == 1.0, "rounds add up"
    assert figures == {
        "dynamic/groups_sampled": 4,
        "dynamic/groups_dropped": 2,
        "dynamic/extra_rounds": 1,
        "dynamic/cap_hit": 0,
        "dynamic/filled_groups": 0,
    }


def test_dynamic_sampling_at_its_cap_fills_up_and_says_so() -> None:
    """max_extra_rounds 1 and a single informative group in two rounds: sampling stops, the
    batch is that group plus the latest uninformative one, and cap_hit is 1."""
    recipe = _recipe("rollout.dynamic_sampling=true", "rollout.max_extra_rounds=1")
    rounds = [_round([1.0, 1.0, 0.0, 1.0], 3, 4, 0), _round([0.0, 0.0, 1.0, 1.0], 3, 4, 2)]
    assert enough(rounds, recipe)
    _, rewards, indices, _, figures = select(rounds, recipe, pad_id=0)
    assert indices == [1, 3] and rewards.tolist() == [0.0, 1.0, 1.0, 1.0]
    assert figures["dynamic/cap_hit"] == 1 and figures["dynamic/filled_groups"] == 1
    assert figures["dynamic/groups_dropped"] == 3


def test_overlong_buffer_must_be_shorter_than_the_completion_limit() -> None:
    with pytest.raises(RecipeError, match="overlong_buffer: 8 tokens is not shorter"):
        load_recipe(None, ["rollout.max_new_tokens=8", "rollout.overlong_buffer=8"])
    assert load_recipe(None, ["rollout.overlong_buffer=7"]).rollout.overlong_buffer == 7


# --- the mismatch ledger and TIS ---------------------------------------------------------


def test_ledger_by_hand() -> None:
    """Δ = trainer - sampler on real tokens: row 0 [0.2, -0.4], row 1 [0.1] (+ padding, whose
    huge gap is ignored). |Δ| mean 0.7/3, max 0.4; sequence ratios exp(-0.1), exp(0.1)."""
    sampler = torch.tensor([[-1.0, -2.0], [-0.5, -9.0]])
    trainer = torch.tensor([[-0.8, -2.4], [-0.4, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    got = mismatch.ledger(trainer, sampler, mask)
    assert got["mismatch/token_abs_mean"] == pytest.approx(0.7 / 3, abs=1e-6)
    assert got["mismatch/token_abs_max"] == pytest.approx(0.4, abs=1e-6)
    ratios = torch.exp(torch.tensor([-0.1, 0.1]))
    assert got["mismatch/seq_ratio_min"] == pytest.approx(float(ratios[0]), abs=1e-6)
    assert got["mismatch/seq_ratio_max"] == pytest.approx(float(ratios[1]), abs=1e-6)
    assert got["mismatch/seq_ratio_mean"] == pytest.approx(float(ratios.mean()), abs=1e-6)
    # weights min(exp Δ, 1.1): exp(0.2) = 1.221 and exp(0.1) = 1.105 are capped; padding 1
    weights = mismatch.tis_weights(trainer, sampler, mask, cap=1.1)
    expected = torch.tensor([[1.1, float(torch.exp(torch.tensor(-0.4)))], [1.1, 1.0]])
    torch.testing.assert_close(weights, expected, rtol=0, atol=1e-6)
    figures = mismatch.tis_figures(weights, mask, cap=1.1)
    assert figures["tis/weight_mean"] == pytest.approx((2.2 + 0.670320046) / 3, abs=1e-6)
    assert figures["tis/capped_frac"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("mode", get_args(Mode))
def test_token_weights_none_and_ones_are_identical(mode: str) -> None:
    """For every mode, all-one token weights give exactly the loss and gradient of none."""
    torch.manual_seed(0)
    old = -torch.rand(4, 5) - 0.1
    mask = torch.tensor([[1.0] * 5, [1.0] * 3 + [0.0] * 2, [1.0] + [0.0] * 4, [0.0] * 5])
    adv = torch.tensor([1.0, -0.5, 0.3, 2.0])
    results = []
    for weights in (None, torch.ones(4, 5)):
        logprobs = (
            old + 0.05 * torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
        ).requires_grad_()
        loss, stats = policy_loss(
            logprobs,
            old,
            adv,
            mask,
            mode=mode,
            clip_low=0.2,
            clip_high=0.27,
            token_weights=weights,  # type: ignore[arg-type]
        )
        loss.backward()  # type: ignore[no-untyped-call]
        assert logprobs.grad is not None
        results.append((loss.detach(), logprobs.grad, stats))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert results[0][2] == results[1][2]


def test_token_weights_scale_each_tokens_term() -> None:
    """GRPO, on-policy (ratio 1, nothing clipped): per-token term -A w_t. Row 0 (A=1, weights
    0.5, 2): -(0.5 + 2)/2 = -1.25; row 1 (A=-2, weight 1.5, one token): 3. Mean 0.875. GSPO
    on the same tensors: the response's term -A times its mean weight: same numbers."""
    lp = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([1.0, -2.0])
    weights = torch.tensor([[0.5, 2.0], [1.5, 7.0]])
    for mode in ("grpo", "gspo", "gspo_token"):
        loss, _ = policy_loss(
            lp, lp, adv, mask, mode=mode, clip_low=0.2, clip_high=0.2, token_weights=weights
        )  # type: ignore[arg-type]
        assert loss.item() == pytest.approx(0.875, abs=1e-6), mode
    with pytest.raises(ValueError, match="token_weights must have shape"):
        policy_loss(
            lp, lp, adv, mask, mode="grpo", clip_low=0.2, clip_high=0.2, token_weights=weights[:1]
        )


# --- the real path on the tiny model -----------------------------------------------------

EXAMPLES = [
    Example("12+34=", "46"),
    Example("5+55=", "60"),
    Example("99+9=", "108"),
    Example("7+8=", "15"),
]


def _policy(model_dir: Path, dtype: str) -> tuple[Any, Any]:
    model, tokenizer = load_policy(str(model_dir), dtype, CPU, lambda _: None)
    return LogProbModel(model.eval()), tokenizer


def _batch(policy: Any, tokenizer: Any, *sets: str) -> tuple[Any, Any]:
    recipe = load_recipe(None, ["rollout.group_size=4", "rollout.max_new_tokens=6", *sets])
    samples = gather(
        sample(policy, None, tokenizer, EXAMPLES, recipe, step=1), tokenizer.pad_token_id
    )
    rewards = torch.arange(16, dtype=torch.float32) % 3  # [16] varied within every group
    advantages, zero_std = group_advantages(rewards, 4)
    return assemble(samples, rewards, advantages, zero_std, 0.0, recipe, {})


def test_float32_sampler_is_the_trainer_so_the_gap_is_zero_and_tis_a_no_op(
    tiny_model_dir: Path,
) -> None:
    """The tiny model in float32: π_old is the sampler's own log-probs, the ledger is exactly
    0 (sequence ratios exactly 1), TIS weights exactly 1, and the loss and gradient with TIS
    equal those without, bit for bit."""
    policy, tokenizer = _policy(tiny_model_dir, "float32")
    plain, stats = _batch(policy, tokenizer)
    tis, tis_stats = _batch(policy, tokenizer, "algo.tis=true")
    assert plain.gen.logprobs is not None and torch.equal(plain.gen.logprobs, plain.old_logprobs)
    assert stats.extra == {
        "mismatch/token_abs_mean": 0.0,
        "mismatch/token_abs_max": 0.0,
        "mismatch/seq_ratio_mean": 1.0,
        "mismatch/seq_ratio_min": 1.0,
        "mismatch/seq_ratio_max": 1.0,
    }
    assert plain.token_weights is None and tis.token_weights is not None
    assert torch.equal(tis.token_weights, torch.ones_like(tis.token_weights))
    assert tis_stats.extra["tis/weight_mean"] == 1.0 and tis_stats.extra["tis/capped_frac"] == 0.0
    grads = []
    for batch in (plain, tis):
        logprobs = (batch.old_logprobs + 0.01).requires_grad_()
        loss, _ = policy_loss(
            logprobs,
            batch.old_logprobs,
            batch.advantages,
            batch.gen.completion_mask,
            mode="grpo",
            clip_low=0.2,
            clip_high=0.27,
            token_weights=batch.token_weights,
        )
        loss.backward()  # type: ignore[no-untyped-call]
        grads.append((loss.detach(), logprobs.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])  # type: ignore[arg-type]


def test_bfloat16_recomputes_pi_old_and_the_ledger_sees_the_gap(tiny_model_dir: Path) -> None:
    """In bf16 π_old is a separate forward: the ledger's gap is positive and small (bf16
    rounding, not a wrong token), and the TIS weights move off 1."""
    policy, tokenizer = _policy(tiny_model_dir, "bfloat16")
    batch, stats = _batch(policy, tokenizer, "algo.tis=true", "algo.tis_cap=1.001")
    gap = stats.extra["mismatch/token_abs_mean"]
    assert 0 < gap < 0.1 and stats.extra["mismatch/token_abs_max"] < 1.0, stats.extra
    assert (
        0.9 < stats.extra["mismatch/seq_ratio_min"] <= stats.extra["mismatch/seq_ratio_max"] < 1.1
    )
    assert not torch.equal(batch.token_weights, torch.ones_like(batch.token_weights))
    assert batch.token_weights.max().item() == pytest.approx(1.001), "capped at tis_cap"
    assert 0 < stats.extra["tis/capped_frac"] < 1


def test_overlong_filter_masks_truncated_rows_out_of_the_loss(tiny_model_dir: Path) -> None:
    """With overlong_filter, the loss mask is the completion mask with every truncated row
    zeroed, and the figures count them; the generation itself is untouched."""
    policy, tokenizer = _policy(tiny_model_dir, "float32")
    batch, stats = _batch(
        policy, tokenizer, "rollout.overlong_filter=true", "rollout.overlong_buffer=2"
    )
    cut = batch.gen.truncated
    assert batch.loss_mask is not None
    assert torch.equal(batch.loss_mask[~cut], batch.gen.completion_mask[~cut])
    assert batch.loss_mask[cut].sum().item() == 0
    assert stats.extra["overlong/filtered_frac"] == pytest.approx(cut.float().mean().item())
    lengths = batch.gen.completion_mask.sum(dim=1)
    assert stats.extra["overlong/punished_frac"] == pytest.approx(
        (lengths > 4).float().mean().item()
    )


def test_extra_rounds_sample_the_same_rows_on_any_split(tiny_model_dir: Path) -> None:
    """Round 1's rows 8-15 (prompts 2-3) sampled by rank 1 of 2 equal one process's round-1
    rows 8-15; round 1 differs from round 0 (fresh seeds, not a repeat)."""
    policy, tokenizer = _policy(tiny_model_dir, "float32")
    recipe = load_recipe(
        None, ["rollout.group_size=4", "rollout.max_new_tokens=6", "rollout.temperature=1.5"]
    )
    whole = sample(policy, None, tokenizer, EXAMPLES, recipe, 1, SINGLE, 1)
    part = sample(
        policy, None, tokenizer, EXAMPLES[2:], recipe, 1, Cluster(rank=1, world_size=2), 1
    )
    assert part.gen.texts == whole.gen.texts[8:]
    first = sample(policy, None, tokenizer, EXAMPLES, recipe, 1, SINGLE, 0)
    assert first.gen.texts != whole.gen.texts
