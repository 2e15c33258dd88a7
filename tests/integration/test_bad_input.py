"""Bad input of every kind: one clear message, exit code 2, and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from gspo_cli.cli import app

from refusals import assert_refused, runner

CASES = {
    "not yaml": ("algo: [unclosed\n", [], "not valid YAML"),
    "empty": ("", [], "the file is empty"),
    "unknown key": ("algo:\n  modee: gspo\n", [], "algo.modee: unknown key; did you mean 'mode'"),
    "wrong type": ("rollout:\n  group_size: eight\n", [], "rollout.group_size: Input should be"),
    "zero size": ("rollout:\n  prompts_per_step: 0\n", [], "rollout.prompts_per_step"),
    "negative size": ("train:\n  steps: -5\n", [], "train.steps"),
    "epsilon zero": ("algo:\n  clip_low: 0\n", [], "algo.clip_low: Input should be greater than 0"),
    "epsilon negative": ("algo:\n  clip_high: -0.1\n", [], "algo.clip_high"),
    "group size 1": ("rollout:\n  group_size: 1\n", [], "rollout.group_size"),
    "missing model path": ("model:\n  name: ./no/such/model\n", [], "no such directory exists"),
    "unknown reward": ("reward: no_such_reward\n", [], "unknown reward 'no_such_reward'"),
    "bad override": ("{}\n", ["--set", "algo.mode"], "expected dotted.key=value"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_recipe_exits_2_and_writes_nothing(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each bad recipe gets a specific message, exit code 2, no traceback and no new files."""
    text, extra, fragment = CASES[case]
    monkeypatch.chdir(tmp_path)
    Path("recipe.yaml").write_text(text)
    assert_refused(["train", "recipe.yaml", *extra], tmp_path, code=2, fragment=fragment)


def test_unwritable_output_directory(tmp_path: Path) -> None:
    """--out under a regular file cannot be created: exit 2 naming the directory."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = runner.invoke(app, ["train", "--out", str(blocker / "run")])
    assert result.exit_code == 2, result.output
    assert "cannot write the run directory" in result.output


def test_resume_and_out_together_are_refused(tmp_path: Path) -> None:
    """--resume writes into its own directory, so --out with it is a user error."""
    result = runner.invoke(app, ["train", "--resume", str(tmp_path), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "exclude each other" in result.output
