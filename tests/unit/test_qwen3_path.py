"""The real Qwen3 path: Qwen3's own tokenizer (byte-identical to Qwen3-0.6B's, from
../shared/models/qwen3-tokenizer) and a model of Qwen3-0.6B's shape (hidden 1024, vocabulary
151,936; one layer for speed, random weights).

GSM8K prompts are prepared exactly as the chat template renders them in non-thinking mode,
sampled completions stop at `<|im_end|>` (and the stop token is scored, not shown), and rows
that never stop are counted as truncated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from gspo_cli.commands.prepare import prepare
from gspo_cli.data import render_prompt
from gspo_cli.models.loading import load_tokenizer
from gspo_cli.recipe import DataSection
from gspo_cli.rollout.sampling import eos_ids, generate

from families import QWEN3_TOKENIZER, qwen3_shaped

IM_END, ENDOFTEXT = 151645, 151643  # eos and pad of Qwen3's tokenizer

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not QWEN3_TOKENIZER.is_dir(), reason="no ../shared/models"),
]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_tokenizer(str(QWEN3_TOKENIZER), lambda _: None)


def test_the_tokenizer_is_qwen3s(tokenizer: Any) -> None:
    """Ids and special tokens as published; left padding with `<|endoftext|>`."""
    assert tokenizer("Hello, world!", add_special_tokens=False)["input_ids"] == [9707, 11, 1879, 0]
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (IM_END, ENDOFTEXT)
    assert tokenizer.padding_side == "left"


def test_prompts_render_in_non_thinking_mode(tokenizer: Any) -> None:
    """The template's own non-thinking form: an empty think block, then the answer."""
    assert render_prompt(tokenizer, "What is 2+2?") == (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_gsm8k_prepares_exactly_as_the_template_renders(gsm8k_dir: Path, tokenizer: Any) -> None:
    """Every prepared GSM8K test prompt is `apply_chat_template(enable_thinking=False)` of its
    user turn, and its token count is the tokenizer's."""
    data = DataSection.model_validate({"task": "gsm8k", "source": str(gsm8k_dir)})
    result = prepare(data, tokenizer, model_name="qwen3")
    rows = [json.loads(line) for line in (result.directory / "test.jsonl").open()]
    assert len(rows) == 1319
    for row in rows[:50]:
        want = tokenizer.apply_chat_template(
            [{"role": "user", "content": row["text"]}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=False,
        )
        assert row["prompt"] == want
        assert row["prompt_tokens"] == len(tokenizer(want, add_special_tokens=False)["input_ids"])
    assert rows[0]["text"].endswith("Put the final answer, a number, after ####.")


def test_completions_stop_at_im_end_and_the_rest_are_truncated(tokenizer: Any) -> None:
    """A Qwen3-shaped model whose head gives `<|im_end|>` probability 1/2 at every position:
    rows stop at it (kept in the completion mask, dropped from the text), and rows that
    reach max_new_tokens without it are truncated."""
    model = qwen3_shaped(tie_word_embeddings=False)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0 ...
    vocab = model.config.vocab_size
    bias = torch.zeros(vocab)
    bias[IM_END] = torch.log(torch.tensor(vocab - 1.0))  # ... but <|im_end|> at odds 1:1
    model.lm_head.register_forward_hook(lambda _m, _i, out: out + bias)
    assert IM_END in eos_ids(model, tokenizer)
    prompts = [render_prompt(tokenizer, "What is 2+2?")] * 16
    gen = generate(model, tokenizer, prompts, max_new_tokens=2, seeds=range(16))
    ids, mask = gen.completion_ids, gen.completion_mask  # [16, T]
    stopped = (ids == IM_END) & mask.bool()
    assert ((stopped.sum(dim=1) == 1) == ~gen.truncated).all(), (ids, gen.truncated)
    assert 0 < int(gen.truncated.sum()) < 16, "need both stopped and truncated rows"
    for row in range(16):
        real = int(mask[row].sum())
        assert (mask[row, :real] == 1).all() and (mask[row, real:] == 0).all()
        if not gen.truncated[row]:
            assert ids[row, real - 1] == IM_END and "<|im_end|>" not in gen.texts[row]
