"""End to end: the real `gspo compare` on the embedded tiny default, a few steps per run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gspo_cli.rundir.metrics import read_metrics

from cli_runs import SMALL, run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_compare_trains_both_algorithms_then_reuses_them(warm_tiny: Path, tmp_path: Path) -> None:
    """gspo and grpo each train 3 steps from the same model and prompts; the report, the
    plots and the table appear; a second call reuses both runs without training."""
    out = tmp_path / "cmp"
    args = ("compare", "--algos", "gspo", "grpo", "--quiet", "--out", str(out))
    result = run_cli(*args, sets=SMALL)
    assert result.returncode == 0, result.stdout + result.stderr

    rows = {
        algo: read_metrics(out / f"{algo}-seed0" / "metrics.jsonl") for algo in ("gspo", "grpo")
    }
    for algo, got in rows.items():
        assert [r["step"] for r in got if "reward_mean" in r] == [1, 2, 3], algo
    first = {
        algo: next(r for r in got if r["step"] == 1 and "reward_mean" in r)
        for algo, got in rows.items()
    }
    # Same seed, same initial model, same prompts: the first rollout (sampled before any update)
    # is identical, so its rewards and lengths are too; the evaluation before training as well.
    for key in ("reward_mean", "reward_std", "completion_len_mean", "completion_tokens"):
        assert first["gspo"][key] == first["grpo"][key], key
    assert rows["gspo"][0]["eval_accuracy"] == rows["grpo"][0]["eval_accuracy"]
    report = (out / "report.md").read_text()
    assert "| gspo | 0 |" in report and "| grpo | 0 |" in report, report
    assert (out / "summary.png").read_bytes()[:8] == PNG_MAGIC
    assert "GSPO / GRPO comparison" in result.stdout, result.stdout  # the table
    assert "final eval accuracy" in result.stdout and "clip fraction" in result.stdout

    started = time.perf_counter()
    again = run_cli(*args, sets=SMALL)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("already finished, reused") == 2, again.stdout
    assert time.perf_counter() - started < 30, "reusing finished runs trains nothing"
