"""Every decoder family people RL-train scores, samples and trains: a tiny model of each,
built from its transformers config with random weights around SmolLM2's BPE tokenizer.

Per family: the packed log-prob path equals the model's own padded forward within 1e-5
(float32), or `scoring.support` turns packing off and says why in one line; the sampling
pass's log-probs, where they stand in for π_old, equal the scorer's within 4e-5. Two
training steps through the real CLI: tests/integration/test_families_cli.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from gspo_cli.data import render_prompt
from gspo_cli.rollout.sampling import generate
from gspo_cli.scoring import completions as scoring

from families import FAMILIES, SMOLLM2_SHARED, bpe_tokenizer, build_family

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(
        not (SMOLLM2_SHARED / "tokenizer.json").is_file(), reason="no ../shared/models"
    ),
]

# The families whose packed forward is expected to be used; the others must say why not.
PACKED = {"llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3", "olmo2", "smollm3"}
QUESTIONS = [
    "What is 12 + 34? Answer with just the number.",
    "Hi!",
    "Name three colours of the rainbow, one per line, and nothing else at all.",
]
GROUP = 3


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    tok = bpe_tokenizer()
    tok.padding_side = "left"
    return tok


def _sample(model: Any, tokenizer: Any, temperature: float = 1.0) -> Any:
    """Three chat prompts of different lengths × 3 rows, 12 new tokens, seeded per row."""
    prompts = [render_prompt(tokenizer, q) for q in QUESTIONS for _ in range(GROUP)]
    return generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=12,
        temperature=temperature,
        seeds=range(len(prompts)),
    )


def _own(model: Any, gen: Any, temperature: float = 1.0) -> torch.Tensor:
    """The model's own padded forward and logits -> log-probs `[N, T]` (the reference)."""
    t = gen.completion_mask.shape[1]
    with torch.no_grad():
        return scoring._own_logits_logprobs(
            model, gen.input_ids, gen.attention_mask, t, temperature
        )


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_packed_log_probs_equal_the_padded_forward(family: str, tokenizer: Any) -> None:
    """Packed (forced, whatever its cost) equals the model's own forward within 1e-5, and so
    does what `completion_logprobs` picks; a family that cannot pack says why."""
    model = build_family(family, tokenizer).eval()
    can = scoring.support(model)
    gen = _sample(model, tokenizer)
    real = gen.completion_mask.bool()
    t = real.shape[1]
    want = _own(model, gen)
    assert real.sum() > 3 * GROUP * 4, "the rows should have real completion tokens"
    with torch.no_grad():
        got = scoring.completion_logprobs(model, gen.input_ids, gen.attention_mask, t)
    assert (got - want)[real].abs().max().item() < 1e-5
    assert can.packed == (family in PACKED), can
    if not can.packed:
        assert can.note.startswith("log-probs: ") and "\n" not in can.note, can.note
        return
    head = scoring.plain_linear_head(model)
    with torch.no_grad():
        packed = scoring._packed(model, head, gen.input_ids, gen.attention_mask, t, 1.0, 0, True)
    assert packed is not None
    assert (packed - want)[real].abs().max().item() < 1e-5
    assert (packed[~real] == 0).all()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sampler_log_probs_equal_the_scorer(family: str, tokenizer: Any) -> None:
    """Where π_old comes from the sampling pass (dense float32), it equals the scorer's
    log-probs within 4e-5 per token; mixture-of-experts models take the separate forward."""
    model = build_family(family, tokenizer).eval()
    gen = _sample(model, tokenizer, temperature=0.7)
    if scoring.is_moe(model.config):
        assert gen.logprobs is None and not scoring.support(model).sampler
        return
    assert gen.logprobs is not None
    scored = scoring.batched_logprobs(model, gen, temperature=0.7, max_tokens=0)  # [N, T]
    real = gen.completion_mask.bool()
    assert (gen.logprobs - scored)[real].abs().max().item() < 4e-5
    assert (gen.logprobs[~real] == 0).all()


def test_a_short_window_without_layer_types_falls_back_per_batch(tokenizer: Any) -> None:
    """Mistral with an 8-token window and no per-layer types: rows longer than the window
    are scored padded (its decoder builds the window from array indices), still exactly."""
    model = build_family("mistral", tokenizer, sliding_window=8).eval()
    gen = _sample(model, tokenizer)
    t = gen.completion_mask.shape[1]
    head = scoring.plain_linear_head(model)
    assert scoring.support(model).packed
    with torch.no_grad():
        assert (
            scoring._packed(model, head, gen.input_ids, gen.attention_mask, t, 1.0, 0, True) is None
        )
        got = scoring.completion_logprobs(model, gen.input_ids, gen.attention_mask, t)
    real = gen.completion_mask.bool()
    assert (got - _own(model, gen))[real].abs().max().item() < 1e-5


def test_the_probe_finds_a_head_that_is_not_the_logits(tokenizer: Any) -> None:
    """A head whose output the model rescales, not named in the config: the probe sees the
    gap and scores through the model's own logits instead."""
    model = build_family("llama", tokenizer).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(50.0)  # large logits, then undone in the forward below
    forward = model.forward

    def rescaled(*args: Any, **kwargs: Any) -> Any:
        out = forward(*args, **kwargs)
        out.logits = out.logits / 50.0
        return out

    model.forward = rescaled
    can = scoring.support(model)
    assert not can.head and not can.packed, can
    assert "differs from its logits" in can.note, can.note


def test_a_decoder_that_refuses_a_ready_mask_is_scored_padded(tokenizer: Any) -> None:
    """A decoder that raises on the packed path's 4D mask: the probe turns packing off, says
    why in one line, and scoring still equals the model's own forward."""
    model = build_family("llama", tokenizer).eval()
    decoder = model.base_model
    forward = decoder.forward

    def picky(*args: Any, **kwargs: Any) -> Any:
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 4:
            raise TypeError("expected a 2D attention mask")
        return forward(*args, **kwargs)

    decoder.forward = picky
    can = scoring.support(model)
    assert can.head and not can.packed, can
    assert can.note == "log-probs: padded forwards, not packed (the decoder refused: TypeError)"
    gen = _sample(model, tokenizer)
    t = gen.completion_mask.shape[1]
    with torch.no_grad():
        got = scoring.completion_logprobs(model, gen.input_ids, gen.attention_mask, t)
    real = gen.completion_mask.bool()
    assert (got - _own(model, gen))[real].abs().max().item() < 1e-5
