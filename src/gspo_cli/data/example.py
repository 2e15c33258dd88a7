"""An `Example`: a prompt text (the user's turn: the question plus the recipe's instruction,
before any chat template) and the reference answer its reward is checked against; the split
names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Split = Literal["train", "test"]


SPLITS: tuple[Split, Split] = ("train", "test")


Row = dict[str, Any]


@dataclass(frozen=True)
class Example:
    """One task item: the prompt as text (before any chat template) and its reference answer."""

    prompt: str
    reference: str


def with_instruction(question: str, instruction: str) -> str:
    """The user's turn: the question, then the instruction after a blank line (if any).

    >>> with_instruction("2+2?", "Answer after ####."), with_instruction("12+34=", "")
    ('2+2?\\n\\nAnswer after ####.', '12+34=')
    """
    return f"{question.strip()}\n\n{instruction.strip()}" if instruction.strip() else question
