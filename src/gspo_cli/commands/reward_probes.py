"""Whether a recipe's rewards work, before any model loads: `probe_rewards` calls every
reward term on correct answers to a few prepared examples and on malformed completions, and
collects every problem: a reward that raises, returns something that is not a number, or a
non-finite one; a built-in checker that does not give a correct answer 1.0. Doubts that may be
intended (a user's checker below 1.0 on the bare reference, malformed completions scoring as
high as correct ones) are warnings. `gspo check` shows the probe; `gspo train` refuses a
recipe whose rewards fail it. Nothing here prints, and no torch is imported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gspo_cli import rewards
from gspo_cli.base.errors import RecipeError, RewardError, UserError
from gspo_cli.data import Example
from gspo_cli.recipe import Recipe

PROBE_EXAMPLES = 3  # prepared examples whose references the rewards are probed on
# Completions no reward should count as correct, whatever the task. The answer-free form of
# the checker's own format (e.g. `#### ` for gsm8k) is added per reward.
GARBAGE = "zq!@?;xv " * 120  # long, and without a digit any number checker could read
MALFORMED = ("", "I don't know", GARBAGE)


@dataclass(frozen=True)
class RewardProbe:
    """What probing a recipe's rewards found."""

    examples: int  # prepared examples probed
    correct: list[float]  # the total reward of each correct completion that scored
    malformed: list[float]  # the total reward of each malformed completion that scored
    problems: list[str]  # each stops a run
    warnings: list[str]  # each probably a mistake


@dataclass
class _Term:
    name: str
    fn: rewards.RewardFn
    weight: float
    failures: list[str]  # each failing call's message
    calls: int = 0


def probe_rewards(terms: rewards.Terms, examples: Sequence[Example]) -> RewardProbe:
    """Call every reward term on a correct answer to each example's reference (in the
    checker's answer form) and on malformed completions; collect what went wrong."""
    problems: list[str] = []
    warnings: list[str] = []
    resolved: list[_Term] = []
    for name, weight in terms:
        try:
            resolved.append(_Term(name, rewards.get(name), weight, []))
        except UserError as exc:  # unknown, unimportable or the wrong signature
            problems.append(str(exc))
    if not resolved:
        return RewardProbe(0, [], [], problems, [])
    checker = terms[0][0]
    correct: list[float] = []
    malformed: list[float] = []
    below: list[tuple[str, str, float]] = []  # the checker under 1.0: (completion, ref, score)
    unsolved = 0
    for example in examples:
        ref = example.reference
        right = rewards.correct_completion(checker, ref)
        if right is None:
            unsolved += 1
        else:
            scores = _score(resolved, right, ref)
            if scores is not None:
                correct.append(_total(resolved, scores))
                if resolved and resolved[0].name == checker and scores[0] < 1:
                    below.append((right, ref, scores[0]))
        removed = rewards.correct_completion(checker, ref, answer="")
        for wrong in dict.fromkeys([*MALFORMED, removed or ""]):
            scores = _score(resolved, wrong, ref)
            if scores is not None:
                malformed.append(_total(resolved, scores))
    problems += [_failures(term) for term in resolved if term.failures]
    if below:
        _checker_below_one(checker, below, len(examples) - unsolved, problems, warnings)
    if unsolved:
        warnings.append(
            f"reward {checker!r}: no correct answer could be built for {unsolved} of the "
            f"{len(examples)} probed examples (a countdown problem without a solution?), so "
            "they were probed with malformed completions only"
        )
    if correct and malformed and not below and max(malformed) >= min(correct):
        warnings.append(
            f"reward {rewards.label(terms)} gives a malformed completion {max(malformed):g}, as "
            f"much as a correct answer ({min(correct):g}): it cannot tell right from wrong; "
            "check what it reads from a completion"
        )
    return RewardProbe(len(examples), correct, malformed, problems, warnings)


def _score(terms: list[_Term], completion: str, reference: str) -> list[float] | None:
    """Each term's reward for one completion; None when any term failed on it."""
    scores: list[float] = []
    for term in terms:
        term.calls += 1
        try:
            scores.append(rewards.call(term.fn, term.name, completion, reference))
        except RewardError as exc:
            term.failures.append(str(exc))
    return scores if len(scores) == len(terms) else None


def _total(terms: list[_Term], scores: list[float]) -> float:
    """The reward training uses: Σ weight · term."""
    return sum(term.weight * score for term, score in zip(terms, scores, strict=True))


def _failures(term: _Term) -> str:
    """The first failure of a term, and how many of its calls failed."""
    more = len(term.failures) - 1
    tail = f" ({more} more of its {term.calls} probe calls failed too)" if more else ""
    return term.failures[0] + tail


def _checker_below_one(
    checker: str,
    below: list[tuple[str, str, float]],
    probed: int,
    problems: list[str],
    warnings: list[str],
) -> None:
    """A built-in checker under 1.0 on a correct answer is a problem (the data's references
    do not fit it); a user's may read another answer form than the bare reference."""
    completion, reference, score = below[0]
    line = (
        f"reward {checker!r} (the checker) gives {score:g}, not 1.0, to a correct answer on "
        f"{len(below)} of {probed} probed examples, e.g. completion="
        f"{rewards.shown(completion)}, reference={rewards.shown(reference)}; "
    )
    if checker in rewards.REGISTRY:
        problems.append(
            line + "accuracy would never count an answer correct; check that data.task "
            "matches the reward and the references are what the checker reads"
        )
    else:
        warnings.append(
            line + "a completion counts as correct when the checker gives it 1.0; ignore this "
            "if your reward expects the answer in another form than the bare reference"
        )


def require_working_rewards(
    recipe: Recipe, examples: Sequence[Example], warn: Callable[[str], None]
) -> None:
    """Probe the recipe's rewards on its first prepared examples before any model loads: a
    RecipeError (exit 2) listing every problem, warnings through `warn`."""
    probe = probe_rewards(recipe.reward_terms, examples[:PROBE_EXAMPLES])
    for note in probe.warnings:
        warn(f"warning: {note}")
    if probe.problems:
        raise RecipeError(probe.problems, f"reward check on {probe.examples} prepared examples")
