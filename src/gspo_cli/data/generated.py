"""Tasks generated in code, no download: `addition` (two-digit sums `a+b=`, 256 pairs held
out, the same for every run and seed), `sums` (chat-phrased `What is a + b?` for a, b in
1..20, 128 held out; for pretrained chat models) and `countdown` without a source (numbers
and a reachable target, from a fixed seed)."""

from __future__ import annotations

import json
import random

from gspo_cli.data.example import Example, Split, with_instruction

ADDITION_TEST_SIZE = 256


# Held-out splits are fixed by these seeds, not the run's, so evaluations compare across runs.
_ADDITION_SPLIT_SEED = 20250721


SUMS_LARGEST = 20


SUMS_TEST_SIZE = 128


_SUMS_SPLIT_SEED = 20250724


COUNTDOWN_TEST_SIZE = 512


_COUNTDOWN_SEED = 20250722


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


def sums_examples(split: Split, instruction: str) -> list[Example]:
    """Chat-phrased sums, `What is a + b?` -> `a+b` for a, b in 1..20 (400 questions), 128
    held out for `test`; the recipe's instruction follows each question.

    >>> sums_examples("test", "Answer with just the number.")[0].prompt
    'What is 15 + 18?\\n\\nAnswer with just the number.'
    >>> len(sums_examples("train", "")), len(sums_examples("test", ""))
    (272, 128)
    """
    numbers = range(1, SUMS_LARGEST + 1)
    pairs = [(a, b) for a in numbers for b in numbers]
    random.Random(_SUMS_SPLIT_SEED).shuffle(pairs)
    chosen = pairs[:SUMS_TEST_SIZE] if split == "test" else pairs[SUMS_TEST_SIZE:]
    return [
        Example(with_instruction(f"What is {a} + {b}?", instruction), str(a + b)) for a, b in chosen
    ]


def countdown_problem(rng: random.Random) -> tuple[list[int], int]:
    """3 or 4 numbers in 1..99 and a target in 1..999 that they reach: the target is the value
    of a random expression using each number once, with every intermediate result a positive
    integer (so a solution without fractions always exists)."""
    while True:
        numbers = [rng.randint(1, 99) for _ in range(rng.choice((3, 4)))]
        pool = list(numbers)
        while len(pool) > 1:
            a, b = pool.pop(rng.randrange(len(pool))), pool.pop(rng.randrange(len(pool)))
            op = rng.choice("+-*/")
            if op == "-" and a <= b:
                a, b = b, a
            if op == "/" and (b == 0 or a % b):
                op = "+"
            pool.append({"+": a + b, "-": a - b, "*": a * b, "/": a // max(b, 1)}[op])
        if 1 <= pool[0] <= 999:
            return numbers, pool[0]


def countdown_examples(train_size: int) -> dict[Split, list[tuple[list[int], int]]]:
    """Countdown problems from a fixed seed: the first 512 distinct ones are the test split
    (the same whatever `train_size`), the next `train_size` distinct ones the train split.

    >>> splits = countdown_examples(10)
    >>> len(splits["test"]), len(splits["train"]), splits == countdown_examples(10)
    (512, 10, True)
    """
    rng = random.Random(_COUNTDOWN_SEED)
    seen: set[tuple[tuple[int, ...], int]] = set()
    splits: dict[Split, list[tuple[list[int], int]]] = {"test": [], "train": []}
    sizes: tuple[tuple[Split, int], ...] = (("test", COUNTDOWN_TEST_SIZE), ("train", train_size))
    for split, size in sizes:
        while len(splits[split]) < size:
            numbers, target = countdown_problem(rng)
            key = (tuple(sorted(numbers)), target)
            if key not in seen:
                seen.add(key)
                splits[split].append((numbers, target))
    return splits


def countdown_question(numbers: list[int], target: int) -> str:
    """The task statement of one countdown problem (the recipe's instruction follows it)."""
    listed = ", ".join(map(str, numbers))
    return f"Using the numbers {listed}, create an equation that equals {target}."


def countdown_reference(numbers: list[int], target: int) -> str:
    """The reference the `countdown` reward reads: `{"numbers": [...], "target": N}`."""
    return json.dumps({"numbers": numbers, "target": target})
