"""The CLI with the training core patched out: parsing, errors, exit codes, overrides."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gspo_cli.cli import app, train_cmd
from gspo_cli.commands import train as trainer
from gspo_cli.commands.train import TrainSummary
from gspo_cli.recipe import Recipe

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


def test_version() -> None:
    """--version prints the package version."""
    from gspo_cli import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


# --- prepare ---------------------------------------------------------------------------------


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("GSPO_CACHE", str(cache))
    return cache


@pytest.mark.parametrize("model", ["tiny", "qwen_style"])
def test_prepare_gsm8k_counts_then_says_already_prepared(
    fresh_cache: Path, gsm8k_dir: Path, qwen_style_model_dir: Path, model: str
) -> None:
    """`gspo prepare` on the local GSM8K: 7,473 / 1,319 prompts; again: a no-op that says so."""
    name = "tiny-qwen3" if model == "tiny" else str(qwen_style_model_dir)
    args = ["prepare", "--set", "data.task=gsm8k", "--set", f"data.source={gsm8k_dir}"]
    args += ["--set", f"model.name={name}"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "preparing gsm8k data" in result.output
    for row in (r"train\s+│\s+train\s+│\s+7473\s+│\s+7473\s+│\s+0", r"test\s+│\s+test\s+│\s+1319"):
        assert re.search(row, result.output), (row, result.output)
    assert f"chat template {'no' if model == 'tiny' else 'yes'}" in result.output, result.output
    (prepared,) = (fresh_cache / "prepared").iterdir()
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["splits"]["train"]["kept"] == 7473 and manifest["model"] == name

    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "already prepared" in again.output and "nothing to do" in again.output
    assert "preparing" not in again.output


@pytest.mark.parametrize(
    ("sets", "fragments"),
    [
        (["data.task=gsm8k", "data.source=no/such/file.jsonl"], ["no such file or folder"]),
        (
            ["data.task=gsm8k", "data.source=openai/gsm8k", "data.config=main"],
            ["hub is unreachable", "a local path works"],
        ),
        (["reward=nope"], ["unknown reward 'nope'"]),
    ],
)
def test_prepare_bad_input_is_one_line_and_exit_2(
    fresh_cache: Path, sets: list[str], fragments: list[str]
) -> None:
    """A missing file, an unreachable hub or a bad reward: one red line, exit 2."""
    args = ["prepare"]
    for s in sets:
        args += ["--set", s]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("error:"), result.output
    for fragment in fragments:
        assert fragment in result.output.replace("\n", " "), (fragment, result.output)
    assert "Traceback" not in result.output


def test_prepare_missing_fields_are_named(fresh_cache: Path, tmp_path: Path) -> None:
    """Fields the task needs but the data lacks are named together with those it has."""
    source = tmp_path / "d.jsonl"
    source.write_text('{"prompt": "p", "reply": "r"}\n' * 10)
    result = runner.invoke(
        app, ["prepare", "--set", "data.task=gsm8k", "--set", f"data.source={source}"]
    )
    assert result.exit_code == 2, result.output
    text = result.output.replace("\n", "")
    assert "no field 'question'" in text and "'prompt', 'reply'" in text, result.output


def test_unknown_reward_stops_train_before_the_core(captured: list[Recipe]) -> None:
    """An unknown or unimportable reward is exit 2, and the trainer is never called."""
    for spec in ("nope", "not_a_module_xyz:fn"):
        result = runner.invoke(app, ["train", "--set", f"reward={spec}"])
        assert result.exit_code == 2, result.output
        assert "reward" in result.output and "Traceback" not in result.output
    assert captured == []


# --- eval ------------------------------------------------------------------------------------


def test_eval_passes_the_runs_recipe_with_overrides(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A run directory: its recipe.yaml plus --set/--data reach evaluate.run, output in the run."""
    from gspo_cli.commands import evaluate
    from gspo_cli.commands.evaluate import EvalReport

    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_text("{}")
    (run / "metrics.jsonl").write_text("")
    (run / "recipe.yaml").write_text("name: mine\ndata:\n  eval_size: 16\n")
    calls: list[tuple[Any, ...]] = []

    def fake_run(recipe: Recipe, target: Any, out_dir: Path, **kwargs: Any) -> EvalReport:
        calls.append((recipe, target, out_dir, kwargs))
        return EvalReport({"greedy_pass@1": 0.5}, 16, 0, 0.1, out_dir / "eval.json", out_dir)

    monkeypatch.setattr(evaluate, "run", fake_run)
    args = ["eval", str(run), "--set", "data.task=custom", "--set", "data.prompt_field=q"]
    args += ["--set", "data.answer_field=a", "--data", "d.jsonl", "--samples", "4"]
    result = runner.invoke(app, [*args, "--limit", "3"])
    assert result.exit_code == 0, result.output
    ((recipe, target, out_dir, kwargs),) = calls
    assert (recipe.name, recipe.data.eval_size, recipe.data.source) == ("mine", 16, "d.jsonl")
    assert target.model == str(run / "final") and out_dir == run
    assert (kwargs["samples"], kwargs["limit"]) == (4, 3)
    assert "greedy_pass@1" in result.output and "0.5000" in result.output


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("no/such/run_dir", "no such directory"),
        (".", "not a model"),
        ("runs_nope", "runs_nope: no such local directory, and as a hub id: cannot load"),
    ],
)
def test_eval_of_something_that_is_not_a_model(
    path: str, fragment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path that does not exist or is not a model: one line, exit 2."""
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["eval", path])
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("body", ["raise KeyError(completion)", "return float('nan')"])
def test_eval_with_a_broken_reward_names_it_and_exits_1(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str
) -> None:
    """A user reward that raises or returns NaN stops `gspo eval` with its name and the input."""
    (tmp_path / "broken_reward_mod.py").write_text(f"def fn(completion, reference):\n    {body}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    args = ["eval", str(tiny_model_dir), "--set", "reward=broken_reward_mod:fn", "--limit", "2"]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 1, result.output
    text = result.output.replace("\n", "")
    assert "reward 'broken_reward_mod:fn'" in text and "reference=" in text, result.output
    assert not (out / "eval.json").exists()


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

    monkeypatch.setattr(train_cmd.os, "execv", fake_execv)
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
