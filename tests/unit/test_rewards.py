"""Unit tests for gspo_cli.rewards: the exact-match reward, the registry and batch scoring."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from gspo_cli.base.errors import RewardError, UserError
from gspo_cli.rewards import REGISTRY, exact, get, score

# --- exact -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "reference", "expected"),
    [
        ("57", "57", 1.0),
        (" 57", "57", 1.0),
        ("57\n", "57", 1.0),
        ("\t 57  \n", " 57 ", 1.0),
        ("58", "57", 0.0),
        ("5 7", "57", 0.0),
        ("57 apples", "57", 0.0),
        ("057", "57", 0.0),
        ("", "57", 0.0),
        ("   ", "57", 0.0),
        ("57", "", 0.0),
    ],
)
def test_exact_table(completion: str, reference: str, expected: float) -> None:
    """exact is 1.0 iff the stripped strings are equal, else 0.0."""
    got = exact(completion, reference)
    assert got == expected and isinstance(got, float), f"{completion!r} vs {reference!r}: {got}"


# --- registry --------------------------------------------------------------------------------


def test_get_returns_the_registered_function() -> None:
    """get('exact') is the exact function itself."""
    assert get("exact") is exact
    assert REGISTRY["exact"] is exact


def test_get_unknown_name_lists_known_rewards(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown reward is a UserError naming it and every registered reward, sorted."""
    monkeypatch.setitem(REGISTRY, "b_other", exact)
    with pytest.raises(UserError) as info:
        get("exactt")
    message = str(info.value)
    assert "'exactt'" in message, message
    assert ", ".join(sorted(REGISTRY)) in message, message
    assert "package.module:function" in message, message


# --- score -----------------------------------------------------------------------------------


def _constant(value: Any) -> Any:
    """A reward that returns `value` whatever it is given."""
    return lambda completion, reference: value


def test_score_returns_floats_in_order() -> None:
    """Rewards come back as floats, one per completion, in input order."""
    got = score(exact, "exact", ["1", " 2 ", "x"], ["1", "2", "3"])
    assert got == [1.0, 1.0, 0.0], got
    assert all(type(v) is float for v in got), [type(v) for v in got]


@pytest.mark.parametrize(("value", "expected"), [(1, 1.0), (0, 0.0), (-3, -3.0), (True, 1.0)])
def test_score_converts_ints_and_bools_to_float(value: Any, expected: float) -> None:
    """int and bool rewards are accepted and converted to float."""
    got = score(_constant(value), "const", ["a"], ["b"])
    assert got == [expected] and type(got[0]) is float, got


def test_score_on_an_empty_batch_is_empty() -> None:
    """No completions, no rewards, no call."""
    assert score(_constant(math.nan), "nan", [], []) == []


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, None, "1.0", [1.0]])
def test_score_refuses_non_finite_or_non_numbers(value: Any) -> None:
    """NaN, ±inf, None, a string or a list stop the run, naming reward, value and input."""
    with pytest.raises(RewardError) as info:
        score(_constant(value), "my_reward", ["ok", "the completion"], ["r0", "the ref"])
    message = str(info.value)
    assert "'my_reward'" in message, message
    assert repr(value) in message, message
    assert "completion='ok'" in message and "reference='r0'" in message, message


def test_score_names_the_offending_input() -> None:
    """The error names the first input whose reward is bad, not another one."""

    def picky(completion: str, reference: str) -> float:
        return math.nan if completion == "bad" else 1.0

    with pytest.raises(RewardError) as info:
        score(picky, "picky", ["fine", "bad", "also fine"], ["1", "2", "3"])
    message = str(info.value)
    assert "completion='bad'" in message and "reference='2'" in message, message


def test_score_wraps_a_raising_reward() -> None:
    """An exception in the reward becomes a RewardError naming it, the input and the cause."""

    def broken(completion: str, reference: str) -> float:
        return float(completion)  # ValueError on non-numeric text

    with pytest.raises(RewardError) as info:
        score(broken, "to_float", ["1.5", "abc"], ["x", "y"])
    message = str(info.value)
    assert "'to_float'" in message and "ValueError" in message, message
    assert "completion='abc'" in message and "reference='y'" in message, message
    assert isinstance(info.value.__cause__, ValueError), info.value.__cause__


def test_reward_error_is_not_a_user_error() -> None:
    """A failing reward is a runtime failure (exit 1), not bad user input (exit 2)."""
    with pytest.raises(RewardError) as info:
        score(_constant(None), "none", ["a"], ["b"])
    assert not isinstance(info.value, UserError)
    assert info.value.exit_code == 1, info.value.exit_code


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("shutil:rmtree", "shutil.rmtree from the standard library"),
        ("json:dumps", "json.dumps from the standard library"),
        ("os.path:join", "path.join from the standard library"),
        ("os:remove", "is a builtin_function_or_method, not a plain Python function"),
        ("functools:partial", "is a type, not a plain Python function"),
        ("yaml:dump", "yaml.dump from yaml, a library gspo runs on"),
        ("gspo_cli.rundir.checkpoint:link_final", "from gspo_cli, a library gspo runs on"),
    ],
)
def test_user_reward_must_be_a_function_of_the_users_own_code(spec: str, fragment: str) -> None:
    """A reward is called on every completion and reference, so a standard-library function
    (which may act on its arguments, as shutil.rmtree does) or any other callable is refused."""
    with pytest.raises(UserError, match=re.escape(fragment)):
        get(spec)


def test_a_stdlib_function_imported_into_a_user_module_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check reads the function's own module, not the module it is named through."""
    (tmp_path / "reexports.py").write_text(
        "from shutil import rmtree\n\ndef own(c, r):\n    return 1.0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    with pytest.raises(UserError, match=re.escape("shutil.rmtree from the standard library")):
        get("reexports:rmtree")
    assert get("reexports:own")("a", "b") == 1.0
    del sys.modules["reexports"]
