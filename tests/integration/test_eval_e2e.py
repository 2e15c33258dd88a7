"""End to end: `gspo train` a few tiny steps, then `gspo eval` the run directory."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gspo_cli.commands.evaluate import pass_at_k
from gspo_cli.rundir.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]


def gspo(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run(
        [sys.executable, "-m", "gspo_cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def documented_eval_keys() -> set[str]:
    """The top-level eval.json keys listed in the README's table."""
    text = (REPO / "README.md").read_text()
    table = text.split("| `eval.json` key |", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| (`[^|]+`) \|", table, re.M)
    return {key for row in rows for key in re.findall(r"`(\w+)`", row)}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-step run of the tiny default with 32 held-out examples per evaluation (the first
    run in a session also builds and caches the tiny model)."""
    out = tmp_path_factory.mktemp("eval-e2e") / "run"
    sets = [
        "train.steps=3",
        "train.eval_every=0",
        "rollout.prompts_per_step=4",
        "rollout.group_size=4",
        "algo.minibatches=2",
        "data.eval_size=32",
        "optim.lr=1e-4",
    ]
    args = ["train", "--quiet", "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    result = gspo(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.mark.slow
def test_eval_of_a_run_matches_the_trainers_last_evaluation(tiny_run: Path) -> None:
    """`gspo eval RUN_DIR` reports exactly the last eval_accuracy of metrics.jsonl, and its
    pass@k agrees with the estimator applied to samples.jsonl."""
    result = gspo("eval", str(tiny_run), "--samples", "4", "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr

    last = [r for r in read_metrics(tiny_run / "metrics.jsonl") if "eval_accuracy" in r][-1]
    report = json.loads((tiny_run / "eval.json").read_text())
    assert report["scores"]["greedy_pass@1"] == last["eval_accuracy"], (report, last)
    assert report["counts"]["examples"] == last["eval_n"] == 32
    assert report["target"] == "run" and report["model"] == str(tiny_run / "final")
    assert set(report) == documented_eval_keys(), set(report) ^ documented_eval_keys()
    assert set(report["scores"]) == {"greedy_pass@1", "pass@1", "pass@2", "pass@4", "maj@4"}

    records = [json.loads(line) for line in (tiny_run / "samples.jsonl").open()]
    assert len(records) == 32 and all(len(r["samples"]) == 4 for r in records)
    assert {"index", "prompt", "reference", "greedy", "samples", "majority"} <= set(records[0])
    assert set(records[0]["greedy"]) == {"completion", "extracted", "reward", "correct"}
    for k in (1, 2, 4):
        expected = sum(pass_at_k(4, sum(s["correct"] for s in r["samples"]), k) for r in records)
        assert report["scores"][f"pass@{k}"] == pytest.approx(expected / 32, abs=1e-12)
    greedy_hits = sum(r["greedy"]["correct"] for r in records)
    assert greedy_hits / 32 == last["eval_accuracy"]
    assert "greedy_pass@1" in result.stdout


@pytest.mark.slow
def test_eval_limit_writes_to_out(tiny_run: Path, tmp_path: Path) -> None:
    """--limit evaluates the first N examples; --out moves eval.json and samples.jsonl (run
    in-process, to save a start-up)."""
    from typer.testing import CliRunner

    from gspo_cli.cli import app

    out = tmp_path / "elsewhere"
    result = CliRunner().invoke(app, ["eval", str(tiny_run), "--limit", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    assert report["counts"]["examples"] == 5 and report["settings"]["limit"] == 5
    assert len((out / "samples.jsonl").read_text().splitlines()) == 5
