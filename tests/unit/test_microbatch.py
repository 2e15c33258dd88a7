"""Token-budget micro-batch planning, and gradient accumulation equal to no splitting."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
import torch

from gspo_cli.advantages import group_advantages
from gspo_cli.losses import Mode
from gspo_cli.models.loading import load_policy
from gspo_cli.recipe import load_recipe
from gspo_cli.rollout.sampling import generate
from gspo_cli.rollout.stages import RolloutBatch
from gspo_cli.scoring import microbatch
from gspo_cli.scoring.completions import batched_logprobs, completion_logprobs
from gspo_cli.update import accumulate_gradients

# Four rows, P = 4 prompt columns (left-padded), T = 3 completion columns (right-padded).
# real prompt lengths 4, 1, 2, 3; completion lengths 3, 1, 2, 1
ATTENTION = torch.tensor(
    [
        [1, 1, 1, 1, 1, 1, 1],
        [0, 0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 1, 0],
        [0, 1, 1, 1, 1, 0, 0],
    ]
)
COMPLETION = ATTENTION[:, 4:].float()


def test_plan_sorts_longest_first_and_respects_the_budget() -> None:
    """Totals 7, 2, 4, 4: with budget 8 the plan is [0] (7), [2, 3] (2 × (3+2)=10 > 8 → split)."""
    plans = microbatch.plan(ATTENTION, COMPLETION, torch.arange(4), budget=8)
    rows = [mb.rows.tolist() for mb in plans]
    # Sorted by total length: row 0 (7), rows 2 and 3 (4 each, stable), row 1 (2).
    # [0] alone: 1 × 7 = 7; adding row 2 gives 2 × (4 + 3) = 14 > 8.
    # [2]: 1 × (2 + 2) = 4; adding row 3: 2 × (3 + 2) = 10 > 8. [3]: 4; adding row 1: 2 × 4 = 8.
    assert rows == [[0], [2], [3, 1]]
    for mb in plans:
        width = (4 - mb.start) + mb.completion_len
        assert len(mb.rows) == 1 or len(mb.rows) * width <= 8


def test_plan_without_budget_is_one_batch_trimmed_to_its_rows() -> None:
    """Budget 0 keeps every row together; columns shrink to the longest prompt and completion."""
    (only,) = microbatch.plan(ATTENTION, COMPLETION, torch.tensor([1, 3]), budget=0)
    assert sorted(only.rows.tolist()) == [1, 3]
    assert (only.start, only.completion_len) == (1, 1)  # longest prompt 3, longest completion 1
    taken = microbatch.take(ATTENTION, only, prompt_len=4)
    # Longest first (row 3, then row 1); columns 1..4 of each: prompt 3 real + completion 1.
    assert only.rows.tolist() == [3, 1]
    assert taken.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]


def test_plan_covers_every_row_once() -> None:
    """Whatever the budget, each planned row appears in exactly one micro-batch."""
    rows = torch.tensor([3, 0, 2])
    for budget in (0, 1, 5, 9, 100):
        plans = microbatch.plan(ATTENTION, COMPLETION, rows, budget)
        got = sorted(int(r) for mb in plans for r in mb.rows)
        assert got == [0, 2, 3], budget
        positions = sorted(int(p) for mb in plans for p in mb.positions)
        assert positions == [0, 1, 2], budget
        for mb in plans:
            assert torch.equal(rows[mb.positions], mb.rows)


@pytest.fixture(scope="module")
def rollout(tiny_model_dir: Path) -> tuple[object, RolloutBatch]:
    """A real batch of 8 sampled completions (2 prompts × 4) of varied lengths, in float64."""
    model, tokenizer = load_policy(str(tiny_model_dir), "float32", torch.device("cpu"), print)
    model = model.double()
    torch.manual_seed(0)
    gen = generate(model, tokenizer, ["12+34=", "5+6="] * 4, max_new_tokens=6)
    old = batched_logprobs(model, gen, temperature=1.0, max_tokens=0).double()
    old = old + 0.01 * torch.randn_like(old)  # off-policy, so clipping is exercised
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.5])
    adv, _ = group_advantages(rewards, 4)
    return model, RolloutBatch(gen, rewards, adv.double(), old, old + 0.02)


@pytest.mark.parametrize("mode", get_args(Mode))
def test_split_gradient_equals_unsplit(rollout: tuple[object, RolloutBatch], mode: str) -> None:
    """Micro-batches of ~1 row give the same loss, stats and gradient as one pass (float64)."""
    model, batch = rollout
    rows = torch.tensor([0, 2, 3, 5, 6, 7])

    def run(budget: int) -> tuple[float, object, list[torch.Tensor]]:
        recipe = load_recipe(
            None,
            [
                f"algo.mode={mode}",
                "algo.kl_beta=0.1",
                f"train.microbatch_tokens={budget}",
                "train.logprob_chunk_tokens=3",
            ],
        )
        model.zero_grad()  # type: ignore[attr-defined]
        loss, _, stats = accumulate_gradients(model, batch, rows, recipe)
        grads = [p.grad.clone() for p in model.parameters()]  # type: ignore[attr-defined]
        return loss.item(), stats, grads

    loss_a, stats_a, grads_a = run(0)
    loss_b, stats_b, grads_b = run(1)
    assert loss_a == pytest.approx(loss_b, rel=1e-12, abs=1e-12)
    assert stats_a == stats_b
    # One pass packs the rows that share a prompt onto one copy of it; one-row micro-batches
    # cannot. The prompt's gradient is then summed before, not after, Qwen3's RMSNorm, whose
    # backward runs in float32 even for a float64 model: equal to float32 rounding (a wrong
    # micro-batch weight would be off by tens of percent).
    for a, b in zip(grads_a, grads_b, strict=True):
        scale = b.abs().max().item()
        assert (a - b).abs().max().item() <= 1e-6 * scale, ((a - b).abs().max(), scale)
    assert any(g.abs().sum() > 0 for g in grads_a), "the test needs a non-zero gradient"


def test_chunked_head_equals_full_logits(
    rollout: tuple[object, RolloutBatch], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunked log-prob path and the full-logits fallback agree on a real model."""
    from gspo_cli.scoring import completions as scoring

    model, batch = rollout
    gen = batch.gen
    t = gen.completion_mask.shape[1]
    chunked = completion_logprobs(model, gen.input_ids, gen.attention_mask, t, 0.8, 5)
    monkeypatch.setattr(scoring, "plain_linear_head", lambda _: None)
    full = completion_logprobs(model, gen.input_ids, gen.attention_mask, t, 0.8, 5)
    real = gen.completion_mask.bool()  # padding is 0 on the packed path, arbitrary on the other
    torch.testing.assert_close(chunked[real], full.double()[real], rtol=0, atol=1e-10)
