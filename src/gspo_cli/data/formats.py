"""Task formats: each turns a record into an `Example` (GSM8K: the number after `####`;
MATH: the last `\\boxed{}`; countdown: numbers and target as JSON), and the chat template
renders a prompt for the model."""

from __future__ import annotations

from typing import Any

from gspo_cli.base.errors import DataError
from gspo_cli.data.example import SPLITS, Example, Row, Split, with_instruction
from gspo_cli.data.generated import (
    addition_examples,
    countdown_examples,
    countdown_question,
    countdown_reference,
    sums_examples,
)
from gspo_cli.data.sources import Source, read_rows
from gspo_cli.recipe import DataSection
from gspo_cli.rewards.math_answers import canonical_number, last_boxed, parse_number


def gsm8k_reference(answer: str) -> str | None:
    """The reference number of a GSM8K answer (after its last `####`, or the answer itself when
    it is a bare number), canonical; None when there is none.

    >>> gsm8k_reference("16 - 3 - 4 = 9\\n#### 1,080"), gsm8k_reference("18"), \
gsm8k_reference("x")
    ('1080', '18', None)
    """
    text = answer.rsplit("####", 1)[-1]
    value = parse_number(text)
    return None if value is None else canonical_number(value)


def _int_list(value: Any) -> list[int] | None:
    if isinstance(value, str):
        value = value.replace("[", " ").replace("]", " ").replace(",", " ").split()
    if not isinstance(value, list | tuple) or not value:
        return None
    try:
        return [int(v) for v in value]
    except (TypeError, ValueError):
        return None


def _example(data: DataSection, row: Row, where: str) -> Example:
    """One record as an Example in the recipe's task format; a DataError naming the record."""
    question, answer = row[data.prompt_field or ""], row[data.answer_field or ""]
    if data.task == "countdown":
        numbers, target = _int_list(question), parse_number(str(answer))
        if numbers is None or target is None or target != int(target):
            raise DataError(
                f"{where}: countdown needs a list of integers in {data.prompt_field!r} and an "
                f"integer in {data.answer_field!r}, got {question!r} and {answer!r}"
            )
        text, reference = (
            countdown_question(numbers, int(target)),
            countdown_reference(numbers, int(target)),
        )
        return Example(with_instruction(text, data.instruction), reference)
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: field {data.prompt_field!r} is {question!r}, not a question")
    if answer is None:
        raise DataError(
            f"{where}: field {data.answer_field!r} is null, not a reference answer; give it a "
            "value or remove the record"
        )
    answer_text = str(answer)
    if data.task == "gsm8k":
        found = gsm8k_reference(answer_text)
        if found is None:
            raise DataError(
                f"{where}: field {data.answer_field!r} has no number after '####' "
                f"({answer_text[-60:]!r}); is this GSM8K? otherwise set data.task: custom"
            )
        reference = found
    elif data.task == "math":
        reference = last_boxed(answer_text) or answer_text.strip()
    else:
        reference = answer_text.strip()
    return Example(with_instruction(question, data.instruction), reference)


def examples_from_rows(
    data: DataSection, rows: list[Row], split: str, origin: str
) -> list[Example]:
    """The Examples of one split's records; missing fields are named with the ones present."""
    if not rows:
        raise DataError(
            f"{origin}: the {split} split is empty; point data.source at a dataset whose "
            f"{split} split has records"
        )
    for field, key in ((data.prompt_field, "prompt_field"), (data.answer_field, "answer_field")):
        if field not in rows[0]:
            raise DataError(
                f"{origin}: the {split} split has no field {field!r} (data.{key}); its fields "
                f"are {', '.join(map(repr, rows[0]))}; set data.{key} to one of them"
            )
    examples = []
    for number, row in enumerate(rows, 1):
        where = f"{origin}, {split} record {number}"
        if data.prompt_field not in row or data.answer_field not in row:
            raise DataError(f"{where}: lacks {data.prompt_field!r} or {data.answer_field!r}")
        examples.append(_example(data, row, where))
    return examples


def source_examples(data: DataSection, source: Source) -> dict[Split, list[Example]]:
    """Both splits of the recipe's task as Examples, from code or from the source."""
    if source.kind == "generated" and data.task == "addition":
        return {s: addition_examples(s) for s in SPLITS}
    if source.kind == "generated" and data.task == "sums":
        return {s: sums_examples(s, data.instruction) for s in SPLITS}
    if source.kind == "generated":  # countdown
        made = countdown_examples(data.generated_size)
        return {
            s: [
                Example(
                    with_instruction(countdown_question(n, t), data.instruction),
                    countdown_reference(n, t),
                )
                for n, t in made[s]
            ]
            for s in SPLITS
        }
    rows = read_rows(data, source)
    return {s: examples_from_rows(data, rows[s], s, data.source or "") for s in SPLITS}


def render_prompt(tokenizer: Any, text: str) -> str:
    """The prompt exactly as the model sees it: the chat template when the tokenizer has one
    (a single user turn plus the generation prompt), the plain text otherwise.

    Templates that read `enable_thinking` (Qwen3's) get False: the answer comes straight
    after the prompt, not after a reasoning block. Templates that do not read it ignore it."""
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=False,
        )
        return str(rendered)
    return text
