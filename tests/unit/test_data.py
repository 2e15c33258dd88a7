"""Tasks, sources and `prepare`: formats, chat templates, the length limit, the cache, errors."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from gspo_cli import data
from gspo_cli.base.errors import DataError
from gspo_cli.commands.prepare import (
    content_hash,
    load_split,
    load_task,
    prepare,
    tokenizer_fingerprint,
)
from gspo_cli.data import addition_examples, countdown_examples
from gspo_cli.models.tiny import build_tokenizer
from gspo_cli.recipe import TASK_DEFAULTS, DataSection
from gspo_cli.rewards import countdown

# What the conftest's Qwen-style template wraps around a single user turn.
QWEN_HEAD, QWEN_TAIL = "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"
GSM8K_INSTRUCTION = TASK_DEFAULTS["gsm8k"][2]


def section(**values: Any) -> DataSection:
    return DataSection.model_validate(values)


@pytest.fixture(scope="module")
def char_tokenizer() -> Any:
    """The tiny model's character tokenizer: one token per character, no chat template."""
    return build_tokenizer()


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty GSPO_CACHE for this test alone, so nothing prepared earlier is reused."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("GSPO_CACHE", str(cache))
    return cache


def gsm8k_user_turns(gsm8k_dir: Path, split: str) -> list[str]:
    """Each question with the default instruction, computed here independently of `prepare`."""
    rows = [json.loads(line) for line in (gsm8k_dir / f"{split}.jsonl").open()]
    return [f"{r['question'].strip()}\n\n{GSM8K_INSTRUCTION}" for r in rows]


# --- the tiny default's addition task --------------------------------------------------------


def test_addition_is_unchanged_by_preparing(char_tokenizer: Any) -> None:
    """Prepared addition has the same prompts, references and order as the generator."""
    _, splits = load_task(section(), char_tokenizer, "tiny-qwen3", lambda _: None)
    for split in ("train", "test"):
        assert splits[split] == addition_examples(split), split
    assert len(splits["test"]) == 256


# --- GSM8K from the local copy ---------------------------------------------------------------


def test_gsm8k_with_the_tiny_tokenizer_keeps_every_example(
    gsm8k_dir: Path, char_tokenizer: Any
) -> None:
    """No length limit: 7,473 train and 1,319 test prompts, references after `####`."""
    result = prepare(section(task="gsm8k", source=str(gsm8k_dir)), char_tokenizer, model_name="t")
    counts = result.counts()
    assert (counts["train"].rows, counts["train"].kept, counts["train"].dropped) == (7473, 7473, 0)
    assert (counts["test"].rows, counts["test"].kept, counts["test"].dropped) == (1319, 1319, 0)
    test = load_split(result, "test")
    assert test[0].reference == "18" and test[0].prompt.startswith("Janet")
    assert test[0].prompt.endswith("\n\n" + GSM8K_INSTRUCTION)
    manifest = result.manifest
    assert manifest["source"] == str(gsm8k_dir) and manifest["task"] == "gsm8k"
    assert manifest["recipe"]["data"]["source"] == str(gsm8k_dir)
    assert manifest["content_hash"] == content_hash(result.directory)
    assert not manifest["chat_template"]


def test_gsm8k_length_limit_drops_and_counts(gsm8k_dir: Path, char_tokenizer: Any) -> None:
    """With max_prompt_tokens 300, every prompt over 300 characters (= tokens) is dropped."""
    recipe_data = section(task="gsm8k", source=str(gsm8k_dir), max_prompt_tokens=300)
    counts = prepare(recipe_data, char_tokenizer, model_name="t").counts()
    for split, pinned in (("train", 3514), ("test", 652)):
        expected = sum(len(text) > 300 for text in gsm8k_user_turns(gsm8k_dir, split))
        assert counts[split].dropped == expected == pinned, (split, counts[split])
        assert counts[split].kept == counts[split].rows - pinned
        assert counts[split].prompt_tokens_max <= 300


def test_gsm8k_with_a_qwen_style_chat_template(gsm8k_dir: Path, qwen_style_model_dir: Path) -> None:
    """Prompts are rendered with the chat template; the limit counts the template's tokens."""
    from gspo_cli.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(qwen_style_model_dir), lambda _: None)
    result = prepare(section(task="gsm8k", source=str(gsm8k_dir)), tokenizer, model_name="q")
    counts = result.counts()
    assert (counts["train"].kept, counts["test"].kept) == (7473, 1319)
    first = json.loads((result.directory / "test.jsonl").open().readline())
    assert first["prompt"] == QWEN_HEAD + first["text"] + QWEN_TAIL, first["prompt"]
    assert result.manifest["chat_template"]

    limited = prepare(
        section(task="gsm8k", source=str(gsm8k_dir), max_prompt_tokens=400),
        tokenizer,
        model_name="q",
    ).counts()
    wrapper = len(QWEN_HEAD) + len(QWEN_TAIL)  # 51 characters, one token each
    for split, pinned in (("train", 2027), ("test", 390)):
        expected = sum(len(t) + wrapper > 400 for t in gsm8k_user_turns(gsm8k_dir, split))
        assert limited[split].dropped == expected == pinned, (split, limited[split])


# --- the cache -------------------------------------------------------------------------------


def test_prepare_again_is_a_no_op_and_force_rebuilds(
    fresh_cache: Path, tmp_path: Path, char_tokenizer: Any
) -> None:
    """Same recipe: reused; --force: rebuilt with the same content; a damaged copy: rebuilt."""
    source = tmp_path / "d.jsonl"
    source.write_text("".join(json.dumps({"q": f"{i}?", "a": str(i)}) + "\n" for i in range(20)))
    recipe_data = section(task="custom", source=str(source), prompt_field="q", answer_field="a")
    first = prepare(recipe_data, char_tokenizer, model_name="t")
    assert first.status == "built" and first.directory.parent == fresh_cache / "prepared"
    again = prepare(recipe_data, char_tokenizer, model_name="t")
    assert again.status == "reused" and again.directory == first.directory
    forced = prepare(recipe_data, char_tokenizer, model_name="t", force=True)
    assert forced.status == "rebuilt"
    assert forced.manifest["content_hash"] == first.manifest["content_hash"]
    (first.directory / "test.jsonl").write_text("")
    assert prepare(recipe_data, char_tokenizer, model_name="t").status == "rebuilt"
    leftovers = [p.name for p in (fresh_cache / "prepared").iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers


def test_changed_data_section_or_source_file_prepares_anew(
    fresh_cache: Path, tmp_path: Path, char_tokenizer: Any
) -> None:
    """The key covers the data section (not eval_size) and the source file's size and time."""
    source = tmp_path / "d.jsonl"
    source.write_text("".join(json.dumps({"q": f"{i}?", "a": str(i)}) + "\n" for i in range(20)))
    base = {"task": "custom", "source": str(source), "prompt_field": "q", "answer_field": "a"}
    first = prepare(section(**base), char_tokenizer, model_name="t").directory
    assert prepare(section(**base, eval_size=3), char_tokenizer, model_name="t").directory == first
    other = prepare(section(**base, instruction="Be brief."), char_tokenizer, model_name="t")
    assert other.directory != first
    with source.open("a") as handle:
        handle.write(json.dumps({"q": "20?", "a": "20"}) + "\n")
    assert prepare(section(**base), char_tokenizer, model_name="t").directory != first


def test_tokenizer_fingerprint(tmp_path: Path) -> None:
    """Saving, reloading and padding settings keep it; a chat template changes it."""
    from transformers import AutoTokenizer

    built = build_tokenizer()
    built.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    loaded.padding_side = "right"
    loaded(["a", "abc"], padding=True)  # sets the backend's padding state
    assert tokenizer_fingerprint(loaded) == tokenizer_fingerprint(built)
    loaded.chat_template = "{{ messages[0]['content'] }}"
    assert tokenizer_fingerprint(loaded) != tokenizer_fingerprint(built)


# --- local formats and task formats ----------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


MATH_ROWS = [
    {"problem": f"What is {i}/2?", "solution": f"Halve it: $\\boxed{{\\frac{{{i}}}{{2}}}}$."}
    for i in range(30)
]


def test_single_file_holds_out_ten_percent(tmp_path: Path, char_tokenizer: Any) -> None:
    """One JSONL file: 10% (fixed seed) is the test split, the rest train, no overlap."""
    source = write_jsonl(tmp_path / "math.jsonl", MATH_ROWS)
    result = prepare(section(task="math", source=str(source)), char_tokenizer, model_name="t")
    train, test = load_split(result, "train"), load_split(result, "test")
    assert (len(train), len(test)) == (27, 3)
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    assert test[0].reference.startswith("\\frac{") and test[0].prompt.endswith("\\boxed{}.")


def test_json_and_parquet_files_in_a_hub_style_folder(tmp_path: Path, char_tokenizer: Any) -> None:
    """`main/train-00000-of-00001.parquet` + `main/test.json` with data.config: main."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "gsm"
    (folder / "main").mkdir(parents=True)
    (folder / "socratic").mkdir()
    train = [{"question": f"q{i}?", "answer": f"work\n#### {i},000"} for i in range(1, 6)]
    pq.write_table(pa.Table.from_pylist(train), folder / "main" / "train-00000-of-00001.parquet")
    (folder / "main" / "test.json").write_text(json.dumps(train[:2]))
    write_jsonl(folder / "socratic" / "train.jsonl", train)
    recipe_data = section(task="gsm8k", source=str(folder), config="main")
    _, splits = load_task(recipe_data, char_tokenizer, "t", lambda _: None)
    assert [e.reference for e in splits["train"]] == ["1000", "2000", "3000", "4000", "5000"]
    assert len(splits["test"]) == 2
    with pytest.raises(DataError, match="in several folders"):
        prepare(section(task="gsm8k", source=str(folder)), char_tokenizer, model_name="t")


def test_custom_fields_are_mapped(tmp_path: Path, char_tokenizer: Any) -> None:
    """task custom reads the named fields; the reference is the stripped answer."""
    write_jsonl(tmp_path / "d" / "train.jsonl", [{"in": "say hi", "out": " hi "}])
    write_jsonl(tmp_path / "d" / "validation.jsonl", [{"in": "say yo", "out": "yo"}])
    recipe_data = section(
        task="custom",
        source=str(tmp_path / "d"),
        test_split="validation",
        prompt_field="in",
        answer_field="out",
    )
    _, splits = load_task(recipe_data, char_tokenizer, "t", lambda _: None)
    assert splits["train"] == [data.Example("say hi", "hi")]
    assert splits["test"] == [data.Example("say yo", "yo")]


# --- countdown -------------------------------------------------------------------------------


def solve(numbers: list[int], target: int) -> str | None:
    """Brute force: an expression using each number once that equals target, or None."""
    from fractions import Fraction

    def exprs(items: list[tuple[Fraction, str]]) -> Any:
        if len(items) == 1:
            yield items[0]
            return
        for i, j in itertools.permutations(range(len(items)), 2):
            (a, sa), (b, sb) = items[i], items[j]
            rest = [items[k] for k in range(len(items)) if k not in (i, j)]
            options = [(a + b, f"({sa}+{sb})"), (a - b, f"({sa}-{sb})"), (a * b, f"({sa}*{sb})")]
            if b != 0:
                options.append((a / b, f"({sa}/{sb})"))
            for option in options:
                yield from exprs([*rest, option])

    for value, text in exprs([(Fraction(n), str(n)) for n in numbers]):
        if value == target:
            return text
    return None


def test_countdown_generation_is_fixed_disjoint_and_solvable() -> None:
    """Same problems every time, no test problem in train, and each has a solution that the
    countdown reward accepts."""
    splits = countdown_examples(200)
    assert splits == countdown_examples(200)
    assert splits["test"] == countdown_examples(5)["test"]  # the test split ignores the size
    key = lambda p: (tuple(sorted(p[0])), p[1])  # noqa: E731
    assert not {key(p) for p in splits["train"]} & {key(p) for p in splits["test"]}
    for numbers, target in splits["test"][:15]:
        assert 3 <= len(numbers) <= 4 and 1 <= target <= 999
        solution = solve(numbers, target)
        assert solution is not None, (numbers, target)
        reference = data.countdown_reference(numbers, target)
        assert countdown(f"<answer>{solution}</answer>", reference) == 1.0, solution


def test_countdown_task_prompts(char_tokenizer: Any) -> None:
    """Generated countdown: 512 test problems, `generated_size` train ones, instruction added."""
    _, splits = load_task(section(task="countdown", generated_size=50), char_tokenizer, "t", print)
    assert (len(splits["train"]), len(splits["test"])) == (50, 512)
    example = splits["test"][0]
    assert example.prompt.startswith("Using the numbers ") and "<answer>" in example.prompt
    assert set(json.loads(example.reference)) == {"numbers", "target"}


# --- errors ----------------------------------------------------------------------------------


def test_missing_local_path(tmp_path: Path, char_tokenizer: Any) -> None:
    with pytest.raises(DataError, match="no such file or folder"):
        prepare(
            section(task="gsm8k", source=str(tmp_path / "nope")), char_tokenizer, model_name="t"
        )


def test_missing_field_names_the_fields_there(tmp_path: Path, char_tokenizer: Any) -> None:
    """A missing field is named, with the fields the data has and the key to set."""
    source = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "answer": "#### 1"}] * 10)
    with pytest.raises(DataError) as info:
        prepare(section(task="gsm8k", source=str(source)), char_tokenizer, model_name="t")
    message = str(info.value)
    assert "no field 'question'" in message and "'prompt', 'answer'" in message, message
    assert "data.prompt_field" in message, message


def test_empty_split(tmp_path: Path, char_tokenizer: Any) -> None:
    write_jsonl(tmp_path / "d" / "train.jsonl", [{"question": "q", "answer": "#### 1"}])
    (tmp_path / "d" / "test.jsonl").write_text("\n")
    with pytest.raises(DataError, match="the test split is empty"):
        prepare(section(task="gsm8k", source=str(tmp_path / "d")), char_tokenizer, model_name="t")


def test_missing_split_file_lists_what_is_there(tmp_path: Path, char_tokenizer: Any) -> None:
    write_jsonl(tmp_path / "d" / "train.jsonl", [{"question": "q", "answer": "#### 1"}])
    with pytest.raises(DataError) as info:
        prepare(section(task="gsm8k", source=str(tmp_path / "d")), char_tokenizer, model_name="t")
    assert "no 'test' split" in str(info.value) and "train.jsonl" in str(info.value)


def test_gsm8k_answer_without_hashes(tmp_path: Path, char_tokenizer: Any) -> None:
    source = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "about five"}] * 10)
    with pytest.raises(DataError, match=r"record \d+: field 'answer' has no number after"):
        prepare(section(task="gsm8k", source=str(source)), char_tokenizer, model_name="t")


def test_broken_json_line(tmp_path: Path, char_tokenizer: Any) -> None:
    source = tmp_path / "d.jsonl"
    source.write_text('{"question": "q", "answer": "#### 1"}\n{"question": \n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        prepare(section(task="gsm8k", source=str(source)), char_tokenizer, model_name="t")


def test_limit_that_drops_everything(tmp_path: Path, char_tokenizer: Any) -> None:
    source = write_jsonl(tmp_path / "d.jsonl", [{"question": "q" * 50, "answer": "#### 1"}] * 10)
    recipe_data = section(task="gsm8k", source=str(source), max_prompt_tokens=10)
    with pytest.raises(DataError, match=r"longer than data\.max_prompt_tokens 10"):
        prepare(recipe_data, char_tokenizer, model_name="t")


def test_unreachable_hub_says_so_and_suggests_a_local_path(char_tokenizer: Any) -> None:
    """Offline, a hub id fails with one line: the hub is unreachable, a local path works."""
    with pytest.raises(DataError) as info:
        prepare(
            section(task="gsm8k", source="openai/gsm8k", config="main"),
            char_tokenizer,
            model_name="t",
        )
    message = str(info.value)
    assert "hub is unreachable" in message and "a local path works" in message, message
    assert "\n" not in message


def test_doctest_examples_hold() -> None:
    """The doctest examples in the data modules are true."""
    import doctest

    from gspo_cli.data import example, formats, generated

    for module in (example, formats, generated):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, (module.__name__, result)


def test_render_prompt_turns_qwen3_thinking_off_and_leaves_other_templates_alone() -> None:
    """A template reading `enable_thinking` (as Qwen3's does) gets the empty think block of
    non-thinking mode; the tests' Qwen-style template and plain text render as before."""
    qwen_template = (  # as tests/conftest.py's QWEN_TEMPLATE
        "{%- for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    tokenizer = build_tokenizer()
    assert data.render_prompt(tokenizer, "1+2=") == "1+2="  # no template: the text itself
    tokenizer.chat_template = qwen_template
    assert data.render_prompt(tokenizer, "1+2=") == QWEN_HEAD + "1+2=" + QWEN_TAIL
    tokenizer.chat_template = qwen_template + (
        "{%- if enable_thinking is defined and enable_thinking is false %}"
        "{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    )
    rendered = data.render_prompt(tokenizer, "1+2=")
    assert rendered == QWEN_HEAD + "1+2=" + QWEN_TAIL + "<think>\n\n</think>\n\n", rendered


def test_null_answer_in_a_file_names_file_and_record(tmp_path: Path, char_tokenizer: Any) -> None:
    """A null answer is refused naming the file and record, not turned into the reference
    "None" (which a completion "None" would then match)."""
    rows: list[dict[str, Any]] = [{"q": "1+1", "a": "2"}] * 4 + [{"q": "2+2", "a": None}]
    source = write_jsonl(tmp_path / "d.jsonl", rows)
    recipe_data = section(task="custom", source=str(source), prompt_field="q", answer_field="a")
    with pytest.raises(DataError, match=r"d\.jsonl: record 5 has a: null \(data\.answer_field\)"):
        prepare(recipe_data, char_tokenizer, model_name="t")


def test_null_answer_in_hub_rows_names_split_and_record() -> None:
    """Rows from any source (a hub dataset too) refuse a null answer, naming the record."""
    recipe_data = section(task="custom", source="org/set", prompt_field="q", answer_field="a")
    rows: list[dict[str, Any]] = [{"q": "1+1", "a": "2"}, {"q": "2+2", "a": None}]
    with pytest.raises(DataError, match="org/set, train record 2: field 'a' is null"):
        data.examples_from_rows(recipe_data, rows, "train", "org/set")
