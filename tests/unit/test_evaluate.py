"""pass@k, majority vote, scores and what `gspo eval PATH` resolves PATH to."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from gspo_cli.base.errors import ModelError
from gspo_cli.commands.evaluate import ks_for, majority, pass_at_k, resolve_target, scores_for

# --- pass@k ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 1, 2 / 5),  # pass@1 is c/n
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5) = 1 - 21/252
        (8, 1, 4, 1 - 35 / 70),  # 1 - C(7,4)/C(8,4) = 1/2: half of the 4-subsets hold it
        (4, 0, 2, 0.0),  # nothing correct
        (4, 4, 1, 1.0),  # everything correct
        (4, 3, 2, 1.0),  # n - c = 1 < k: every pair holds a correct one
        (100, 1, 1, 0.01),
    ],
)
def test_pass_at_k_hand_computed(n: int, c: int, k: int, expected: float) -> None:
    """1 - C(n-c, k) / C(n, k) on cases worked out by hand."""
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6])
def test_pass_at_k_is_the_fraction_of_k_subsets_with_a_correct_sample(n: int) -> None:
    """For every c and k: the share of all k-subsets of n samples that contain a correct one."""
    for c in range(n + 1):
        samples = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(samples, k))
            share = sum(any(s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(share, abs=1e-12), (n, c, k)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_impossible_counts(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError, match="pass@k needs"):
        pass_at_k(n, c, k)


def test_ks_and_majority() -> None:
    """k runs over powers of two below N, then N; majority ties go to the first seen."""
    assert ks_for(16) == [1, 2, 4, 8, 16] and ks_for(3) == [1, 2, 3]
    assert majority(["7", "8", "8"]) == "8"
    assert majority(["7", "8", None, None, None]) == "7"
    assert majority([]) is None


def record(greedy: bool, sampled: list[bool], majority_correct: bool) -> dict[str, Any]:
    return {
        "greedy": {"correct": greedy},
        "samples": [{"correct": s} for s in sampled],
        "majority_correct": majority_correct,
    }


def test_scores_average_over_prompts() -> None:
    """Greedy pass@1, mean pass@k over prompts and maj@N from hand-made records."""
    records = [
        record(True, [True, False, False, False], False),  # c=1: pass@1 .25, @2 .5, @4 1
        record(False, [True, True, False, False], True),  # c=2: pass@1 .5, @2 5/6, @4 1
        record(False, [False] * 4, False),  # c=0
    ]
    scores = scores_for(records, 4)
    assert scores["greedy_pass@1"] == pytest.approx(1 / 3)
    assert scores["pass@1"] == pytest.approx((0.25 + 0.5 + 0) / 3)
    assert scores["pass@2"] == pytest.approx((0.5 + 5 / 6 + 0) / 3)
    assert scores["pass@4"] == pytest.approx(2 / 3)
    assert scores["maj@4"] == pytest.approx(1 / 3)
    assert set(scores_for(records, 0)) == {"greedy_pass@1"}


# --- what PATH is ----------------------------------------------------------------------------


def make_run(root: Path, final: bool = True) -> Path:
    run = root / "run"
    (run / "checkpoints" / "step_000002").mkdir(parents=True)
    (run / "checkpoints" / "step_000002" / "config.json").write_text("{}")
    (run / "recipe.yaml").write_text("name: x\n")
    (run / "metrics.jsonl").write_text("")
    if final:
        (run / "final").mkdir()
        (run / "final" / "config.json").write_text("{}")
    return run


def test_a_run_directory_evaluates_its_final_model(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    target = resolve_target(str(run))
    assert (target.model, target.recipe_file, target.run_dir, target.kind) == (
        str(run / "final"),
        run / "recipe.yaml",
        run,
        "run",
    )


def test_a_checkpoint_uses_its_runs_recipe(tmp_path: Path) -> None:
    checkpoint = make_run(tmp_path) / "checkpoints" / "step_000002"
    target = resolve_target(str(checkpoint))
    assert (target.model, target.recipe_file, target.run_dir, target.kind) == (
        str(checkpoint),
        tmp_path / "run" / "recipe.yaml",
        None,
        "checkpoint",
    )


def test_a_model_directory_and_a_hub_id(tiny_model_dir: Path) -> None:
    assert resolve_target(str(tiny_model_dir)).kind == "model"
    hub = resolve_target("Qwen/Qwen3-0.6B")
    assert (hub.model, hub.recipe_file, hub.kind) == ("Qwen/Qwen3-0.6B", None, "hub")


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda root: root / "missing" / "dir", "no such directory"),
        (lambda root: root, "not a model: it has no config.json"),
        (lambda root: make_run(root, final=False), "this run has no final model"),
        (lambda root: (root / "f.txt", (root / "f.txt").write_text(""))[0], "is a file"),
    ],
)
def test_paths_that_are_not_models(tmp_path: Path, make: Any, fragment: str) -> None:
    """Missing paths, empty folders, unfinished runs and files each get a clear ModelError."""
    with pytest.raises(ModelError) as info:
        resolve_target(str(make(tmp_path)))
    assert fragment in str(info.value), str(info.value)
    assert info.value.exit_code == 2


def test_doctest_examples_hold() -> None:
    """The doctest examples in evaluate.py (pass@k, ks, majority) are true."""
    import doctest

    from gspo_cli.commands import evaluate

    result = doctest.testmod(evaluate)
    assert result.attempted > 0 and result.failed == 0, result
