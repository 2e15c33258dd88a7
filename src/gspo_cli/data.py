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
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gspo_cli.errors import DataError
from gspo_cli.recipe import DataSection
from gspo_cli.rewards.math_answers import canonical_number, last_boxed, parse_number

Split = Literal["train", "test"]
SPLITS: tuple[Split, Split] = ("train", "test")
Row = dict[str, Any]

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")

ADDITION_TEST_SIZE = 256
# Held-out splits are fixed by these seeds, not the run's, so evaluations compare across runs.
_ADDITION_SPLIT_SEED = 20250721
SUMS_LARGEST = 20
SUMS_TEST_SIZE = 128
_SUMS_SPLIT_SEED = 20250724
COUNTDOWN_TEST_SIZE = 512
_COUNTDOWN_SEED = 20250722
HOLDOUT_PERCENT = 10  # of a single-file source, held out as its test split
_HOLDOUT_SEED = 20250723


@dataclass(frozen=True)
class Example:
    """One task item: the prompt as text (before any chat template) and its reference answer."""

    prompt: str
    reference: str


# --- generated tasks -------------------------------------------------------------------------


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


# --- reading sources -------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where a recipe's rows come from, resolved; `fingerprint` enters the cache key."""

    kind: Literal["generated", "hub", "local"]
    name: str  # as written in the recipe (generated: the task)
    files: dict[str, tuple[Path, ...]]  # local: the files of each split (a single file: both)
    fingerprint: Any


def _looks_local(source: str) -> bool:
    """A path rather than a hub id (`owner/name`): it exists, starts like a path, ends in a
    data file suffix, or has more than one `/`."""
    return (
        source.startswith((".", "/", "~"))
        or Path(source).expanduser().exists()
        or source.endswith(LOCAL_SUFFIXES)
        or source.count("/") > 1
    )


def _names_split(path: Path, split: str) -> bool:
    stem = path.name[: -len(path.suffix)]
    return stem == split or stem.startswith((f"{split}-", f"{split}_", f"{split}."))


def split_files(folder: Path, split: str, config: str | None) -> tuple[Path, ...]:
    """The data files of one split in a folder (in `folder/<config>` when that exists)."""
    root = folder
    if config is not None:
        root = folder / config
        if not root.is_dir():
            raise DataError(
                f"data.config {config!r}: {folder} has no folder {config!r}; remove data.config "
                "or name one of its folders"
            )
    candidates = [
        p
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and p.suffix in LOCAL_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    found = tuple(p for p in candidates if _names_split(p, split))
    if not found:
        present = ", ".join(str(p.relative_to(root)) for p in candidates[:8]) or "none"
        raise DataError(
            f"{root}: no {split!r} split: expected {split}.jsonl, {split}.json, "
            f"{split}.parquet or {split}-*.parquet (data files there: {present}); set "
            "data.train_split / data.test_split to the split names it has"
        )
    folders = sorted({str(p.parent.relative_to(root)) for p in found})
    if len(folders) > 1:
        raise DataError(
            f"{root}: split {split!r} is in several folders ({', '.join(folders)}); set "
            "data.config to the folder to read"
        )
    return found


def locate_source(data: DataSection) -> Source:
    """Resolve the recipe's source: generated, a hub id, or local files (which must exist)."""
    if data.source is None:
        return Source("generated", data.task, {}, {"generated": data.task})
    if not _looks_local(data.source):
        return Source("hub", data.source, {}, {"hub": data.source, "config": data.config})
    path = Path(data.source).expanduser().resolve()
    if not path.exists():
        raise DataError(
            f"data.source {data.source!r}: no such file or folder; give a JSONL, JSON or "
            "Parquet file, a folder with train/test files, or a hub id such as openai/gsm8k"
        )
    if path.is_file():
        if path.suffix not in LOCAL_SUFFIXES:
            raise DataError(
                f"data.source {data.source!r}: {path.suffix or 'no suffix'} is not a data "
                "file; give a .jsonl, .json or .parquet file"
            )
        files: dict[str, tuple[Path, ...]] = {"train": (path,), "test": (path,)}
    else:
        files = {
            "train": split_files(path, data.train_split, data.config),
            "test": split_files(path, data.test_split, data.config),
        }
    used = sorted({p for paths in files.values() for p in paths})
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in used]
    return Source("local", data.source, files, {"local": str(path), "files": stats})


def read_file(path: Path) -> list[Row]:
    """The records of a JSONL, JSON (a list of objects, or JSON lines) or Parquet file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows: list[Any] = pq.read_table(path).to_pylist()
        except Exception as exc:
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot read it as UTF-8 text ({exc})") from None
        rows = _parse_json_records(path, text)
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise DataError(
                f"{path}: record {number} is a {type(row).__name__}, not an object with fields"
            )
    return rows


def _parse_json_records(path: Path, text: str) -> list[Any]:
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # perhaps JSON lines in a .json file
        if isinstance(data, list):
            return data
        if data is not None:
            raise DataError(f"{path}: expected a list of objects, got a {type(data).__name__}")
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {number} is not valid JSON ({exc.msg})") from None
    return rows


def read_hub(source: str, config: str | None, split: str) -> list[Row]:
    """One split of a hub dataset; a DataError that says the hub is unreachable when it is."""
    import datasets

    datasets.utils.logging.disable_progress_bar()
    try:
        dataset = datasets.load_dataset(source, config, split=split)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, ConnectionError) or "offline" in first.lower():
            raise DataError(
                f"data.source {source!r}: the hub is unreachable ({first}), and there is no "
                "local file or folder by that name; a local path works: download the dataset "
                "elsewhere and set data.source to its JSONL/JSON/Parquet file or folder"
            ) from None
        raise DataError(
            f"data.source {source!r} (config {config}, split {split!r}): cannot load it: {first}"
        ) from None
    rows: list[Row] = dataset.to_list()
    return rows


def _holdout(rows: list[Row]) -> dict[Split, list[Row]]:
    """A single file's rows split into train and a fixed-seed 10% test split (at least one)."""
    order = list(range(len(rows)))
    random.Random(_HOLDOUT_SEED).shuffle(order)
    n_test = max(1, len(rows) * HOLDOUT_PERCENT // 100)
    test = set(order[:n_test])
    return {
        "train": [r for i, r in enumerate(rows) if i not in test],
        "test": [r for i, r in enumerate(rows) if i in test],
    }


def read_rows(data: DataSection, source: Source) -> dict[Split, list[Row]]:
    """The raw records of both splits of a hub or local source."""
    names = {"train": data.train_split, "test": data.test_split}
    if source.kind == "hub":
        return {s: read_hub(source.name, data.config, names[s]) for s in SPLITS}
    if source.files["train"] == source.files["test"]:
        return _holdout(_local_rows(data, source.files["train"][0]))
    return {s: [row for f in source.files[s] for row in _local_rows(data, f)] for s in SPLITS}


def _local_rows(data: DataSection, path: Path) -> list[Row]:
    """A local file's records; a null question or answer is refused naming file and record
    (as text it would become the reference "None")."""
    rows = read_file(path)
    fields = [(data.prompt_field, "prompt_field"), (data.answer_field, "answer_field")]
    for number, row in enumerate(rows, 1):
        for field, key in fields:
            if field is not None and field in row and row[field] is None:
                raise DataError(
                    f"{path}: record {number} has {field}: null (data.{key}); give it a value "
                    "or remove the record"
                )
    return rows


# --- task formats ----------------------------------------------------------------------------


def with_instruction(question: str, instruction: str) -> str:
    """The user's turn: the question, then the instruction after a blank line (if any).

    >>> with_instruction("2+2?", "Answer after ####."), with_instruction("12+34=", "")
    ('2+2?\\n\\nAnswer after ####.', '12+34=')
    """
    return f"{question.strip()}\n\n{instruction.strip()}" if instruction.strip() else question


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


# --- rendering -------------------------------------------------------------------------------


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
