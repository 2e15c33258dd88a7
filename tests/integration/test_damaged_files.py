"""Damaged files are detected, not tripped over: checkpoints (hashes in the manifest), the
cached tiny model (rebuilt), a user's model (one line naming the file), and a crafted
pickle planted in a run directory (refused, nothing runs)."""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from gspo_cli.base import safestate
from gspo_cli.base.storage import file_hashes
from gspo_cli.models import tiny
from gspo_cli.rundir.checkpoint import STATE_FILES, complete_checkpoints, damage
from gspo_cli.rundir.paths import LEGACY_STATE_FILE, MANIFEST_FILE, STATE_STEM

from cli_runs import SMALL, run_cli, train
from refusals import assert_refused


def flip_middle_byte(path: Path) -> None:
    """Damage a file the way a bad disk does: same size, one byte changed mid-way."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def two_checkpoints(warm_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-step run with a checkpoint after each step."""
    run = tmp_path_factory.mktemp("damaged") / "run"
    done = train(run, *SMALL, "train.steps=2", "train.save_every=1", "train.eval_every=0")
    assert done.returncode == 0, done.stderr
    return run


def refuse_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fragment: str, code: int = 1
) -> None:
    """`gspo train --resume run` in tmp_path is refused: one line, nothing changed; exit 2
    when no checkpoint is left to try (the run directory is the input), else 1."""
    monkeypatch.chdir(tmp_path)
    resume = ["train", "--resume", "run", "--quiet", "--set", "train.steps=3"]
    assert_refused(resume, tmp_path, code=code, fragment=fragment)


def copy_run(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(
    two_checkpoints: Path, tmp_path: Path
) -> None:
    """One flipped byte in step 2's weights: its hash no longer matches, the resume warns,
    resumes from step 1 and finishes."""
    run = copy_run(two_checkpoints, tmp_path)
    flip_middle_byte(run / "checkpoints" / "step_000002" / "model.safetensors")
    assert damage(run / "checkpoints" / "step_000002") == (
        "model.safetensors does not match its hash (damaged or changed)"
    )
    resumed = run_cli("train", "--resume", str(run), "--quiet", sets=("train.steps=3",))
    assert resumed.returncode == 0, resumed.stderr
    assert "ignoring damaged checkpoint" in resumed.stderr and "step_000002" in resumed.stderr
    assert f"resuming {run} from step 1" in resumed.stdout + resumed.stderr
    assert [p.name for p in complete_checkpoints(run)] == ["step_000002", "step_000003"]
    assert all(damage(p) is None for p in complete_checkpoints(run))


@pytest.mark.slow
def test_every_checkpoint_damaged_is_one_line(
    two_checkpoints: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = copy_run(two_checkpoints, tmp_path)
    for step in ("step_000001", "step_000002"):
        flip_middle_byte(run / "checkpoints" / step / "trainer_state.safetensors")
    fragment = "has no intact checkpoint to resume from (all 2 are damaged"
    refuse_resume(tmp_path, monkeypatch, fragment, code=2)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


@pytest.mark.slow
def test_a_planted_pickle_in_a_run_directory_runs_nothing(
    two_checkpoints: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The newest checkpoint's trainer state replaced by a crafted `trainer_state.pt` (the
    old format) with a manifest that lists it: --resume refuses in one line, exit 1, and
    the payload never runs."""
    run = copy_run(two_checkpoints, tmp_path)
    checkpoint = run / "checkpoints" / "step_000002"
    for name in STATE_FILES:
        (checkpoint / name).unlink()
    marker = tmp_path / "pwned"
    state = {"step": 2, "prompts_used": 8, "payload": _Payload(marker)}
    (checkpoint / LEGACY_STATE_FILE).write_bytes(pickle.dumps(state, protocol=2))
    listed = sorted(p.name for p in checkpoint.iterdir() if p.name != MANIFEST_FILE)
    (checkpoint / MANIFEST_FILE).write_text(json.dumps({"step": 2, "files": listed}))
    refuse_resume(tmp_path, monkeypatch, "nothing from it was run")
    assert not marker.exists(), "the planted pickle ran"


def _rehash(checkpoint: Path) -> None:
    """Rewrite the manifest's hashes, as a tamperer would, so only the content can tell."""
    manifest = json.loads((checkpoint / MANIFEST_FILE).read_text())
    manifest["files"] = file_hashes(checkpoint)
    manifest["files"].pop(MANIFEST_FILE, None)
    (checkpoint / MANIFEST_FILE).write_text(json.dumps(manifest))


def _edit_state(checkpoint: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    stem = checkpoint / STATE_STEM
    state = safestate.load_state(stem)
    safestate.save_state(edit(state), stem)


def _shrink_moment(state: dict[str, Any]) -> dict[str, Any]:
    state["optimizer"]["state"][0]["exp_avg"] = torch.zeros(3)
    return state


TAMPERED = {
    "state is a list": (lambda state: [1, 2], "is not a gspo trainer state"),
    "no scheduler": (
        lambda state: {k: v for k, v in state.items() if k != "scheduler"},
        "does not fit this model and optimiser (KeyError",
    ),
    "moment of the wrong shape": (_shrink_moment, "exp_avg has shape [3]"),
    "no optimiser state": (
        lambda state: state | {"optimizer": {"state": {}}},
        "does not fit this model and optimiser",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_a_tampered_trainer_state_is_one_line(
    case: str, two_checkpoints: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trainer state edited and re-hashed (so it verifies) but not what gspo writes: the
    resume stops in one line, exit 1, before any step."""
    edit, fragment = TAMPERED[case]
    run = copy_run(two_checkpoints, tmp_path)
    checkpoint = run / "checkpoints" / "step_000002"
    _edit_state(checkpoint, edit)
    _rehash(checkpoint)
    refuse_resume(tmp_path, monkeypatch, fragment)


@pytest.mark.slow
def test_eval_of_a_damaged_checkpoint_names_the_file(
    two_checkpoints: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = copy_run(two_checkpoints, tmp_path)
    flip_middle_byte(run / "checkpoints" / "step_000001" / "model.safetensors")
    monkeypatch.chdir(tmp_path)
    assert_refused(
        ["eval", "run/checkpoints/step_000001", "--limit", "4"],
        tmp_path,
        code=2,
        fragment="damaged checkpoint, model.safetensors does not match its hash",
    )


@pytest.mark.parametrize("damage_kind", ["truncated", "garbled header", "bad config"])
def test_a_damaged_user_model_is_one_line_naming_the_file(
    damage_kind: str, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    weights = model / "model.safetensors"
    if damage_kind == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage_kind == "garbled header":
        weights.write_bytes(b"\xff" * 16 + weights.read_bytes()[16:])
    else:
        (model / "config.json").write_text('{"model_type": "qwen3", ')
    damaged = "config.json" if damage_kind == "bad config" else "model.safetensors"
    monkeypatch.chdir(tmp_path)
    assert_refused(
        ["eval", "model", "--limit", "4"],
        tmp_path,
        code=2,
        fragment=f"{damaged} is damaged",
    )


def test_a_damaged_tiny_model_cache_is_rebuilt(
    warm_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flipped byte in the cached weights, or a cache from before hashes were written:
    the next use says why and rebuilds it (the warm start is stubbed here for speed)."""
    monkeypatch.setenv("GSPO_CACHE", str(tmp_path / "cache"))
    cached = tiny.tiny_model_dir()
    shutil.copytree(warm_tiny, cached)
    assert tiny.cache_problem(cached) is None
    monkeypatch.setattr(tiny, "warm_start", lambda model, tokenizer, target: (0, 0.0))
    said: list[str] = []

    flip_middle_byte(cached / "model.safetensors")
    assert tiny.ensure_tiny_model(said.append) == cached
    assert said == [
        f"The cached tiny-qwen3 model in {cached} is damaged (model.safetensors does not match "
        "its hash (damaged or changed)): rebuilding it (about a minute)"
    ]
    assert tiny.cache_problem(cached) is None
    assert (cached / "warm_start.txt").read_text() == "steps=0 validation_accuracy=0.0000\n"

    (cached / tiny.HASHES_FILE).unlink()  # as gspo 0.1 left it
    said.clear()
    tiny.ensure_tiny_model(said.append)
    assert "is incomplete: rebuilding it" in said[0] and tiny.cache_problem(cached) is None
    assert [p.name for p in cached.parent.iterdir()] == [cached.name], "staging left behind"
