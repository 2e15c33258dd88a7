"""The CLI with the training core patched out: parsing, errors, exit codes, overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gspo_cli import train as trainer
from gspo_cli.cli import app
from gspo_cli.recipe import Recipe
from gspo_cli.train import TrainSummary

runner = CliRunner()


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Recipe]:
    """Patch `train.run` to record the recipe it receives instead of training."""
    monkeypatch.chdir(tmp_path)
    received: list[Recipe] = []

    def fake_run(recipe: Recipe, run_dir: Path, **_: Any) -> TrainSummary:
        received.append(recipe)
        return TrainSummary(run_dir, recipe.train.steps, 0.25, 0.5, 1.0)

    monkeypatch.setattr(trainer, "run", fake_run)
    return received


def test_set_overrides_reach_the_core(captured: list[Recipe], tmp_path: Path) -> None:
    """--set values arrive in the Recipe that train.run receives."""
    result = runner.invoke(
        app,
        [
            "train",
            "--set",
            "algo.mode=grpo",
            "--set",
            "rollout.group_size=4",
            "--set",
            "optim.lr=1e-4",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 0, result.output
    (recipe,) = captured
    assert recipe.algo.mode == "grpo"
    assert (recipe.algo.clip_low, recipe.algo.clip_high) == (0.2, 0.27)
    assert recipe.rollout.group_size == 4
    assert recipe.optim.lr == pytest.approx(1e-4)


def test_recipe_file_and_overrides_combine(captured: list[Recipe], tmp_path: Path) -> None:
    """A recipe file's values are kept and --set wins over them."""
    path = tmp_path / "r.yaml"
    path.write_text("name: mine\ntrain:\n  steps: 9\nalgo:\n  mode: grpo\n")
    result = runner.invoke(app, ["train", str(path), "--set", "train.steps=3"])
    assert result.exit_code == 0, result.output
    (recipe,) = captured
    assert (recipe.name, recipe.train.steps, recipe.algo.mode) == ("mine", 3, "grpo")


def test_bad_recipe_lists_every_error_and_exits_2(captured: list[Recipe], tmp_path: Path) -> None:
    """All problems are printed together, the exit code is 2 and nothing is written."""
    path = tmp_path / "bad.yaml"
    path.write_text(
        "algo:\n  mode: ppo\n  clip_low: 0\nrollout:\n  group_size: 1\n  prompt_per_step: 4\n"
    )
    result = runner.invoke(app, ["train", str(path)])
    assert result.exit_code == 2, result.output
    for fragment in (
        "algo.mode",
        "algo.clip_low",
        "rollout.group_size",
        "rollout.prompt_per_step",
        "did you mean 'prompts_per_step'",
        "4 problems",
    ):
        assert fragment in result.output, (fragment, result.output)
    assert "Traceback" not in result.output
    assert captured == []
    assert not (tmp_path / "runs").exists(), "a bad recipe must not create a run directory"


def test_bad_override_exits_2(captured: list[Recipe]) -> None:
    """A --set to a value out of range is a user error."""
    result = runner.invoke(app, ["train", "--set", "rollout.group_size=1"])
    assert result.exit_code == 2, result.output
    assert "rollout.group_size" in result.output
    assert captured == []


def test_missing_recipe_file_exits_2(captured: list[Recipe]) -> None:
    """A recipe path that does not exist is one clear line, exit 2."""
    result = runner.invoke(app, ["train", "no/such/recipe.yaml"])
    assert result.exit_code == 2
    assert "no/such/recipe.yaml: no such file" in result.output


def test_on_policy_gspo_warning_is_printed(captured: list[Recipe]) -> None:
    """GSPO with one minibatch and one epoch trains but warns that the ratio is always 1."""
    result = runner.invoke(app, ["train", "--set", "algo.minibatches=1"])
    assert result.exit_code == 0, result.output
    assert "ratio is always 1" in result.output


def test_out_directory_holding_a_run_is_refused(captured: list[Recipe], tmp_path: Path) -> None:
    """--out pointing at an existing run exits 2 instead of appending to it."""
    run = tmp_path / "old"
    run.mkdir()
    (run / "metrics.jsonl").write_text("{}\n")
    result = runner.invoke(app, ["train", "--out", str(run)])
    assert result.exit_code == 2
    assert "already holds a run" in result.output
    assert captured == []


@pytest.mark.parametrize("command", ["compare"])
def test_unfinished_commands_say_so(command: str) -> None:
    """Commands that do not exist yet fail loudly instead of pretending to work."""
    result = runner.invoke(app, [command, "anything"])
    assert result.exit_code == 1
    assert "not yet available" in result.output


def test_version() -> None:
    """--version prints the package version."""
    from gspo_cli import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output
