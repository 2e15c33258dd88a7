"""Evaluation: greedy accuracy on a task's held-out split with the task's reward."""

from __future__ import annotations

from typing import Any

from gspo_cli.data import Example, render_prompt
from gspo_cli.policy import generate
from gspo_cli.rewards import RewardFn

EVAL_BATCH_SIZE = 256


def greedy_accuracy(
    model: Any,
    tokenizer: Any,
    examples: list[Example],
    reward_fn: RewardFn,
    *,
    max_new_tokens: int,
    batch_size: int = EVAL_BATCH_SIZE,
) -> float:
    """Fraction of examples whose greedy completion earns reward 1.0 (exact match)."""
    correct = greedy_correct(
        model, tokenizer, examples, reward_fn, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    return correct / max(len(examples), 1)


def greedy_correct(
    model: Any,
    tokenizer: Any,
    examples: list[Example],
    reward_fn: RewardFn,
    *,
    max_new_tokens: int,
    batch_size: int = EVAL_BATCH_SIZE,
) -> int:
    """How many examples' greedy completions earn reward 1.0 (exact match)."""
    correct = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        prompts = [render_prompt(tokenizer, e.prompt) for e in chunk]
        gen = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, greedy=True)
        correct += sum(
            reward_fn(text, e.reference) >= 1.0 for text, e in zip(gen.texts, chunk, strict=True)
        )
    return correct
