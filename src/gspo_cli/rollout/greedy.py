"""Greedy decoding of held-out examples, checked by a reward: the accuracy that training's
evaluations, `gspo eval`, the embedded model's warm start and the benchmarks all report, by
the same function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gspo_cli import rewards
from gspo_cli.data import Example, render_prompt
from gspo_cli.rewards import RewardFn
from gspo_cli.rollout.sampling import generate

Progress = Callable[[int, int], None]  # (done, total)


EVAL_BATCH_SIZE = 256  # prompts (rows) per generate call, the same in training and `gspo eval`


def greedy_completions(
    model: Any,
    tokenizer: Any,
    examples: list[Example],
    *,
    max_new_tokens: int,
    batch_size: int = EVAL_BATCH_SIZE,
    progress: Progress = lambda done, total: None,
) -> list[str]:
    """The greedy completion of each example's prompt, in order."""
    texts: list[str] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        prompts = [render_prompt(tokenizer, e.prompt) for e in chunk]
        gen = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, greedy=True)
        texts.extend(gen.texts)
        progress(len(texts), len(examples))
    return texts


def is_correct(checker: RewardFn, completion: str, reference: str) -> bool:
    """The checker gives the completion full reward (1.0); a broken checker stops the run."""
    name = getattr(checker, "__name__", "checker")
    return rewards.call(checker, name, completion, reference) >= 1


def greedy_accuracy(
    model: Any,
    tokenizer: Any,
    examples: list[Example],
    checker: RewardFn,
    *,
    max_new_tokens: int,
    batch_size: int = EVAL_BATCH_SIZE,
) -> float:
    """Fraction of examples whose greedy completion the checker scores 1.0 (greedy pass@1)."""
    correct = greedy_correct(
        model, tokenizer, examples, checker, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    return correct / max(len(examples), 1)


def greedy_correct(
    model: Any,
    tokenizer: Any,
    examples: list[Example],
    checker: RewardFn,
    *,
    max_new_tokens: int,
    batch_size: int = EVAL_BATCH_SIZE,
) -> int:
    """How many examples' greedy completions the checker scores 1.0 (a rank's share, under
    torchrun, before the counts are summed)."""
    texts = greedy_completions(
        model, tokenizer, examples, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    return sum(is_correct(checker, t, e.reference) for t, e in zip(texts, examples, strict=True))
