"""Tasks and sources: where prompts and references come from.

An `Example` is a prompt text (the user's turn: the question plus the recipe's instruction,
before any chat template) and the reference answer its reward is checked against. Sources:

- generated in code, no download: `addition` (two-digit sums `a+b=`, 256 pairs held out, the
  same for every run and seed), `sums` (chat-phrased `What is a + b?` for a, b in 1..20, 128
  held out; for pretrained chat models) and `countdown` without a source (numbers and a reachable
  target, from a fixed seed);
- a hub dataset id, read with `datasets.load_dataset(source, config, split=...)`;
- a local JSONL, JSON or Parquet file (10% of it, chosen with a fixed seed, is held out for
  the test split) or a folder holding `train`/`test` files (`train.jsonl`,
  `train-00000-of-00001.parquet`, ...; the split names come from the recipe).

Each task format turns a record into an Example (GSM8K: the number after `####`; MATH: the
last `\\boxed{}`; countdown: numbers and target as JSON). `prepare.py` renders and caches them.
No torch here; `datasets` is imported only for hub sources.

    example.py    Example, the split names
    generated.py  addition, sums, countdown
    sources.py    hub ids, local files and folders, the held-out split
    formats.py    records into Examples per task; the chat template
"""

from __future__ import annotations

from gspo_cli.data.example import SPLITS, Example, Row, Split, with_instruction
from gspo_cli.data.formats import (
    examples_from_rows,
    gsm8k_reference,
    render_prompt,
    source_examples,
)
from gspo_cli.data.generated import (
    ADDITION_TEST_SIZE,
    COUNTDOWN_TEST_SIZE,
    SUMS_LARGEST,
    SUMS_TEST_SIZE,
    addition_examples,
    countdown_examples,
    countdown_problem,
    countdown_question,
    countdown_reference,
    sums_examples,
)
from gspo_cli.data.sources import (
    HOLDOUT_PERCENT,
    LOCAL_SUFFIXES,
    Source,
    locate_source,
    read_file,
    read_hub,
    read_rows,
    split_files,
)

__all__ = [
    "ADDITION_TEST_SIZE",
    "COUNTDOWN_TEST_SIZE",
    "HOLDOUT_PERCENT",
    "LOCAL_SUFFIXES",
    "SPLITS",
    "SUMS_LARGEST",
    "SUMS_TEST_SIZE",
    "Example",
    "Row",
    "Source",
    "Split",
    "addition_examples",
    "countdown_examples",
    "countdown_problem",
    "countdown_question",
    "countdown_reference",
    "examples_from_rows",
    "gsm8k_reference",
    "locate_source",
    "read_file",
    "read_hub",
    "read_rows",
    "render_prompt",
    "source_examples",
    "split_files",
    "sums_examples",
    "with_instruction",
]
