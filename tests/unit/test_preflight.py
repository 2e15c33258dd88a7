"""Preflight: batch arithmetic with hand-computed numbers, and reward probes that find every
broken reward (raises, NaN, wrong type, wrong signature) and warn about doubtful ones."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from gspo_cli import rewards
from gspo_cli.base.errors import RecipeError, RewardError
from gspo_cli.commands.preflight import batch_plan
from gspo_cli.commands.reward_probes import MALFORMED, probe_rewards, require_working_rewards
from gspo_cli.data import Example, addition_examples, countdown_examples, countdown_reference
from gspo_cli.recipe import load_recipe
from gspo_cli.scoring import microbatch

SMALL = [
    "rollout.prompts_per_step=8",
    "rollout.group_size=4",
    "rollout.max_new_tokens=8",
    "algo.minibatches=2",
    "algo.epochs=3",
    "train.steps=10",
    "train.microbatch_tokens=100",
]

# --- batch arithmetic ------------------------------------------------------------------------


def test_default_recipe_arithmetic() -> None:
    """16 prompts × 8 = 128 completions, / 4 minibatches = 32 each, 4 optimiser steps per
    rollout step, × 1200 steps = 4800; prompts of 6 tokens + 8 new = 14-token rows, 8192 // 14 =
    585 fit one pass, so each minibatch of 32 is one micro-batch."""
    plan = batch_plan(load_recipe(None), longest_prompt=6)
    assert (plan.prompts_per_step, plan.group_size, plan.completions_per_step) == (16, 8, 128)
    assert (plan.minibatches, plan.responses_per_minibatch) == (4, 32)
    assert (plan.optimizer_steps_per_step, plan.optimizer_steps_total) == (4, 4800)
    assert (plan.nproc, plan.prompts_per_rank, plan.completions_per_rank) == (1, 16, 128)
    assert (plan.row_tokens, plan.rows_per_microbatch, plan.microbatches_per_minibatch) == (
        14,
        585,
        1,
    )
    assert plan.summary() == (
        "16 prompts × 8 = 128 completions per step in 4 minibatches of 32; 4 optimiser steps "
        "per rollout step, 4800 in total"
    )


def test_arithmetic_without_known_prompts_has_no_microbatch_count() -> None:
    """Before the data is prepared the prompt lengths, hence the micro-batches, are unknown."""
    plan = batch_plan(load_recipe(None))
    assert plan.row_tokens is None and plan.microbatches_per_minibatch is None


def test_small_recipe_on_one_and_two_processes() -> None:
    """8 × 4 = 32 completions, 2 minibatches of 16, 2 × 3 epochs = 6 optimiser steps per step,
    60 in 10 steps. Rows of 12 + 8 = 20 tokens, 100 // 20 = 5 per pass: a minibatch of 16 rows
    takes ceil(16 / 5) = 4 passes. On 2 processes each samples 4 prompts = 16 completions and
    may hold all 16 rows of a minibatch (rows are shuffled): still 4."""
    recipe = load_recipe(None, SMALL)
    one = batch_plan(recipe, 1, longest_prompt=12)
    assert (one.completions_per_step, one.responses_per_minibatch) == (32, 16)
    assert (one.optimizer_steps_per_step, one.optimizer_steps_total) == (6, 60)
    assert (one.row_tokens, one.rows_per_microbatch, one.microbatches_per_minibatch) == (20, 5, 4)
    two = batch_plan(recipe, 2, longest_prompt=12)
    assert (two.prompts_per_rank, two.completions_per_rank) == (4, 16)
    assert two.microbatches_per_minibatch == 4
    assert two.summary().endswith("; per process 4 prompts, 16 completions")
    four = batch_plan(recipe, 4, longest_prompt=12)  # 2 prompts = 8 rows each: ceil(8 / 5) = 2
    assert (four.prompts_per_rank, four.completions_per_rank) == (2, 8)
    assert four.microbatches_per_minibatch == 2


@pytest.mark.parametrize(("budget", "fit", "count"), [(0, 16, 1), (10, 1, 16), (40, 2, 8)])
def test_microbatch_budget_edges(budget: int, fit: int, count: int) -> None:
    """Budget 0 is no split; a budget below one 20-token row gives each row its own pass;
    40 // 20 = 2 rows a pass, 16 / 2 = 8 passes."""
    recipe = load_recipe(None, [*SMALL, f"train.microbatch_tokens={budget}"])
    plan = batch_plan(recipe, longest_prompt=12)
    assert (plan.rows_per_microbatch, plan.microbatches_per_minibatch) == (fit, count)


@pytest.mark.parametrize("budget", [0, 10, 40, 100, 320])
def test_microbatch_bound_is_what_the_planner_does_on_full_rows(budget: int) -> None:
    """When every row has the longest prompt and a full completion, the planner makes exactly
    the number of micro-batches the arithmetic promises as its upper bound."""
    recipe = load_recipe(None, [*SMALL, f"train.microbatch_tokens={budget}"])
    plan = batch_plan(recipe, longest_prompt=12)
    rows = plan.responses_per_minibatch
    attention = torch.ones(rows, 12 + 8)  # [n, P+T]
    completion = torch.ones(rows, 8)  # [n, T]
    made = microbatch.plan(attention, completion, torch.arange(rows), budget)
    assert len(made) == plan.microbatches_per_minibatch, (budget, len(made))


def test_processes_that_do_not_split_the_prompts_are_refused() -> None:
    """16 prompts over 3 processes: refused naming both numbers and the valid choices."""
    with pytest.raises(RecipeError) as info:
        batch_plan(load_recipe(None), 3)
    message = info.value.problems[0]
    assert "16 prompts do not split evenly over 3 processes" in message, message
    assert "run on 1, 2, 4, 8, 16 processes" in message, message
    assert "a multiple of 3 such as 15 or 18" in message, message


def test_indivisible_minibatches_name_every_factor_and_nearest_values() -> None:
    """6 minibatches of 12 × 4 = 48 completions divide (8 each); of 16 × 8 = 128 they do not:
    the nearest divisors of 128 are 4 and 8, and 15 or 18 prompts (× 8 = 120, 144) divide by
    6 (a multiple of 6 / gcd(8, 6) = 3 prompts)."""
    load_recipe(None, ["algo.minibatches=6", "rollout.prompts_per_step=12", "rollout.group_size=4"])
    with pytest.raises(RecipeError) as info:
        load_recipe(None, ["algo.minibatches=6"])
    (message,) = info.value.problems
    assert message == (
        "algo.minibatches: 6 does not divide the 128 completions per step "
        "(rollout.prompts_per_step 16 × rollout.group_size 8), so the minibatches would differ "
        "in size; set algo.minibatches to 4 or 8 (the nearest divisors of 128), or "
        "rollout.prompts_per_step to 15 or 18 (15 × 8 = 120, 18 × 8 = 144, each a multiple of 6)"
    )


def test_indivisible_minibatches_with_odd_factors() -> None:
    """7 × 3 = 21 completions in 5 minibatches: divisors 3 or 7; 5 / gcd(3, 5) = 5, so 5 or 10
    prompts (15, 30 completions)."""
    with pytest.raises(RecipeError) as info:
        load_recipe(
            None, ["rollout.prompts_per_step=7", "rollout.group_size=3", "algo.minibatches=5"]
        )
    message = info.value.problems[0]
    assert "set algo.minibatches to 3 or 7 (the nearest divisors of 21)" in message, message
    assert "rollout.prompts_per_step to 5 or 10 (5 × 3 = 15, 10 × 3 = 30" in message, message


# --- reward probes ---------------------------------------------------------------------------

ADDITION = addition_examples("train")[:3]


@pytest.fixture
def user_rewards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable module `preflight_rewards_mod` with broken and doubtful rewards."""
    (tmp_path / "preflight_rewards_mod.py").write_text(
        "import math\n"
        "def nan(completion, reference):\n    return math.nan\n"
        "def inf_on_empty(completion, reference):\n"
        "    return math.inf if not completion else float(completion == reference)\n"
        "def raises(completion, reference):\n    raise KeyError('answer')\n"
        "def text(completion, reference):\n    return '1.0'\n"
        "def nothing(completion, reference):\n    pass\n"
        "def batched(completions, references):\n    return [1.0 for _ in completions]\n"
        "def one_arg(completion):\n    return 1.0\n"
        "def constant(completion, reference):\n    return 1.0\n"
        "def tagged(completion, reference):\n"
        "    return float(completion == '<a>' + reference + '</a>')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "preflight_rewards_mod"


def test_builtin_reward_passes_with_hand_counted_probes() -> None:
    """exact on 3 examples: each reference scores 1; '', "I don't know" and the garbage string
    (the answer-free form of exact is '' again) score 0: 3 × 3 = 9 malformed."""
    probe = probe_rewards([("exact", 1.0)], ADDITION)
    assert (probe.problems, probe.warnings) == ([], [])
    assert probe.correct == [1.0, 1.0, 1.0]
    assert probe.malformed == [0.0] * 9


def test_weighted_sum_is_probed_in_the_checkers_answer_form() -> None:
    """gsm8k + 0.1 × format_gsm8k: '#### 73' scores 1 + 0.1; the answer-free '#### ' joins the
    malformed ones (4 per example), all 0."""
    examples = [Example("q", "73"), Example("q", "1080"), Example("q", "-4")]
    probe = probe_rewards([("gsm8k", 1.0), ("format_gsm8k", 0.1)], examples)
    assert (probe.problems, probe.warnings) == ([], [])
    assert probe.correct == pytest.approx([1.1, 1.1, 1.1])
    assert probe.malformed == [0.0] * 12


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("nan", "returned nan, not a finite number, on completion='73', reference='73'"),
        ("raises", "raised KeyError: 'answer' on completion='73', reference='73'"),
        ("text", "returned a str ('1.0'), not a number, on completion='73', reference='73'"),
        ("nothing", "returned a NoneType (None), not a number"),
        ("batched", "returned a list ([1.0, 1.0]), not a number"),
        ("one_arg", "one_arg(completion) cannot be called as fn(completion, reference)"),
    ],
)
def test_each_broken_reward_is_one_specific_problem(
    user_rewards: str, name: str, fragment: str
) -> None:
    """A reward that returns NaN, raises, returns a non-number or cannot be called with
    (completion, reference) is exactly one problem naming it, the input and the output."""
    spec = f"{user_rewards}:{name}"
    probe = probe_rewards([(spec, 1.0)], ADDITION)
    assert len(probe.problems) == 1, probe.problems
    (problem,) = probe.problems
    assert f"reward '{spec}'" in problem and fragment in problem, problem
    if name != "one_arg":  # 3 correct + 3 × 3 malformed calls, all failing
        assert problem.endswith("(11 more of its 12 probe calls failed too)"), problem


def test_a_reward_failing_on_malformed_input_only_is_caught(user_rewards: str) -> None:
    """Correct answers score 1; the empty completion gets inf: 3 of 12 calls fail."""
    spec = f"{user_rewards}:inf_on_empty"
    (problem,) = probe_rewards([(spec, 1.0)], ADDITION).problems
    assert "returned inf, not a finite number, on completion=''" in problem, problem
    assert problem.endswith("(2 more of its 12 probe calls failed too)"), problem


def test_every_broken_term_is_listed_and_good_ones_are_not(user_rewards: str) -> None:
    """In a sum of three terms with two broken, both are named; exact is not."""
    terms = [("exact", 1.0), (f"{user_rewards}:nan", 0.5), (f"{user_rewards}:raises", 0.1)]
    problems = probe_rewards(terms, ADDITION).problems
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"reward '{user_rewards}:nan' returned nan"), problems
    assert problems[1].startswith(f"reward '{user_rewards}:raises' raised KeyError"), problems


def test_long_completions_are_cut_in_messages(user_rewards: str) -> None:
    """The 1,080-character garbage probe is shown as its first characters and its length."""
    assert len(MALFORMED[2]) == 1080
    with pytest.raises(RewardError) as info:
        rewards.call(rewards.get(f"{user_rewards}:nan"), "r", MALFORMED[2], "73")
    message = str(info.value)
    assert "... (1080 characters), reference='73'" in message and len(message) < 300, message


def test_reward_that_cannot_tell_right_from_wrong_is_a_warning(user_rewards: str) -> None:
    """A constant 1.0 gives malformed completions as much as correct ones: warned, no problem."""
    probe = probe_rewards([(f"{user_rewards}:constant", 1.0)], ADDITION)
    assert probe.problems == []
    (warning,) = probe.warnings
    assert "gives a malformed completion 1, as much as a correct answer (1)" in warning, warning


def test_builtin_checker_under_one_on_a_correct_answer_is_a_problem() -> None:
    """gsm8k cannot read a reference that is not a number ('#### seventy' scores 0): accuracy
    would never count anything, so it is a problem naming the input."""
    examples = [Example("q", "seventy"), Example("q", "12")]
    (problem,) = probe_rewards([("gsm8k", 1.0)], examples).problems
    assert problem.startswith(
        "reward 'gsm8k' (the checker) gives 0, not 1.0, to a correct answer on 1 of 2 probed "
        "examples, e.g. completion='#### seventy', reference='seventy'"
    ), problem


def test_user_checker_under_one_on_the_bare_reference_is_a_warning(user_rewards: str) -> None:
    """A user's checker may want another answer form than the bare reference: a warning."""
    probe = probe_rewards([(f"{user_rewards}:tagged", 1.0)], ADDITION)
    assert probe.problems == []
    (warning,) = probe.warnings
    assert "gives 0, not 1.0, to a correct answer on 3 of 3 probed examples" in warning, warning


def test_countdown_is_probed_with_a_solution_found_by_search() -> None:
    """Every generated countdown problem gets a solution the checker accepts; an unsolvable
    one ([2, 2] → 5) is a warning, probed with malformed completions only."""
    problems = countdown_examples(20)["train"]
    examples = [Example("q", countdown_reference(n, t)) for n, t in problems]
    probe = probe_rewards([("countdown", 1.0)], examples)
    assert (probe.problems, probe.warnings) == ([], [])
    assert probe.correct == [1.0] * 20
    unsolvable = Example("q", json.dumps({"numbers": [2, 2], "target": 5}))
    probe = probe_rewards([("countdown", 1.0)], [examples[0], unsolvable])
    assert probe.correct == [1.0]
    assert "no correct answer could be built for 1 of the 2 probed examples" in probe.warnings[0]


def test_train_preflight_raises_a_user_error_listing_problems(user_rewards: str) -> None:
    """The check at the start of `gspo train` is a RecipeError (exit 2) on the first 3 examples;
    warnings go to the callback."""
    recipe = load_recipe(None, [f"reward={user_rewards}:nan"])
    with pytest.raises(RecipeError) as info:
        require_working_rewards(recipe, addition_examples("train"), print)
    assert info.value.exit_code == 2
    assert str(info.value).startswith("reward check on 3 prepared examples: reward"), info.value
    notes: list[str] = []
    recipe = load_recipe(None, [f"reward={user_rewards}:constant"])
    require_working_rewards(recipe, addition_examples("train"), notes.append)
    assert len(notes) == 1 and "cannot tell right from wrong" in notes[0], notes


def test_probe_totals_are_the_weighted_reward() -> None:
    """The probe totals are the training reward: Σ weight · term (2 × exact = 2)."""
    probe = probe_rewards([("exact", 2.0)], ADDITION[:1])
    assert probe.correct == [2.0] and all(math.isfinite(v) for v in probe.malformed)


def test_recipe_doctests_hold() -> None:
    """The nearest-divisor examples in recipe.py are true."""
    import doctest

    from gspo_cli.recipe import checks as recipe

    result = doctest.testmod(recipe)
    assert result.attempted > 0 and result.failed == 0, result
