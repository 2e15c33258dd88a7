"""The training watchdog on hand-made metrics rows."""

from __future__ import annotations

from typing import Any

import pytest

from gspo_cli.rundir import watchdog
from gspo_cli.rundir.watchdog import Watchdog

# A run that learns: some groups have signal, nothing truncated, minibatches 2..N clip.
HEALTHY = {
    "reward_mean": 0.3,
    "reward_std": 0.4,
    "zero_std_frac": 0.25,
    "truncated_frac": 0.0,
    "clip_frac_offpolicy_max": 0.4,
}


def row(**changes: Any) -> dict[str, Any]:
    return {**HEALTHY, **changes}


def feed(dog: Watchdog, rows: list[dict[str, Any]]) -> list[list[str]]:
    """The codes of the warnings each row starts, row by row."""
    return [[w.code for w in dog.observe(r)] for r in rows]


def test_thresholds_are_the_documented_ones() -> None:
    """The README states these numbers; the tests below are worked out with them."""
    assert (watchdog.FIRST_CHECK_STEP, watchdog.WINDOW) == (3, 5)
    assert (watchdog.ZERO_STD_FRAC, watchdog.TRUNCATED_FRAC) == (0.95, 0.9)


def test_a_healthy_run_never_warns() -> None:
    """Fifty healthy steps, GSPO and GRPO: no warning."""
    for mode in ("gspo", "grpo"):
        assert feed(Watchdog(mode, 8), [row()] * 50) == [[]] * 50


def test_constant_reward_warns_at_the_first_check_and_hides_what_it_implies() -> None:
    """All rewards 1.0: steps 1-2 are quiet, step 3 names the constant reward only."""
    dog = Watchdog("gspo", 8)
    constant = row(reward_mean=1.0, reward_std=0.0, zero_std_frac=1.0, clip_frac_offpolicy_max=0.0)
    assert dog.observe(constant) == [] and dog.observe(constant) == []
    (warning,) = dog.observe(constant)  # zero_signal and on_policy follow from it: hidden
    assert warning.code == "constant_reward" and warning.value == 1.0
    assert "same reward (1)" in warning.message and "`reward`" in warning.message
    assert "too hard" in warning.message and "too easy" in warning.message
    assert feed(dog, [constant] * 10) == [[]] * 10, "warned again while it still held"


def test_zero_signal_uses_the_window_mean() -> None:
    """zero_std_frac 1.0, 0.9, 0.96: mean 0.9533 >= 0.95 warns; 1.0, 0.9, 0.9 (0.9333) not."""
    dog = Watchdog("gspo", 8)
    assert feed(dog, [row(zero_std_frac=f) for f in (1.0, 0.9, 0.96)]) == [[], [], ["zero_signal"]]
    assert dog.observe(row(zero_std_frac=0.96)) == []  # mean 0.955: still holds, no repeat
    assert feed(Watchdog("gspo", 8), [row(zero_std_frac=f) for f in (1.0, 0.9, 0.9)]) == [
        [],
        [],
        [],
    ]


def test_zero_signal_message_names_causes_and_value() -> None:
    dog = Watchdog("grpo", 8)
    dog.observe(row(zero_std_frac=1.0))
    dog.observe(row(zero_std_frac=1.0))
    (warning,) = dog.observe(row(zero_std_frac=0.97))
    assert warning.value == pytest.approx((1.0 + 1.0 + 0.97) / 3, abs=1e-12)
    assert "zero_std_frac 0.99" in warning.message
    assert "too hard or too easy" in warning.message and "rollout.group_size" in warning.message


def test_truncation_names_the_limit_and_the_key() -> None:
    """Every completion cut at 1 token: warns at step 3 with the measured fraction."""
    dog = Watchdog("gspo", 1)
    codes = feed(dog, [row(truncated_frac=1.0)] * 2)
    (warning,) = dog.observe(row(truncated_frac=0.85))
    assert codes == [[], []] and warning.code == "truncation"
    assert warning.value == pytest.approx(2.85 / 3, abs=1e-12)
    assert "limit of 1 new tokens" in warning.message
    assert "raise `rollout.max_new_tokens` (now 1)" in warning.message


def test_truncation_below_the_threshold_is_quiet() -> None:
    """Mean truncated_frac (0.9 + 0.9 + 0.8) / 3 = 0.8667 < 0.9."""
    assert feed(Watchdog("gspo", 8), [row(truncated_frac=f) for f in (0.9, 0.9, 0.8)])[-1] == []


def test_once_until_cleared_then_again() -> None:
    """Truncation warns at step 3; one healthy step 7 clears it (window mean 0.8); it comes
    back at step 12, the first step whose 5-step window (8-12) is all truncated again."""
    dog = Watchdog("gspo", 8)
    rows = [row(truncated_frac=1.0)] * 6 + [row()] + [row(truncated_frac=1.0)] * 6
    fired = [step for step, codes in enumerate(feed(dog, rows), start=1) if codes]
    assert fired == [3, 12]


def test_on_policy_fires_only_for_gspo_modes_with_no_clipping_at_all() -> None:
    """clip_frac_offpolicy_max 0 on every step: GSPO and GSPO-token warn, GRPO does not."""
    flat = [row(clip_frac_offpolicy_max=0.0)] * 3
    for mode, expected in (("gspo", ["on_policy"]), ("gspo_token", ["on_policy"]), ("grpo", [])):
        assert feed(Watchdog(mode, 8), flat)[-1] == expected, mode
    dog = Watchdog("gspo", 8)
    dog.observe(flat[0])
    dog.observe(flat[0])
    (warning,) = dog.observe(flat[0])
    assert warning.value == 0.0 and "effectively on-policy" in warning.message
    assert "`optim.lr`" in warning.message


def test_on_policy_needs_every_step_unclipped_and_a_defined_value() -> None:
    """One clipped step in the window, or no off-policy minibatch at all (null), is quiet."""
    mixed = [row(clip_frac_offpolicy_max=c) for c in (0.0, 0.05, 0.0)]
    assert feed(Watchdog("gspo", 8), mixed)[-1] == []
    undefined = [row(clip_frac_offpolicy_max=None)] * 3  # NaN is written as null
    assert feed(Watchdog("gspo", 8), undefined)[-1] == []


def test_a_hidden_warning_appears_when_the_one_hiding_it_clears() -> None:
    """Constant reward for 3 steps, then rewards that differ across groups but never within
    one: constant_reward clears at step 4 and zero_signal (mean 1.0) takes its place."""
    dog = Watchdog("gspo", 8)
    constant = row(reward_std=0.0, zero_std_frac=1.0, clip_frac_offpolicy_max=0.0)
    per_group = row(reward_std=0.5, zero_std_frac=1.0, clip_frac_offpolicy_max=0.0)
    assert feed(dog, [constant] * 3 + [per_group] * 2) == [
        [],
        [],
        ["constant_reward"],
        ["zero_signal"],
        [],
    ]


def test_several_conditions_warn_together_in_a_fixed_order() -> None:
    """Truncated and constant: both named at step 3, constant_reward first."""
    bad = row(truncated_frac=1.0, reward_std=0.0, zero_std_frac=1.0, reward_mean=0.0)
    assert feed(Watchdog("gspo", 1), [bad] * 3)[-1] == ["constant_reward", "truncation"]


def test_replaying_rows_restores_the_state() -> None:
    """A watchdog fed a run's rows again (a resume) continues exactly like the original."""
    rows = [row(truncated_frac=1.0)] * 4 + [row()] * 2 + [row(truncated_frac=1.0)] * 8
    original = feed(Watchdog("gspo", 8), rows)
    replayed = Watchdog("gspo", 8)
    feed(replayed, rows[:5])
    assert feed(replayed, rows[5:]) == original[5:]


def test_as_row_is_json_ready() -> None:
    dog = Watchdog("gspo", 8)
    (warning,) = feed_last(dog, [row(truncated_frac=1.0)] * 3)
    assert warning.as_row() == {
        "code": "truncation",
        "value": 1.0,
        "message": warning.message,
    }


def feed_last(dog: Watchdog, rows: list[dict[str, Any]]) -> list[watchdog.RunWarning]:
    """The warnings the last of `rows` starts."""
    for r in rows[:-1]:
        dog.observe(r)
    return dog.observe(rows[-1])
