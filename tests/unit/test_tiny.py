"""Unit tests for the embedded tiny default: character tokenizer, model from config, task data.

The warm start (`ensure_tiny_model`, `warm_start`) takes about half a minute and is covered
elsewhere; nothing here trains.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import torch

from gspo_cli.data import ADDITION_TEST_SIZE, addition_examples
from gspo_cli.models.tiny import EOS, PAD, build_model, build_tokenizer

# Vocabulary order: <pad>=0, <eos>=1, <unk>=2, '0'..'9'=3..12, 'a'..'z'=13..38, then
# '+'=39, '-'=40, '*'=41, '/'=42, '='=43, ...
PROMPT_IDS = [6, 10, 39, 7, 8, 43]  # "37+45="
ANSWER_IDS = [11, 5]  # "82"
PROMPT_RE = re.compile(r"^(\d\d)\+(\d\d)=$")


pytestmark = pytest.mark.usefixtures("one_thread")


# --- character tokenizer ---------------------------------------------------------------------


def test_prompt_encodes_to_hand_computed_ids_one_per_char() -> None:
    """'37+45=' is six tokens, one per character, with no special tokens added."""
    tokenizer = build_tokenizer()
    ids = tokenizer("37+45=")["input_ids"]
    assert ids == PROMPT_IDS, ids
    per_char = [tokenizer.convert_tokens_to_ids(c) for c in "37+45="]
    assert per_char == PROMPT_IDS, per_char


def test_prompt_and_answer_round_trip() -> None:
    """decode(encode(s)) == s for a prompt and an answer."""
    tokenizer = build_tokenizer()
    assert tokenizer.decode(PROMPT_IDS) == "37+45=", tokenizer.decode(PROMPT_IDS)
    assert tokenizer("82")["input_ids"] == ANSWER_IDS, tokenizer("82")["input_ids"]
    assert tokenizer.decode(ANSWER_IDS) == "82", tokenizer.decode(ANSWER_IDS)


def test_every_vocabulary_character_is_one_token() -> None:
    """Each of digits, letters and the punctuation set is its own single non-unk token."""
    tokenizer = build_tokenizer()
    text = "0123456789abcdefghijklmnopqrstuvwxyz+-*/=()#,.?: "
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text), (len(ids), len(text))
    assert len(set(ids)) == len(text), "two characters share a token"
    assert tokenizer.unk_token_id not in ids, ids
    assert tokenizer.decode(ids) == text, tokenizer.decode(ids)


def test_eos_is_skipped_when_decoding_specials_away() -> None:
    """An answer followed by EOS decodes to the bare answer with skip_special_tokens."""
    tokenizer = build_tokenizer()
    ids = [*ANSWER_IDS, tokenizer.eos_token_id, tokenizer.pad_token_id]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "82"


def test_pad_and_eos_are_distinct_special_tokens() -> None:
    """<pad> is id 0, <eos> is id 1, and they differ."""
    tokenizer = build_tokenizer()
    assert (tokenizer.pad_token, tokenizer.eos_token) == (PAD, EOS)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1)
    assert len(tokenizer) == 3 + 10 + 26 + 13, len(tokenizer)


def test_tokenizer_survives_save_and_auto_load(tmp_path: Path) -> None:
    """AutoTokenizer.from_pretrained of the saved tokenizer gives the same ids and specials."""
    from transformers import AutoTokenizer

    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in ["37+45=", "82", "what is 3*4? 12."]:
        want, got = tokenizer(text)["input_ids"], loaded(text)["input_ids"]
        assert got == want, f"{text!r}: {got} != {want}"
    assert (loaded.pad_token_id, loaded.eos_token_id) == (0, 1)
    assert loaded.decode(PROMPT_IDS) == "37+45=", loaded.decode(PROMPT_IDS)


# --- model from config -----------------------------------------------------------------------


def test_model_is_a_small_qwen3() -> None:
    """build_model gives a Qwen3ForCausalLM with between 0.5M and 1.2M parameters."""
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
    assert type(model).__name__ == "Qwen3ForCausalLM", type(model)
    n = sum(p.numel() for p in model.parameters())
    assert 500_000 <= n <= 1_200_000, n
    assert model.config.vocab_size == len(tokenizer), model.config.vocab_size


def test_model_is_seeded() -> None:
    """The same seed gives identical weights; another seed does not."""
    a, b, c = (build_model(52, 0, 1, seed=s) for s in (7, 7, 8))
    wa, wb, wc = (m.model.embed_tokens.weight for m in (a, b, c))
    assert torch.equal(wa, wb), "same seed, different weights"
    assert not torch.equal(wa, wc), "different seeds, same weights"


def test_model_survives_save_and_auto_load(tmp_path: Path) -> None:
    """AutoModelForCausalLM.from_pretrained of the saved model gives bit-identical logits."""
    from transformers import AutoModelForCausalLM

    model = build_model(52, 0, 1).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded).__name__ == "Qwen3ForCausalLM", type(loaded)
    ids = torch.tensor([PROMPT_IDS + ANSWER_IDS])  # [1, 8]
    with torch.no_grad():
        want, got = model(input_ids=ids).logits, loaded(input_ids=ids).logits
    assert got.shape == (1, 8, 52), got.shape
    assert torch.equal(got, want), f"max |diff| {(got - want).abs().max().item():.3e}"


# --- addition task data ----------------------------------------------------------------------


def test_addition_split_sizes() -> None:
    """256 test items and the other 8100 - 256 = 7844 for training."""
    assert ADDITION_TEST_SIZE == 256
    assert len(addition_examples("test")) == 256
    assert len(addition_examples("train")) == 8100 - 256


def test_addition_splits_are_disjoint_and_cover_all_pairs() -> None:
    """No prompt is in both splits, none repeats, and together they are all 90 x 90 pairs."""
    test = [e.prompt for e in addition_examples("test")]
    train = [e.prompt for e in addition_examples("train")]
    assert not set(test) & set(train), sorted(set(test) & set(train))[:5]
    assert len(set(test)) == len(test) and len(set(train)) == len(train), "duplicate prompts"
    everything = {f"{a}+{b}=" for a in range(10, 100) for b in range(10, 100)}
    assert set(test) | set(train) == everything


@pytest.mark.parametrize("split", ["train", "test"])
def test_addition_references_are_the_sums(split: str) -> None:
    """Each prompt is 'a+b=' with two-digit a, b and its reference is str(a + b)."""
    for example in addition_examples(split):  # type: ignore[arg-type]
        match = PROMPT_RE.match(example.prompt)
        assert match, example.prompt
        a, b = int(match[1]), int(match[2])
        assert example.reference == str(a + b), example


def test_addition_split_is_fixed_across_calls() -> None:
    """Two calls return the same examples in the same order."""
    assert addition_examples("test") == addition_examples("test")
    assert addition_examples("train") == addition_examples("train")


def test_addition_split_ignores_the_global_rng() -> None:
    """Reseeding Python's global random does not move the held-out split."""
    state = random.getstate()
    try:
        random.seed(1)
        first = addition_examples("test")
        random.seed(2)
        assert addition_examples("test") == first
    finally:
        random.setstate(state)


def test_moe_twin_is_cached_apart_and_accepted_as_a_model_name() -> None:
    """tiny-qwen3-moe has its own versioned cache directory and is a known model name."""
    from gspo_cli.models.loading import check_model_source
    from gspo_cli.models.tiny import TINY_MOE_NAME, tiny_model_dir

    assert tiny_model_dir(TINY_MOE_NAME).name == "tiny-qwen3-moe-v1"
    assert tiny_model_dir().name == "tiny-qwen3-v1"
    assert check_model_source(TINY_MOE_NAME) == TINY_MOE_NAME


def test_moe_model_from_config_has_top2_of_8_experts_in_every_layer() -> None:
    """Four MoE layers, 8 experts each, top-2 with renormalised weights."""
    from gspo_cli.models.tiny import build_moe_model

    tokenizer = build_tokenizer()
    model = build_moe_model(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
    gates = [layer.mlp.gate for layer in model.model.layers]
    assert [(g.num_experts, g.top_k, g.norm_topk_prob) for g in gates] == [(8, 2, True)] * 4
