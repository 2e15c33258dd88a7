"""The fast paths of rollout and update: packed log-probs (each distinct prompt once, no
padding) equal the padded forward, and the hand-written decoding loop samples exactly what
transformers' `generate` samples with the same per-row generators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from gspo_cli.models.loading import load_policy
from gspo_cli.rollout import sampling as policy
from gspo_cli.rollout.sampling import RowSampler, decode
from gspo_cli.scoring import completions as scoring
from gspo_cli.scoring.completions import completion_logprobs
from gspo_cli.scoring.packing import pack_rows

CPU = torch.device("cpu")
PAD = 0

pytestmark = pytest.mark.usefixtures("one_thread")

# Rows 0 and 1 share the prompt [4, 5]; row 2 has the prompt [7]. Stop token 1 is real
# (a completion runs up to and including it); 0 is padding.
IDS = torch.tensor(
    [
        [4, 5, 8, 1, 0],
        [4, 5, 9, 9, 1],
        [0, 7, 6, 1, 0],
    ]
)
ATTENTION = torch.tensor(
    [
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
        [0, 1, 1, 1, 0],
    ]
)


def test_one_segment_holds_each_prompt_once_and_no_padding() -> None:
    """With linear layers dominant, one segment: [4 5 | 8 | 9 9] [7 | 6] is 7 tokens."""
    layout = pack_rows(IDS, ATTENTION, completion_len=3, token_cost=1e6)
    assert layout is not None
    assert layout.input_ids.tolist() == [[4, 5, 8, 9, 9, 7, 6]]
    assert layout.position_ids.tolist() == [[0, 1, 2, 2, 3, 0, 1]]
    # Scored tokens in row order: row 0 predicts 8 from "5" (index 1), 1 from its "8" (2);
    # row 1 predicts 9, 9, 1 from 1, 3, 4; row 2 predicts 6, 1 from "7" (5) and "6" (6).
    assert layout.source.tolist() == [1, 2, 1, 3, 4, 5, 6]
    assert layout.targets.tolist() == [8, 1, 9, 9, 1, 6, 1]
    assert layout.scored.tolist() == [[True, True, False], [True, True, True], [True, True, False]]
    visible = layout.visible[0, 0].int().tolist()
    assert visible == [
        [1, 0, 0, 0, 0, 0, 0],  # 4
        [1, 1, 0, 0, 0, 0, 0],  # 5
        [1, 1, 1, 0, 0, 0, 0],  # row 0's 8: the prompt and itself
        [1, 1, 0, 1, 0, 0, 0],  # row 1's first 9: not row 0's 8
        [1, 1, 0, 1, 1, 0, 0],  # row 1's second 9
        [0, 0, 0, 0, 0, 1, 0],  # 7: another prompt
        [0, 0, 0, 0, 0, 1, 1],  # row 2's 6
    ]


def test_attention_dominant_cost_splits_groups_into_segments() -> None:
    """With attention dominant, groups of 5 and 4 tokens go into two segments of 5 (50
    query-key pairs) rather than one of 9 (81); the unused slot sees only itself."""
    ids = torch.tensor([[4, 5, 8, 1, 0], [4, 5, 9, 9, 1], [7, 7, 6, 6, 1]])
    attention = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    layout = pack_rows(ids, attention, completion_len=3, token_cost=0.0)
    assert layout is not None
    assert layout.input_ids.tolist() == [[4, 5, 8, 9, 9], [7, 7, 6, 6, PAD]]
    assert layout.position_ids.tolist() == [[0, 1, 2, 2, 3], [0, 1, 2, 3, 0]]
    assert layout.source.tolist() == [1, 2, 1, 3, 4, 6, 7, 8]  # flat indices into [2 × 5]
    assert layout.visible[1, 0, 4].int().tolist() == [0, 0, 0, 0, 1]
    assert layout.visible[1, 0, 3].int().tolist() == [1, 1, 1, 1, 0]
    assert layout.cost == 50.0


def test_a_row_without_prompt_tokens_is_not_packed() -> None:
    """Nothing would predict such a row's first token: the padded path handles it."""
    attention = ATTENTION.clone()
    attention[2, :2] = 0
    assert pack_rows(IDS, attention, completion_len=3, token_cost=1.0) is None


@pytest.fixture(scope="module")
def model64(tiny_model_dir: Path) -> Any:
    model, _ = load_policy(str(tiny_model_dir), "float32", CPU, lambda _: None)
    return model.double().eval()


def _logprobs_and_grads(
    model: Any, packed: bool, monkeypatch: pytest.MonkeyPatch
) -> tuple[Tensor, list[Tensor]]:
    monkeypatch.setattr(scoring, "support", lambda _: scoring.Support(True, packed, True, ""))
    model.zero_grad()
    weights = torch.tensor(
        [[1.0, -2.0, 0.5], [0.3, 1.0, -1.0], [2.0, 0.7, 0.0]], dtype=torch.float64
    )
    logprobs = completion_logprobs(model, IDS, ATTENTION, 3, 0.8)  # [3, 3]
    (logprobs * weights * ATTENTION[:, 2:]).sum().backward()
    return logprobs.detach(), [p.grad.clone() for p in model.parameters()]


def test_packed_logprobs_and_gradients_equal_the_padded_path(
    model64: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """float64: log-probs to 1e-12; gradients to 1e-6 of their scale, because the shared
    prompt's gradient is summed before Qwen3's RMSNorm backward, which runs in float32."""
    packed, packed_grads = _logprobs_and_grads(model64, True, monkeypatch)
    padded, padded_grads = _logprobs_and_grads(model64, False, monkeypatch)
    real = ATTENTION[:, 2:].bool()
    assert (packed[real] - padded[real]).abs().max().item() < 1e-12, (packed, padded)
    assert (packed[~real] == 0).all(), packed
    for a, b in zip(packed_grads, padded_grads, strict=True):
        scale = b.abs().max().item()
        assert (a - b).abs().max().item() <= 1e-6 * scale, ((a - b).abs().max(), scale)
    assert any(g.abs().sum() > 0 for g in packed_grads)


def test_gumbel_noise_drawn_ahead_equals_one_draw_per_position() -> None:
    """`choose` on a shrinking subset of rows picks what the per-position processor picks."""
    seeds, v = [11, 22, 33], 7
    logits = torch.randn(4, 3, v, generator=torch.Generator().manual_seed(0))  # [t, N, V]
    reference = RowSampler(seeds, 0.9, 1.0, CPU)
    sampler = RowSampler(seeds, 0.9, 1.0, CPU)
    for t, rows in enumerate([[0, 1, 2], [0, 2], [2], [2]]):
        want = reference(torch.zeros(3, 1), logits[t]).argmax(dim=-1)[rows]  # [A]
        index = torch.tensor(rows)
        got = sampler.choose(t, logits[t][index], index)
        assert torch.equal(got, want), (t, got, want)


@pytest.mark.parametrize("greedy", [True, False])
def test_decode_samples_what_transformers_generate_samples(
    tiny_model_dir: Path, greedy: bool
) -> None:
    """Rows stop at different steps (stop tokens: every even id), prompts repeat and differ
    in length: the tokens equal `generate` with `RowSampler` as its logits processor."""
    from transformers import GenerationConfig, LogitsProcessorList

    model, tokenizer = load_policy(str(tiny_model_dir), "float32", CPU, lambda _: None)
    model.eval()
    prompts = ["12+34=", "5+6=", "12+34=", "99+1=", "5+6=", "7="] * 3
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    stops = list(range(2, len(tokenizer), 2))  # half the vocabulary
    seeds = list(range(100, 100 + len(prompts)))
    processors = LogitsProcessorList([] if greedy else [RowSampler(seeds, 1.3, 1.0, CPU)])
    config = GenerationConfig(
        max_new_tokens=10, do_sample=False, eos_token_id=stops, pad_token_id=PAD
    )
    want = model.generate(**enc, generation_config=config, logits_processor=processors)
    chooser = policy._argmax if greedy else RowSampler(seeds, 1.3, 1.0, CPU).choose
    got, _ = decode(
        model,
        enc["input_ids"],
        enc["attention_mask"],
        max_new_tokens=10,
        choose=chooser,
        stop_ids=stops,
        pad_id=PAD,
    )
    assert torch.equal(got, want), (got, want)
    lengths = (got[:, enc["input_ids"].shape[1] :] != PAD).sum(dim=1)
    assert greedy or len(set(lengths.tolist())) > 2, f"rows should stop at varied steps: {lengths}"


def test_sampling_pass_log_probs_stand_in_for_pi_old(tiny_model_dir: Path) -> None:
    """float32: the sampled tokens' log-probs from decoding equal a separate forward's to
    float32 rounding (1e-4 on a token, far inside GSPO's 3e-4 clip on a sequence mean);
    0 on padding. Greedy decoding and bf16 models give none (the forward stays)."""
    model, tokenizer = load_policy(str(tiny_model_dir), "float32", CPU, lambda _: None)
    prompts = ["12+34=", "5+6=", "99+1="] * 4
    gen = policy.generate(
        model, tokenizer, prompts, max_new_tokens=8, temperature=0.7, seeds=range(12)
    )
    assert gen.logprobs is not None
    forward = scoring.batched_logprobs(model, gen, temperature=0.7, max_tokens=0)  # [N, T]
    real = gen.completion_mask.bool()
    assert (gen.logprobs[real] - forward[real]).abs().max().item() < 1e-4
    assert (gen.logprobs[~real] == 0).all()
    assert (gen.logprobs[real] < 0).all() and forward[real].min() < -1, "need real log-probs"
    greedy = policy.generate(model, tokenizer, prompts, max_new_tokens=8, greedy=True)
    assert greedy.logprobs is None
    half = model.to(torch.bfloat16)
    assert policy.generate(half, tokenizer, prompts[:2], max_new_tokens=2).logprobs is None
