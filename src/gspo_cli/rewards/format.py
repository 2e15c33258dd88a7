"""Format rewards: 1.0 when the completion states its final answer in the task's form.

They ignore the reference and whether the answer is right; combine them with a small weight
next to a correctness reward (`reward: [{name: gsm8k}, {name: format_gsm8k, weight: 0.1}]`),
as TRL's `format_rewards.py` does for its think/answer tags.
"""

from __future__ import annotations

import re

from gspo_cli.rewards.math_answers import NUMBER, last_boxed

_GSM8K_END_RE = re.compile(r"####\s*(?:" + NUMBER + r")\s*\.?\s*$")
_ANSWER_END_RE = re.compile(r"<answer>(?:(?!<answer>).)*?</answer>\s*$", re.S)


def format_gsm8k(completion: str, reference: str) -> float:
    """1.0 when the completion ends with a `#### <number>` line.

    >>> format_gsm8k("9 * 2 = 18\\n#### 18", ""), format_gsm8k("#### 18\\nDone.", "")
    (1.0, 0.0)
    """
    return 1.0 if _GSM8K_END_RE.search(completion) else 0.0


def format_boxed(completion: str, reference: str) -> float:
    """1.0 when the completion has a balanced, non-empty `\\boxed{}`.

    >>> format_boxed(r"so $\\boxed{42}$", ""), format_boxed(r"\\boxed{42", "")
    (1.0, 0.0)
    """
    boxed = last_boxed(completion)
    return 1.0 if boxed is not None and boxed.strip() else 0.0


def format_answer_tag(completion: str, reference: str) -> float:
    """1.0 when the completion ends with one `<answer>...</answer>` block.

    >>> format_answer_tag("I try 3*5+7. <answer>3*5+7</answer>", "")
    1.0
    >>> format_answer_tag("<answer>3*5+7</answer> and more", ""), format_answer_tag("3*5+7", "")
    (0.0, 0.0)
    """
    return 1.0 if _ANSWER_END_RE.search(completion) else 0.0
