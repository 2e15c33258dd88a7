"""The task checkers (GSM8K, MATH, countdown, format), user rewards and weighted sums."""

from __future__ import annotations

import doctest
import importlib
import json
import math
from pathlib import Path
from typing import Any

import pytest

from gspo_cli import rewards
from gspo_cli.base.errors import RewardError, UserError
from gspo_cli.data import gsm8k_reference
from gspo_cli.rewards import REGISTRY, checker, combine, extractor, get, label, score
from gspo_cli.rewards.countdown import countdown, evaluate
from gspo_cli.rewards.format import format_answer_tag, format_boxed, format_gsm8k
from gspo_cli.rewards.math_answers import (
    gsm8k,
    gsm8k_flexible,
    last_boxed,
    math_boxed,
    normalize_math,
)


@pytest.mark.parametrize(
    "module",
    [
        "gspo_cli.rewards",
        "gspo_cli.rewards.math_answers",
        "gspo_cli.rewards.countdown",
        "gspo_cli.rewards.format",
    ],
)
def test_doctest_examples_hold(module: str) -> None:
    """Every doctest example in the reward modules is true."""
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0, result


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_reward_is_a_float_function_of_two_strings(name: str) -> None:
    """get(name)(completion, reference) returns a finite float for ordinary and odd inputs."""
    fn = get(name)
    reference = '{"numbers": [1, 2], "target": 3}' if name == "countdown" else "3"
    for completion in ("", "3", "#### 3", r"\boxed{3}", "<answer>1+2</answer>", "ü∞\n{"):
        value = fn(completion, reference)
        assert type(value) is float and math.isfinite(value), (name, completion, value)


# --- GSM8K -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "reference", "strict", "flexible"),
    [
        ("She makes 9 * 2 = $18.\n#### 18", "18", 1.0, 1.0),
        ("#### 18", "18", 1.0, 1.0),
        ("####18", "18", 1.0, 1.0),
        ("#### $18", "18", 1.0, 1.0),
        ("#### 18.0", "18", 1.0, 1.0),
        ("#### 18.00.", "18", 1.0, 1.0),
        ("#### 1,080", "1080", 1.0, 1.0),
        ("#### 1080", "1,080", 1.0, 1.0),
        ("#### -3", "-3", 1.0, 1.0),
        ("#### 0.5", ".5", 1.0, 1.0),
        ("#### 17\n#### 18", "18", 1.0, 1.0),  # the last one counts
        ("#### 18\n#### 17", "18", 0.0, 0.0),
        ("The answer is 18.", "18", 0.0, 1.0),  # no `####`: strict fails, flexible reads 18
        ("The answer is $1,080 in total", "1080", 0.0, 1.0),
        ("#### 18 eggs, 3 hens", "18", 1.0, 0.0),  # flexible reads the last number, 3
        ("pages 3-4", "-4", 0.0, 0.0),  # a hyphen between numbers is not a minus sign
        ("#### 180", "18", 0.0, 0.0),
        ("#### 1.8", "18", 0.0, 0.0),
        ("", "18", 0.0, 0.0),
        ("#### eighteen", "18", 0.0, 0.0),
        ("9 * 2 = 18\n#### 18", "9 * 2 = 18\n#### 18", 1.0, 1.0),  # a whole solution as reference
        ("#### 18", "not a number", 0.0, 0.0),
    ],
)
def test_gsm8k_strict_and_flexible(
    completion: str, reference: str, strict: float, flexible: float
) -> None:
    """Strict reads the last `#### N`, flexible the last number; `$`, `,`, `.0` are ignored."""
    assert gsm8k(completion, reference) == strict, (completion, reference)
    assert gsm8k_flexible(completion, reference) == flexible, (completion, reference)


def _with_commas(reference: str) -> str:
    return f"{int(reference):,}" if reference.lstrip("-").isdigit() else reference


def test_every_gsm8k_test_reference_scores_one(gsm8k_dir: Path) -> None:
    """All 1,319 GSM8K test answers, written as a model would, score 1.0; off by one scores 0."""
    rows = [json.loads(line) for line in (gsm8k_dir / "test.jsonl").open()]
    assert len(rows) == 1319
    failures = []
    for row in rows:
        reference = gsm8k_reference(row["answer"])
        assert reference is not None, row["answer"]
        shown = _with_commas(reference)
        wrong = str(int(reference) + 1)
        cases = [
            (gsm8k, row["answer"], 1.0),  # the reference solution itself, `<<a*b=c>>` and all
            (gsm8k, f"Let me work it out.\n#### ${shown}.00", 1.0),
            (gsm8k_flexible, row["answer"], 1.0),
            (gsm8k_flexible, f"So the answer is ${shown}.", 1.0),
            (gsm8k, f"So the answer is {reference}.", 0.0),  # strict wants `####`
            (gsm8k, f"#### {wrong}", 0.0),
            (gsm8k_flexible, f"The answer is {wrong}.", 0.0),
        ]
        for fn, completion, expected in cases:
            if fn(completion, reference) != expected:
                failures.append((fn.__name__, completion[-40:], reference, expected))
    assert not failures, f"{len(failures)} failures, first: {failures[:3]}"


# --- MATH ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"\boxed{5}", "5"),
        (r"so $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"\boxed{1} then \boxed{2}", "2"),
        (r"\boxed{\sqrt{\{a\}}}", r"\sqrt{\{a\}}"),
        (r"\boxed{3} then \boxed{4", "3"),  # the last one is unbalanced: the last balanced wins
        (r"\fbox{7}", "7"),
        (r"\boxed 42$ done", "42"),
        (r"\boxed {8}", "8"),
        ("no box here", None),
        (r"\boxed{", None),
    ],
)
def test_last_boxed(text: str, expected: str | None) -> None:
    """The content of the last balanced box, nested braces included."""
    assert last_boxed(text) == expected, text


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (r"\dfrac{1}{2}", r"\frac{1}{2}"),
        (r"\tfrac12", r"\frac{1}{2}"),
        ("1/2", r"\frac{1}{2}"),
        (r"\frac{1}2", r"\frac{1}{2}"),
        (r"\left( 1, 2 \right)", "(1,2)"),
        (r"5\text{ cm}", "5"),
        (r"\text{(A)}", "(A)"),
        (r"90^\circ", "90"),
        (r"90^{\circ}", "90"),
        (r"50\%", "50"),
        (r"\$18", "18"),
        ("x = 3", "3"),
        ("2.50", "2.5"),
        ("3.0", "3"),
        (".5", "0.5"),
        ("1,000", "1000"),
        (r"\sqrt2", r"\sqrt{2}"),
        ("4.", "4"),
        (r"\frac{x+1}{2}", r"\frac{x+1}{2}"),
    ],
)
def test_normalize_math(answer: str, expected: str) -> None:
    """Equivalent ways of writing one answer normalise to one string."""
    assert normalize_math(answer) == expected, answer


@pytest.mark.parametrize(
    ("completion", "reference", "expected"),
    [
        (r"Thus $\boxed{\dfrac{1}{2}}$.", r"\frac{1}{2}", 1.0),
        (r"\boxed{0.5}", ".5", 1.0),
        (r"\boxed{x=3}", "3", 1.0),
        (r"\boxed{90^\circ}", "90", 1.0),
        (r"\boxed{(1, 2)}", r"\left(1,2\right)", 1.0),
        (r"\boxed{3}", r"The solution... so $\boxed{3}$.", 1.0),  # a whole solution as reference
        (r"\boxed{2} no wait \boxed{3}", "3", 1.0),
        (r"\boxed{3} no wait \boxed{2}", "3", 0.0),
        (r"\boxed{\frac{1}{3}}", r"\frac{1}{2}", 0.0),
        ("The answer is 3.", "3", 0.0),  # no box
        (r"\boxed{}", "", 0.0),  # nothing to match
    ],
)
def test_math_boxed(completion: str, reference: str, expected: float) -> None:
    """The last balanced box, normalised, must equal the normalised reference."""
    assert math_boxed(completion, reference) == expected, (completion, reference)


# --- countdown -------------------------------------------------------------------------------

REF = json.dumps({"numbers": [3, 5, 7], "target": 22})


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<answer>3*5+7</answer>", 1.0),
        ("<answer> 7 + 5 * 3 </answer>", 1.0),
        ("<answer>(3 * 5) + 7 = 22</answer>", 1.0),
        ("first <answer>3+5+7</answer> then <answer>3*5+7</answer>", 1.0),  # the last counts
        ("<answer>3*5+7</answer> then <answer>3+5+7</answer>", 0.0),
        ("<answer>3*5+7 = 23</answer>", 0.0),  # a wrong stated result
        ("<answer>15+7</answer>", 0.0),  # 15 is not a given number
        ("<answer>3*5+7+0</answer>", 0.0),  # 0 is not given
        ("<answer>3*5*1+7</answer>", 0.0),
        ("<answer>3*7+1</answer>", 0.0),  # 5 unused, 1 not given
        ("<answer>3*5+7+3-3</answer>", 0.0),  # 3 used three times
        ("3*5+7", 0.0),  # no answer tag
        ("<answer>-3+5*5</answer>", 0.0),  # unary minus is not allowed
        ("<answer>3**5+7</answer>", 0.0),
        ("<answer>__import__('os').system('true')</answer>", 0.0),
        ("<answer>3.0*5+7</answer>", 0.0),  # decimals are not given numbers
        ("<answer>(3*5+7</answer>", 0.0),
        ("<answer>3*5+7)</answer>", 0.0),
        ("<answer>" + "(" * 40 + "3*5+7" + ")" * 40 + "</answer>", 0.0),  # too deep
        ("<answer>" + "3*5+7" + " " * 400 + "</answer>", 1.0),  # stripped, then short enough
    ],
)
def test_countdown(completion: str, expected: float) -> None:
    """Each given number exactly once, only + - * / and parentheses, equal to the target."""
    assert countdown(completion, REF) == expected, completion


def test_countdown_uses_exact_fractions() -> None:
    """Division is exact: 7 / 2 * 4 = 14, and 1 / 3 * 3 is exactly 1."""
    assert countdown("<answer>7 / 2 * 4</answer>", '{"numbers": [7, 2, 4], "target": 14}') == 1.0
    assert countdown("<answer>1 / 3 * 3</answer>", '{"numbers": [1, 3, 3], "target": 1}') == 1.0
    assert countdown("<answer>5 / (3 - 3)</answer>", '{"numbers": [5, 3, 3], "target": 1}') == 0.0


def test_countdown_evaluate_refuses_long_input_without_parsing() -> None:
    """An expression over the length limit is refused, not evaluated."""
    assert evaluate("1+" * 200 + "1") is None


# --- format ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fn", "completion", "expected"),
    [
        (format_gsm8k, "work\n#### 42", 1.0),
        (format_gsm8k, "work\n#### $1,000.\n", 1.0),
        (format_gsm8k, "#### 42 is it", 0.0),
        (format_gsm8k, "the answer is 42", 0.0),
        (format_boxed, r"$\boxed{42}$", 1.0),
        (format_boxed, r"\boxed{ }", 0.0),
        (format_boxed, "42", 0.0),
        (format_answer_tag, "<answer>1+2</answer>", 1.0),
        (format_answer_tag, "<answer>1+2</answer>\n", 1.0),
        (format_answer_tag, "<answer>1+2</answer> more", 0.0),
        (format_answer_tag, "<answer>1+2", 0.0),
    ],
)
def test_format_rewards(fn: Any, completion: str, expected: float) -> None:
    """A format reward checks the form of the final answer, not its value."""
    assert fn(completion, "unused") == expected, completion


# --- user rewards, weighted sums, checker, extractor -----------------------------------------


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable module `my_rewards_mod` with good and broken reward functions."""
    (tmp_path / "my_rewards_mod.py").write_text(
        "import math\n"
        "def length(completion, reference):\n    return len(completion) / 10\n"
        "def raises(completion, reference):\n    raise KeyError(completion)\n"
        "def nan(completion, reference):\n    return math.nan\n"
        "def one_arg(completion):\n    return 1.0\n"
        "NOT_CALLABLE = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards_mod"


def test_user_reward_by_module_and_function(user_module: str) -> None:
    """`package.module:function` imports the user's function."""
    fn = get(f"{user_module}:length")
    assert fn("abcde", "x") == 0.5


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
        ("my_rewards_mod:missing", "has no 'missing'"),
        ("my_rewards_mod:NOT_CALLABLE", "non-callable"),
        ("my_rewards_mod:one_arg", "cannot be called as fn(completion, reference)"),
        ("my_rewards_mod:", "package.module:function"),
        ("no_such_reward", "known rewards are"),
    ],
)
def test_bad_user_reward_is_a_user_error(user_module: str, spec: str, fragment: str) -> None:
    """An unimportable, missing, non-callable or mis-shaped reward is a UserError (exit 2)."""
    with pytest.raises(UserError) as info:
        get(spec)
    assert fragment in str(info.value), str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.parametrize(("name", "fragment"), [("raises", "raised KeyError"), ("nan", "nan")])
def test_broken_user_reward_stops_the_run_naming_it(
    user_module: str, name: str, fragment: str
) -> None:
    """A user reward that raises or returns NaN is a RewardError naming it and the input."""
    spec = f"{user_module}:{name}"
    with pytest.raises(RewardError) as info:
        score(get(spec), spec, ["the completion"], ["the reference"])
    message = str(info.value)
    assert spec in message and fragment in message, message
    assert "completion='the completion'" in message and "reference='the reference'" in message


def test_weighted_sum_and_label() -> None:
    """combine sums weight × reward; one term of weight 1 is the reward itself."""
    terms = [("gsm8k", 1.0), ("format_gsm8k", 0.1)]
    fn = combine(terms)
    assert fn("work\n#### 18", "18") == pytest.approx(1.1)
    assert fn("#### 18 done", "18") == pytest.approx(1.0)
    assert fn("work\n#### 17", "18") == pytest.approx(0.1)
    assert combine([("exact", 1.0)]) is rewards.exact
    assert combine([("exact", 2.0)])("5", "5") == 2.0
    assert label(terms) == "gsm8k + 0.1*format_gsm8k"


def test_weighted_sum_names_the_broken_term(user_module: str) -> None:
    """In a sum, the error names the term that failed, not the sum."""
    spec = f"{user_module}:raises"
    fn = combine([("exact", 1.0), (spec, 0.5)])
    with pytest.raises(RewardError) as info:
        score(fn, label([("exact", 1.0), (spec, 0.5)]), ["c"], ["r"])
    assert str(info.value).startswith(f"reward '{spec}' raised KeyError"), str(info.value)


def test_checker_is_the_first_term_unweighted() -> None:
    """Correctness comes from the first reward, without its weight."""
    assert checker([("gsm8k", 0.5), ("format_gsm8k", 0.1)]) is gsm8k


@pytest.mark.parametrize(
    ("name", "completion", "expected"),
    [
        ("gsm8k", "x\n#### $1,000.00", "1000"),
        ("gsm8k_flexible", "it is 7 or 8.", "8"),
        ("math_boxed", r"\boxed{\dfrac12}", r"\frac{1}{2}"),
        ("countdown", "<answer> 3*5+7 </answer>", "3*5+7"),
        ("exact", " 57 ", "57"),
        ("format_gsm8k", " 57 ", "57"),  # no extractor of its own: the stripped text
        ("gsm8k", "no answer", None),
    ],
)
def test_extractors(name: str, completion: str, expected: str | None) -> None:
    """Each checker's extractor returns the answer it compares."""
    assert extractor(name)(completion) == expected
