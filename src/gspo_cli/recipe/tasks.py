"""Each task's defaults: the record fields holding question and answer, the instruction
appended to each prompt, and the reward, filled in when a recipe leaves them unset (the
`data` fields' default factories read them; the resolved recipe.yaml spells them out)."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

Task = Literal["addition", "sums", "gsm8k", "math", "countdown", "custom"]


class TaskDefaults(NamedTuple):
    """What a task fills in when the recipe leaves it unset."""

    prompt_field: str | None  # the record field holding the question
    answer_field: str | None  # the record field holding the reference answer
    instruction: str  # appended to each prompt
    reward: str  # the task's checker


# The defaults of `data.prompt_field`, `data.answer_field`, `data.instruction` and `reward`,
# by `data.task` (the fields' default factories read them); the resolved recipe.yaml spells
# them out.
TASK_DEFAULTS: dict[str, TaskDefaults] = {
    "addition": TaskDefaults(None, None, "", "exact"),
    "sums": TaskDefaults(None, None, "Answer with just the number.", "gsm8k_flexible"),
    "gsm8k": TaskDefaults(
        "question",
        "answer",
        "Solve the problem step by step. Put the final answer, a number, after ####.",
        "gsm8k",
    ),
    "math": TaskDefaults("problem", "solution", "Put the final answer in \\boxed{}.", "math_boxed"),
    "countdown": TaskDefaults(
        "nums",
        "target",
        "Use +, -, * and / and each number exactly once. Write the equation inside "
        "<answer></answer>, for example <answer>(1 + 2) * 3</answer>.",
        "countdown",
    ),
    "custom": TaskDefaults(None, None, "", "exact"),
}
GENERATED_TASKS = (
    "addition",
    "sums",
    "countdown",
)  # made in code; countdown may also read a source


def task_prompt_field(data: dict[str, Any]) -> str | None:
    """`data.prompt_field`'s default: the task's (TASK_DEFAULTS)."""
    return TASK_DEFAULTS[data["task"]].prompt_field


def task_answer_field(data: dict[str, Any]) -> str | None:
    """`data.answer_field`'s default: the task's (TASK_DEFAULTS)."""
    return TASK_DEFAULTS[data["task"]].answer_field


def task_instruction(data: dict[str, Any]) -> str:
    """`data.instruction`'s default: the task's (TASK_DEFAULTS)."""
    return TASK_DEFAULTS[data["task"]].instruction
