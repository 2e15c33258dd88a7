"""End to end: the real `gspo train` on the embedded tiny default, a few steps."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from gspo_cli.recipe import load_recipe
from gspo_cli.rundir.metrics import read_metrics

from cli_runs import SMALL, train, without_timing

REPO = Path(__file__).resolve().parents[2]


def documented_keys(kind: str) -> set[str]:
    """Keys listed in the README's metrics table whose 'row' column is `kind` or `both`."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    return {
        m[0]
        for m in re.findall(r"^\| `([\w/]+)` \| (\w+) \|", section, re.M)
        if m[1] in (kind, "both")
    }


@pytest.mark.slow
def test_warm_start_lands_in_the_documented_range(warm_tiny: Path) -> None:
    """The warm start stops near 0.25 validation accuracy, leaving room for RL to improve."""
    note = (warm_tiny / "warm_start.txt").read_text()
    accuracy = float(note.split("validation_accuracy=")[1])
    assert 0.25 <= accuracy <= 0.40, note


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["gspo", "grpo", "gspo_token"])
def test_train_writes_documented_metrics_and_updates_every_parameter(
    warm_tiny: Path, tmp_path: Path, mode: str
) -> None:
    """A 3-step run writes the documented metrics and changes every trainable parameter."""
    out = tmp_path / "run"
    result = train(out, f"algo.mode={mode}", *SMALL)
    assert result.returncode == 0, result.stdout + result.stderr

    rows = read_metrics(out / "metrics.jsonl")
    train_rows = [r for r in rows if "eval_accuracy" not in r]
    eval_rows = [r for r in rows if "eval_accuracy" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    assert [r["step"] for r in eval_rows] == [0, 2, 3]
    expected_train, expected_eval = documented_keys("train"), documented_keys("eval")
    assert len(expected_train) >= 12 and "zero_std_frac" in expected_train
    for row in train_rows:
        assert set(row) == expected_train, set(row) ^ expected_train
    for row in eval_rows:
        assert set(row) == expected_eval, set(row) ^ expected_eval
        assert 0.0 <= row["eval_accuracy"] <= 1.0

    recipe = load_recipe(out / "recipe.yaml")
    assert recipe.algo.mode == mode and recipe.train.steps == 3

    start = AutoModelForCausalLM.from_pretrained(warm_tiny)
    final = AutoModelForCausalLM.from_pretrained(out / "final")
    assert (out / "final" / "model.safetensors").is_file()
    assert (out / "checkpoints" / "step_000002" / "model.safetensors").is_file()
    before = dict(start.named_parameters())
    unchanged = [
        name
        for name, p in final.named_parameters()
        if p.requires_grad and torch.equal(p, before[name])
    ]
    assert not unchanged, f"parameters that did not change: {unchanged}"


@pytest.mark.slow
def test_same_seed_same_metrics(warm_tiny: Path, tmp_path: Path) -> None:
    """Two CPU runs with the same seed write the same numbers (timings aside)."""
    runs = []
    for name in ("a", "b"):
        result = train(tmp_path / name, *SMALL)
        assert result.returncode == 0, result.stderr
        runs.append(without_timing(read_metrics(tmp_path / name / "metrics.jsonl")))
    assert runs[0] == runs[1]
