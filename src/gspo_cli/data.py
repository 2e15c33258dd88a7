"""Tasks: where prompts and reference answers come from, and how prompts are rendered.

An `Example` is a prompt text and the reference answer its reward is checked against.
The built-in `addition` task is generated in code (no download): two-digit sums
`a+b=` with a fixed held-out split of 256 pairs, the same for every run and seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

from gspo_cli.errors import DataError

Split = Literal["train", "test"]

ADDITION_TEST_SIZE = 256
# The held-out split is fixed by this seed, not the run's, so evaluations compare across runs.
_ADDITION_SPLIT_SEED = 20250721


@dataclass(frozen=True)
class Example:
    """One task item: the prompt as text (before any chat template) and its reference answer."""

    prompt: str
    reference: str


def addition_examples(split: Split) -> list[Example]:
    """Two-digit addition, `a+b=` -> `a+b` for a, b in 10..99; 256 held out for `test`.

    >>> addition_examples("test")[0].prompt.endswith("=")
    True
    >>> len(addition_examples("train")) + len(addition_examples("test"))
    8100
    """
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    random.Random(_ADDITION_SPLIT_SEED).shuffle(pairs)
    chosen = pairs[:ADDITION_TEST_SIZE] if split == "test" else pairs[ADDITION_TEST_SIZE:]
    return [Example(prompt=f"{a}+{b}=", reference=str(a + b)) for a, b in chosen]


def load_examples(task: str, split: Split) -> list[Example]:
    """The examples of one split of a task named in the recipe."""
    if task == "addition":
        return addition_examples(split)
    raise DataError(
        f"unknown task {task!r}: this version knows only 'addition'; set data.task: addition"
    )


def render_prompt(tokenizer: Any, text: str) -> str:
    """The prompt exactly as the model sees it: the chat template when the tokenizer has one
    (a single user turn plus the generation prompt), the plain text otherwise."""
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        return str(rendered)
    return text
