"""`gspo compare` with the training core patched out: per-run recipes, reuse, resume, modes."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gspo_cli.cli import app
from gspo_cli.commands import train as trainer
from gspo_cli.commands.train import TrainSummary
from gspo_cli.recipe import Recipe

from cli_runs import write_fake_run

runner = CliRunner()


@dataclass
class Call:
    recipe: Recipe
    run_dir: Path
    resume_from: Path | None


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Call]:
    """Patch `train.run` to record its arguments and write a small finished run."""
    monkeypatch.chdir(tmp_path)
    received: list[Call] = []

    def fake_run(
        recipe: Recipe, run_dir: Path, *_: Any, resume_from: Path | None = None, **__: Any
    ) -> TrainSummary:
        received.append(Call(recipe, run_dir, resume_from))
        start = int(resume_from.name.split("_")[1]) if resume_from else 0
        write_fake_run(recipe, run_dir, recipe.train.steps, start)
        return TrainSummary(run_dir, recipe.train.steps, 0.25, 0.5, 1.0)

    monkeypatch.setattr(trainer, "run", fake_run)
    return received


def compare_args(out: Path, *extra: str) -> list[str]:
    return ["compare", "--algos", "gspo", "grpo", "--seeds", "0", "1", "--out", str(out), *extra]


def test_runs_differ_only_in_mode_clip_and_seed(calls: list[Call], tmp_path: Path) -> None:
    """One run per algorithm and seed: modes, clip ranges by mode, seeds; --set applies to all."""
    out = tmp_path / "cmp"
    result = runner.invoke(app, compare_args(out, "--set", "train.steps=3", "-q"))
    assert result.exit_code == 0, result.output
    got = [
        (c.recipe.algo.mode, c.recipe.seed, c.recipe.algo.clip_low, c.recipe.algo.clip_high)
        for c in calls
    ]
    assert got == [
        ("gspo", 0, 3e-4, 4e-4),
        ("gspo", 1, 3e-4, 4e-4),
        ("grpo", 0, 0.2, 0.27),
        ("grpo", 1, 0.2, 0.27),
    ]
    assert all(c.recipe.train.steps == 3 for c in calls), "--set reaches every run"
    assert [c.run_dir for c in calls] == [
        out / "gspo-seed0",
        out / "gspo-seed1",
        out / "grpo-seed0",
        out / "grpo-seed1",
    ]
    assert all(c.resume_from is None for c in calls)
    # apart from mode, clip range and seed, the recipes are identical
    stripped = {
        json.dumps(
            {
                **c.recipe.model_dump(mode="json"),
                "seed": 0,
                "algo": {**c.recipe.algo.model_dump(mode="json"), "mode": 0, "clip_low": 0}
                | {"clip_high": 0},
            },
            sort_keys=True,
        )
        for c in calls
    }
    assert len(stripped) == 1
    assert "gspo leads" in result.output, result.output  # fake final acc: gspo 0.65, grpo 0.55
    for name in ("report.md", "summary.png", "clip_frac.png"):
        assert (out / name).stat().st_size > 0, name


def test_explicit_clip_set_applies_to_all(calls: list[Call], tmp_path: Path) -> None:
    """--set algo.clip_low/clip_high overrides both modes' defaults; --set algo.mode loses."""
    sets = ["--set", "algo.clip_low=0.01", "--set", "algo.clip_high=0.02"]
    result = runner.invoke(
        app, [*compare_args(tmp_path / "c"), *sets, "--set", "algo.mode=grpo", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert [c.recipe.algo.mode for c in calls] == ["gspo", "gspo", "grpo", "grpo"]
    assert {(c.recipe.algo.clip_low, c.recipe.algo.clip_high) for c in calls} == {(0.01, 0.02)}


def test_recipe_file_clip_is_not_carried_to_other_mode(calls: list[Call], tmp_path: Path) -> None:
    """A recipe file's GSPO clip range stays with GSPO; the GRPO runs take GRPO's default."""
    path = tmp_path / "r.yaml"
    path.write_text("name: r\nalgo:\n  mode: gspo\n  clip_low: 1.0e-3\n  clip_high: 2.0e-3\n")
    result = runner.invoke(
        app, ["compare", str(path), "--algos", "gspo", "grpo", "--set", "train.steps=2", "-q"]
    )
    assert result.exit_code == 0, result.output
    clips = [(c.recipe.algo.mode, c.recipe.algo.clip_low, c.recipe.algo.clip_high) for c in calls]
    assert clips == [("gspo", 1e-3, 2e-3), ("grpo", 0.2, 0.27)]
    assert "not used" in result.output
    assert calls[0].run_dir.parent.name.startswith("compare-r-"), "default directory name"


def test_finished_runs_are_reused_and_unfinished_resumed(calls: list[Call], tmp_path: Path) -> None:
    """Run again with the same --out: finished runs are not repeated; an unfinished one with a
    checkpoint is resumed from it; one without is restarted."""
    out = tmp_path / "cmp"
    args = compare_args(out, "--set", "train.steps=4", "-q")
    assert runner.invoke(app, args).exit_code == 0
    assert len(calls) == 4
    calls.clear()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert calls == [], "every run had finished"
    assert result.output.count("already finished, reused") == 4

    # grpo-seed0 was interrupted after step 2 (checkpoint); grpo-seed1 died before any
    for name in ("grpo-seed0", "grpo-seed1"):
        run = out / name
        for child in ("final", "checkpoints"):
            shutil.rmtree(run / child)
        lines = (run / "metrics.jsonl").read_text().splitlines()
        (run / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n")  # eval 0, steps 1-2
    (out / "grpo-seed0" / "checkpoints" / "step_000002").mkdir(parents=True)
    (out / "grpo-seed0" / "checkpoints" / "step_000002" / "manifest.json").write_text(
        json.dumps({"step": 2, "files": []})
    )
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert [(c.run_dir.name, c.resume_from) for c in calls] == [
        ("grpo-seed0", out / "grpo-seed0" / "checkpoints" / "step_000002"),
        ("grpo-seed1", None),
    ]
    assert "restarting" in result.output
    report = (out / "report.md").read_text()
    assert "every run was finished and readable" in report, report


def test_changed_recipe_refuses_to_reuse(calls: list[Call], tmp_path: Path) -> None:
    """A finished run trained with other settings is not silently reused (exit 2)."""
    out = tmp_path / "cmp"
    assert runner.invoke(app, compare_args(out, "--set", "train.steps=2", "-q")).exit_code == 0
    calls.clear()
    result = runner.invoke(
        app, compare_args(out, "--set", "train.steps=2", "--set", "optim.lr=1e-3", "-q")
    )
    assert result.exit_code == 2, result.output
    assert "trained with another recipe" in result.output and "optim.lr" in result.output
    assert calls == []


def test_compare_run_dirs_without_training(calls: list[Call], tmp_path: Path) -> None:
    """RUN_DIRs are compared as they are; a missing one is named and the rest compared."""
    out = tmp_path / "cmp"
    assert runner.invoke(app, compare_args(out, "--set", "train.steps=2", "-q")).exit_code == 0
    calls.clear()
    missing = tmp_path / "nowhere"
    report_dir = tmp_path / "again"
    runs = [str(out / "gspo-seed0"), str(out / "grpo-seed1"), str(missing)]
    result = runner.invoke(app, ["compare", *runs, "--out", str(report_dir)])
    assert result.exit_code == 0, result.output
    assert calls == [], "nothing is trained"
    assert "nowhere: missing" in result.output
    report = (report_dir / "report.md").read_text()
    assert "nowhere: missing" in report
    assert "| gspo | 0 |" in report and "| grpo | 1 |" in report, report
    # a comparison directory stands for its runs and gets the report itself
    result = runner.invoke(app, ["compare", str(out)])
    assert result.exit_code == 0, result.output
    assert "0, 1" in result.output


def test_run_dirs_with_training_options_is_a_user_error(calls: list[Call], tmp_path: Path) -> None:
    """--seeds with run directories makes no sense: exit 2, one line."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    result = runner.invoke(app, ["compare", "a", "b", "--seeds", "1"])
    assert result.exit_code == 2
    assert "nothing is trained" in result.output


def test_no_finished_run_is_a_user_error(calls: list[Call], tmp_path: Path) -> None:
    """Only missing runs: every one is named, then exit 2."""
    result = runner.invoke(app, ["compare", "x", "y"])
    assert result.exit_code == 2
    assert "x: missing" in result.output and "no finished run" in result.output


def test_unknown_algorithm_exits_2(calls: list[Call]) -> None:
    """A misspelt --algos value is refused before anything trains."""
    result = runner.invoke(app, ["compare", "--algos", "gspo", "ppo"])
    assert result.exit_code == 2
    assert "unknown algorithm 'ppo'" in result.output
    assert calls == []


def test_interrupt_names_the_compare_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Ctrl-C during a run exits 130 and says how to resume the whole comparison."""
    from gspo_cli.base.errors import Interrupted

    monkeypatch.chdir(tmp_path)

    def interrupted(recipe: Recipe, run_dir: Path, *_: Any, **__: Any) -> TrainSummary:
        raise Interrupted(
            f"stopped by SIGINT after step 1; checkpoint saved. Resume with: gspo train "
            f"--resume {run_dir}",
            "SIGINT",
        )

    monkeypatch.setattr(trainer, "run", interrupted)
    out = tmp_path / "cmp"
    result = runner.invoke(app, [*compare_args(out), "--set", "train.steps=2", "-q"])
    assert result.exit_code == 130, result.output
    assert "stopped by SIGINT after step 1; checkpoint saved" in result.output
    assert "Resume the comparison with: gspo compare --algos gspo grpo --seeds 0 1" in result.output
    assert f"--out {out}" in result.output.replace("\n", "")


@pytest.mark.parametrize(
    ("args", "algos", "seeds"),
    [
        (["--algos", "grpo", "gspo", "--seeds", "3", "1"], ["grpo", "gspo"], [3, 1]),
        (["--seeds", "2", "--algos", "grpo"], ["grpo"], [2]),
        (["--algos", "gspo", "--algos", "grpo"], ["gspo", "grpo"], [0]),
        ([], ["gspo", "grpo"], [0]),
    ],
)
def test_list_options_take_several_values(
    calls: list[Call], args: list[str], algos: list[str], seeds: list[int]
) -> None:
    """`--algos a b` and `--seeds 0 1` take several values after one flag; defaults otherwise."""
    result = runner.invoke(app, ["compare", *args, "--set", "train.steps=1", "-q"])
    assert result.exit_code == 0, result.output
    assert [c.recipe.algo.mode for c in calls] == [a for a in algos for _ in seeds]
    assert [c.recipe.seed for c in calls] == seeds * len(algos)


def test_list_option_without_value_is_refused(calls: list[Call]) -> None:
    """A bare --algos is an error (exit 2), not silently the default."""
    result = runner.invoke(app, ["compare", "--algos"])
    assert result.exit_code == 2
    assert "--algos" in result.output
    result = runner.invoke(app, ["compare", "--seeds", "--algos", "grpo"])
    assert result.exit_code == 2
    assert calls == []


def test_narrow_terminal_never_cuts_a_number(
    calls: list[Call], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 60 columns headers and spreads wrap, but every figure is shown whole (no '…')."""
    from rich.console import Console

    from gspo_cli.cli import compare_cmd

    monkeypatch.setattr(compare_cmd, "console", Console(width=60, soft_wrap=True))
    out = tmp_path / "cmp"
    result = runner.invoke(app, compare_args(out, "--set", "train.steps=2", "-q"))
    assert result.exit_code == 0, result.output
    table = result.output.split("GSPO / GRPO comparison", 1)[1].split("leads", 1)[0]
    assert "…" not in table, table
    assert "0.002" in table and "0.2" in table, table  # the two clip fractions, whole


def test_run_that_crashed_before_its_first_checkpoint_is_restarted(
    calls: list[Call], tmp_path: Path
) -> None:
    """A run directory holding what a run writes before its first checkpoint (recipe.yaml,
    metrics.jsonl, completions.jsonl) is cleared and trained again, not refused."""
    out = tmp_path / "cmp"
    args = ["compare", "--algos", "gspo", "--seeds", "0", "--out", str(out)]
    args += ["--set", "train.steps=2", "-q"]
    assert runner.invoke(app, args).exit_code == 0
    run = out / "gspo-seed0"
    for child in ("final", "checkpoints"):
        shutil.rmtree(run / child)
    (run / "metrics.jsonl").write_text('{"step": 0, "eval_accuracy": 0.25, "eval_n": 4}\n')
    (run / "completions.jsonl").write_text('{"step": 1, "completion": "12"}\n')
    calls.clear()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "no complete checkpoint, restarting" in result.output, result.output
    assert [(c.run_dir, c.resume_from) for c in calls] == [(run, None)]
    assert not (run / "completions.jsonl").exists(), "the crashed run's files were cleared"


@pytest.mark.parametrize("present", [("grpo", "1"), ("gspo", "0")])
@pytest.mark.parametrize("kind", ["file", "folder"])
def test_list_parse_ignores_the_working_directory(
    calls: list[Call], tmp_path: Path, present: tuple[str, str], kind: str
) -> None:
    """A file or folder named like a value of --algos or --seeds does not change the parse:
    `--algos gspo grpo --seeds 0 1` trains the same four runs."""
    for name in present:
        (tmp_path / name).mkdir() if kind == "folder" else (tmp_path / name).write_text("x")
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "cmp"
    result = runner.invoke(app, [*compare_args(out), "--set", "train.steps=1", "-q"])
    assert result.exit_code == 0, result.output
    assert [(c.recipe.algo.mode, c.recipe.seed) for c in calls] == [
        ("gspo", 0),
        ("gspo", 1),
        ("grpo", 0),
        ("grpo", 1),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "cmp"])


def test_recipe_after_the_list_values_is_the_recipe(calls: list[Call], tmp_path: Path) -> None:
    """`--algos grpo --seeds 3 r.yaml`: the recipe after the values is read as the recipe."""
    Path("r.yaml").write_text("name: mine\ntrain: {steps: 1}\n")
    result = runner.invoke(app, ["compare", "--algos", "grpo", "--seeds", "3", "r.yaml", "-q"])
    assert result.exit_code == 0, result.output
    assert [(c.recipe.name, c.recipe.algo.mode, c.recipe.seed) for c in calls] == [
        ("mine", "grpo", 3)
    ]
