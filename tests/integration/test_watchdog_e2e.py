"""The watchdog and completions.jsonl on real `gspo train` runs of the untrained tiny model."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from gspo_cli.advantages import group_advantages
from gspo_cli.rundir.checkpoint import complete_checkpoints
from gspo_cli.rundir.metrics import read_metrics
from gspo_cli.rundir.paths import MANIFEST_FILE

from cli_runs import SMALL, run_cli, train, without_timing

REPO = Path(__file__).resolve().parents[2]

REWARDS = """
def one(completion, reference):
    return 1.0


def graded(completion, reference):
    return ord(completion[0]) % 3 + 0.1 * int(reference[-1]) if completion else 0.0
"""


def graded(completion: str, reference: str) -> float:
    """The same function as `watchdog_rewards:graded`, for checking logged rewards."""
    return ord(completion[0]) % 3 + 0.1 * int(reference[-1]) if completion else 0.0


@pytest.fixture
def sets(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, ...]:
    """SMALL on the untrained tiny model (no warm start), with the test rewards importable."""
    (tmp_path / "watchdog_rewards.py").write_text(REWARDS)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return (*SMALL, f"model.name={tiny_model_dir}", "train.eval_every=0", "train.save_every=0")


def train_rows(run: Path) -> list[dict[str, Any]]:
    return [r for r in read_metrics(run / "metrics.jsonl") if "eval_accuracy" not in r]


def codes(run: Path) -> list[list[str]]:
    """Warning codes on each training row, in step order."""
    return [[w["code"] for w in r["warnings"]] for r in train_rows(run)]


def documented_completion_keys() -> set[str]:
    """The keys listed in the README's completions.jsonl table."""
    text = (REPO / "README.md").read_text()
    section = text.split("### completions.jsonl", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `(\w+)` \|", section, re.M))


def test_constant_reward_warns_at_step_3_naming_the_cause(
    sets: tuple[str, ...], tmp_path: Path
) -> None:
    """A reward that is always 1.0: no warning at steps 1-2, constant_reward at step 3, once."""
    run = tmp_path / "run"
    result = train(run, *sets, "train.steps=4", "reward=watchdog_rewards:one")
    assert result.returncode == 0, result.stdout + result.stderr
    found = codes(run)
    assert found[:2] == [[], []] and "constant_reward" in found[2], found
    assert "constant_reward" not in found[3], "warned again while the condition held"
    (warning,) = [w for w in train_rows(run)[2]["warnings"] if w["code"] == "constant_reward"]
    assert warning["value"] == 1.0
    out = result.stdout.replace("\n", " ")
    assert "warning: step 3, constant_reward" in out and "reward function returns a constant" in out
    logged = [json.loads(line) for line in (run / "completions.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1] * 8 + [2] * 8 + [3] * 8 + [4] * 8  # default 8
    assert {(r["reward"], r["advantage"]) for r in logged} == {(1.0, 0.0)}


def test_truncation_warns_and_completions_hold_the_batch(
    sets: tuple[str, ...], tmp_path: Path
) -> None:
    """max_new_tokens 1 cuts (almost) every completion: truncation at step 3, naming the key;
    completions.jsonl holds 6 rows a step with the batch's rewards and advantages."""
    run = tmp_path / "run"
    extra = (
        "rollout.max_new_tokens=1",
        "reward=watchdog_rewards:graded",
        "train.log_completions=6",
    )
    result = train(run, *sets, "train.steps=3", *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = train_rows(run)
    assert codes(run) == [[], [], ["truncation"]], codes(run)
    (warning,) = rows[2]["warnings"]
    assert warning["value"] == pytest.approx(sum(r["truncated_frac"] for r in rows) / 3, abs=1e-12)
    assert (
        warning["value"] >= 0.9 and "raise `rollout.max_new_tokens` (now 1)" in warning["message"]
    )
    assert "warning: step 3, truncation" in result.stdout

    logged = [json.loads(line) for line in (run / "completions.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1] * 6 + [2] * 6 + [3] * 6
    for step in (1, 2, 3):
        part = [r for r in logged if r["step"] == step]
        assert [r["group"] for r in part] == [0, 0, 0, 0, 1, 1]
        assert all(set(r) == documented_completion_keys() for r in part)
        for r in part:
            a, b = r["prompt"].rstrip("=").split("+")
            assert r["reference"] == str(int(a) + int(b)), r  # the prompt this row answers
            # rewards are float32 in the batch; the log holds exactly the batch's value
            assert r["reward"] == torch.tensor(graded(r["completion"], r["reference"])).item(), r
            assert len(r["completion"]) <= 1 and r["truncated"] == (len(r["completion"]) == 1)
        first_group = torch.tensor([r["reward"] for r in part[:4]])
        expected, _ = group_advantages(first_group, 4)
        assert [r["advantage"] for r in part[:4]] == pytest.approx(expected.tolist(), abs=1e-6)
        assert len({r["prompt"] for r in part[:4]}) == 1


@pytest.mark.parametrize(
    ("case", "code"),
    [
        (("reward=watchdog_rewards:one",), "constant_reward"),
        (("rollout.max_new_tokens=1", "reward=watchdog_rewards:graded"), "truncation"),
    ],
)
def test_strict_stops_after_the_warning_with_a_checkpoint(
    sets: tuple[str, ...], tmp_path: Path, case: tuple[str, ...], code: str
) -> None:
    """train.strict: the step-3 warning stops a 6-step run with exit 3 and a complete step-3
    checkpoint; the message names the warning, the checkpoint and how to go on."""
    run = tmp_path / "run"
    result = train(run, *sets, "train.steps=6", "train.strict=true", *case)
    assert result.returncode == 3, result.stdout + result.stderr
    err = result.stderr.replace("\n", "")
    assert f"train.strict stopped the run after step 3: {code}:" in err, err
    checkpoint = run / "checkpoints" / "step_000003"
    assert f"Checkpoint: {checkpoint}" in err and f"--resume {run}" in err
    assert "Traceback" not in result.stderr
    assert complete_checkpoints(run) == [checkpoint]
    assert (checkpoint / "model.safetensors").is_file() and (checkpoint / MANIFEST_FILE).is_file()
    assert [r["step"] for r in train_rows(run)] == [1, 2, 3] and not (run / "final").exists()
    assert max(json.loads(x)["step"] for x in (run / "completions.jsonl").open()) == 3


def test_resume_cuts_completions_back_and_replays_the_watchdog(
    sets: tuple[str, ...], tmp_path: Path
) -> None:
    """Resuming a 6-step run from step 3 drops steps 4-6 from completions.jsonl and
    metrics.jsonl and repeats them exactly. The watchdog is rebuilt from the kept rows: the
    step-3 warning is not given again (a fresh watchdog would repeat it at step 6)."""
    every = (*sets, "train.steps=6", "train.save_every=1", "train.keep_last=4")
    full, part = tmp_path / "full", tmp_path / "part"
    assert train(full, *every, "train.log_completions=2").returncode == 0
    assert train(part, *every, "train.log_completions=2").returncode == 0
    for step in (4, 5, 6):  # as if killed while writing them
        (part / "checkpoints" / f"step_{step:06d}" / MANIFEST_FILE).unlink()
    resumed = run_cli("train", "--resume", str(part), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "from step 3" in resumed.stdout

    assert codes(full) == [[], [], ["constant_reward"], [], [], []]  # untrained: rewards all 0
    assert without_timing(read_metrics(part / "metrics.jsonl")) == without_timing(
        read_metrics(full / "metrics.jsonl")
    )
    logged = (part / "completions.jsonl").read_text()
    assert logged == (full / "completions.jsonl").read_text()
    assert [json.loads(x)["step"] for x in logged.splitlines()] == [
        1,
        1,
        2,
        2,
        3,
        3,
        4,
        4,
        5,
        5,
        6,
        6,
    ]


def test_no_completions_file_when_logging_is_off(sets: tuple[str, ...], tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = train(run, *sets, "train.steps=1", "train.log_completions=0")
    assert result.returncode == 0, result.stderr
    assert not (run / "completions.jsonl").exists()
