"""Resume, interruption and numerical faults on the tiny model."""

from __future__ import annotations

import math
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from gspo_cli import update as updating
from gspo_cli.base.errors import TrainingError
from gspo_cli.commands import train as trainer
from gspo_cli.losses import LossStats
from gspo_cli.recipe import load_recipe
from gspo_cli.rundir.checkpoint import complete_checkpoints, new_run_dir
from gspo_cli.rundir.metrics import read_metrics
from gspo_cli.rundir.paths import MANIFEST_FILE

from cli_runs import SMALL, cli_args, cli_env, run_cli, train, without_timing


def weights(path: Path) -> dict[str, torch.Tensor]:
    return dict(AutoModelForCausalLM.from_pretrained(path).state_dict())


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"weights differ: {different}"


# LoRA: rank 4 on every projection, lr 1e-2 so that 6 steps move the adapter visibly.
LORA = ("model.lora.rank=4", "model.lora.lr=1e-2")


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), LORA], ids=["full", "lora"])
def test_resumed_run_repeats_the_uninterrupted_one(
    warm_tiny: Path, tmp_path: Path, extra: tuple[str, ...]
) -> None:
    """Stop after 3 steps, resume to 6: metrics rows and final weights equal a 6-step run
    (with LoRA: the merged final models and the adapters too)."""
    sets = (*SMALL, *extra, "train.eval_every=3", "train.save_every=3")
    full, part = tmp_path / "full", tmp_path / "part"
    assert train(full, *sets, "train.steps=6").returncode == 0
    assert train(part, *sets, "train.steps=3").returncode == 0
    resumed = run_cli("train", "--resume", str(part), "--quiet", sets=("train.steps=6",))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming with a changed setting: train.steps: 3 -> 6" in resumed.stderr

    rows_full = without_timing(read_metrics(full / "metrics.jsonl"))
    rows_part = without_timing(read_metrics(part / "metrics.jsonl"))
    assert [r["step"] for r in rows_part] == [0, 1, 2, 3, 3, 4, 5, 6, 6]
    assert rows_part == rows_full, "resumed metrics differ from the uninterrupted run"
    assert_same_weights(full / "final", part / "final")
    if extra:
        adapters = [
            load_file(str(d / "final/adapter/adapter_model.safetensors")) for d in (full, part)
        ]
        assert adapters[0].keys() == adapters[1].keys() and adapters[0]
        assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])
        assert any(v.abs().max() > 0 for k, v in adapters[0].items() if "lora_B" in k)


@pytest.mark.slow
def test_sigint_checkpoints_and_resume_completes(warm_tiny: Path, tmp_path: Path) -> None:
    """SIGINT mid-run exits 130 with a checkpoint; resuming ends like an uninterrupted run."""
    sets = (*SMALL, "train.steps=25", "train.eval_every=0", "train.save_every=0")
    run = tmp_path / "run"
    proc = subprocess.Popen(
        cli_args("train", "--quiet", "--out", str(run), sets=sets),
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        metrics = run / "metrics.jsonl"
        if metrics.exists() and any(r["step"] >= 2 for r in read_metrics(metrics)):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert f"Resume with: gspo train --resume {run}" in stderr
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(read_metrics(run / "metrics.jsonl")) == len(lines), "a torn metrics line"
    stopped_at = max(r["step"] for r in read_metrics(run / "metrics.jsonl"))
    assert 2 <= stopped_at < 25
    assert [p.name for p in complete_checkpoints(run)] == [f"step_{stopped_at:06d}"]

    resumed = run_cli("train", "--resume", str(run), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    reference = tmp_path / "reference"
    assert train(reference, *sets).returncode == 0
    assert without_timing(read_metrics(run / "metrics.jsonl")) == without_timing(
        read_metrics(reference / "metrics.jsonl")
    )
    assert_same_weights(run / "final", reference / "final")


@pytest.mark.slow
def test_incomplete_checkpoint_is_ignored_with_a_warning(warm_tiny: Path, tmp_path: Path) -> None:
    """A checkpoint without its manifest (killed mid-write) is skipped, never loaded."""
    run = tmp_path / "run"
    assert train(run, *SMALL, "train.save_every=1", "train.keep_last=5").returncode == 0
    newest = complete_checkpoints(run)[-1]
    assert newest.name == "step_000003"
    (newest / MANIFEST_FILE).unlink()
    resumed = run_cli("train", "--resume", str(run), "--quiet", sets=("train.steps=4",))
    assert resumed.returncode == 0, resumed.stderr
    assert f"ignoring incomplete checkpoint {newest}" in resumed.stderr
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if "eval_accuracy" not in r]
    assert steps == [1, 2, 3, 4], "resume should restart after step 2, the newest complete one"


@pytest.mark.slow
def test_keep_last_bounds_checkpoints(warm_tiny: Path, tmp_path: Path) -> None:
    """With keep_last 2, only the two newest complete checkpoints remain."""
    run = tmp_path / "run"
    assert train(run, *SMALL, "train.save_every=1", "train.keep_last=2").returncode == 0
    assert [p.name for p in complete_checkpoints(run)] == ["step_000002", "step_000003"]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "fragment"),
    [("algo.mode=grpo", "algo.mode: 'gspo' -> 'grpo'"), ("rollout.group_size=2", "group_size")],
)
def test_resume_refuses_breaking_changes(
    warm_tiny: Path, tmp_path: Path, change: str, fragment: str
) -> None:
    """Changing the algorithm or group size on resume is refused, listing the differences."""
    run = tmp_path / "run"
    assert train(run, *SMALL).returncode == 0
    before = (run / "metrics.jsonl").read_text()
    result = run_cli("train", "--resume", str(run), sets=(change, "train.steps=5"))
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr and "cannot change when resuming" in result.stderr
    assert (run / "metrics.jsonl").read_text() == before, "a refused resume must not write"


def test_resume_of_something_that_is_not_a_run(tmp_path: Path) -> None:
    """--resume on a directory without recipe.yaml is a user error."""
    result = run_cli("train", "--resume", str(tmp_path))
    assert result.returncode == 2
    assert "is not a run directory" in result.stderr


# --- numerical faults (in-process, untrained tiny model) --------------------------------


def _nan_on_calls(monkeypatch: pytest.MonkeyPatch, bad: Callable[[int], bool]) -> None:
    """Make the minibatch loss non-finite on the optimiser steps (1-based) where `bad` holds."""
    calls = [0]
    real = updating.accumulate_gradients

    def flaky(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor, LossStats]:
        loss, kl, stats = real(*args, **kwargs)
        calls[0] += 1
        return (loss * math.nan if bad(calls[0]) else loss), kl, stats

    monkeypatch.setattr(updating, "accumulate_gradients", flaky)


def _tiny_recipe(model_dir: Path, *sets: str) -> Any:
    return load_recipe(None, [f"model.name={model_dir}", *SMALL, *sets])


def test_non_finite_loss_skips_the_step_and_counts_it(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NaN losses are skipped and counted; training goes on while under the limit."""
    _nan_on_calls(monkeypatch, lambda call: call == 3)  # step 2's first optimiser step
    run_dir = new_run_dir(tmp_path / "run", "t")
    trainer.run(_tiny_recipe(tiny_model_dir), run_dir, announce=lambda _: None)
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "eval_accuracy" not in r]
    assert [r["skipped_steps"] for r in rows] == [0, 1, 0]
    assert all(r["loss"] is not None for r in rows)  # the mean is over the steps taken


def test_too_many_non_finite_steps_stop_with_the_last_good_checkpoint(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After max_skipped_steps NaNs in a row the run stops naming the step; weights are intact."""
    _nan_on_calls(monkeypatch, lambda call: call > 2)  # step 1 fine, NaN from step 2 on
    run_dir = new_run_dir(tmp_path / "run", "t")
    recipe = _tiny_recipe(tiny_model_dir, "train.save_every=1", "train.max_skipped_steps=3")
    with pytest.raises(TrainingError, match=r"step 3: 4 optimiser steps in a row") as info:
        trainer.run(recipe, run_dir, announce=lambda _: None)
    assert "step_000002" in str(info.value)
    # The step-2 checkpoint holds the weights after step 1: NaN steps never touched them.
    step1, step2 = complete_checkpoints(run_dir)
    assert_same_weights(step1, step2)


def test_stop_request_flags_first_signal_and_aborts_on_second() -> None:
    """The first SIGTERM sets the flag; a second signal raises KeyboardInterrupt."""
    import os

    from gspo_cli.base.interrupt import StopRequest

    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
