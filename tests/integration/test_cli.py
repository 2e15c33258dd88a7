"""The CLI with the training core patched out: parsing, errors, exit codes, overrides."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gspo_cli import cli
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

    def fake_run(recipe: Recipe, run_dir: Path, *_: Any, **__: Any) -> TrainSummary:
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


@pytest.mark.parametrize("command", ["prepare", "eval", "compare"])
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


# --- --nproc: several processes through torchrun ------------------------------------------


@pytest.fixture
def execs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record `os.execv` instead of replacing the process (and stop the command there)."""
    import typer

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    calls: list[list[str]] = []

    def fake_execv(path: str, argv: list[str]) -> None:
        calls.append(argv)
        raise typer.Exit(0)

    monkeypatch.setattr(cli.os, "execv", fake_execv)
    return calls


def test_nproc_starts_torchrun_with_the_same_command(
    captured: list[Recipe], execs: list[list[str]], tmp_path: Path
) -> None:
    """--nproc 2 replaces the process with torchrun running the same train command, minus
    --nproc; nothing trains in the launching process."""
    out = str(tmp_path / "run")
    args = ["train", "--set", "train.steps=3", "--out", out, "--quiet", "--nproc", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert execs == [
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "gspo_cli",
            "train",
            "--set",
            "train.steps=3",
            "--out",
            out,
            "--quiet",
        ]
    ]
    assert captured == []


def test_nproc_that_does_not_divide_the_prompts_is_refused_before_starting(
    captured: list[Recipe], execs: list[list[str]]
) -> None:
    """16 prompts per step on 3 processes exits 2 naming the valid counts; nothing starts."""
    result = runner.invoke(app, ["train", "--nproc", "3"])
    assert result.exit_code == 2, result.output
    assert "run on 1, 2, 4, 8, 16 processes" in result.output
    assert execs == [] and captured == []


def test_nproc_disagreeing_with_torchrun_is_refused(
    captured: list[Recipe], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under torchrun (WORLD_SIZE set) a different --nproc is a user error."""
    monkeypatch.setenv("WORLD_SIZE", "4")
    result = runner.invoke(app, ["train", "--nproc", "2"])
    assert result.exit_code == 2, result.output
    assert "torchrun started 4 processes" in result.output
    assert captured == []
