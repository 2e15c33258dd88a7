"""Unit tests for run-directory I/O: metrics.jsonl, atomic text writes, run dirs, model dirs."""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from gspo_cli.base.errors import StorageError, UserError
from gspo_cli.models.tiny import build_model, build_tokenizer
from gspo_cli.rundir.checkpoint import new_run_dir, save_model_dir, write_text_atomic
from gspo_cli.rundir.metrics import MetricsWriter, read_metrics
from gspo_cli.rundir.paths import METRICS_FILE, checkpoint_dir

STAMP_RE = r"\d{8}-\d{6}"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def umask_022() -> Iterator[None]:
    """Run with the common umask 022, restoring the caller's afterwards."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- MetricsWriter / read_metrics ------------------------------------------------------------


def test_metrics_one_json_object_per_line(tmp_path: Path) -> None:
    """Each write is one line that json.loads back to the row."""
    path = tmp_path / METRICS_FILE
    rows: list[dict[str, Any]] = [
        {"step": 1, "loss": 0.5},
        {"step": 2, "loss": -0.25, "mode": "gspo"},
        {"step": 3},
    ]
    with MetricsWriter(path) as writer:
        for row in rows:
            writer.write(row)
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "", "file does not end with a newline"
    assert [json.loads(line) for line in lines[:-1]] == rows, lines


def test_metrics_rows_are_flushed_at_once(tmp_path: Path) -> None:
    """A written row is on disk before the writer is closed."""
    path = tmp_path / METRICS_FILE
    with MetricsWriter(path) as writer:
        writer.write({"step": 1, "reward": 0.75})
        assert read_metrics(path) == [{"step": 1, "reward": 0.75}], path.read_text()


def test_metrics_non_finite_floats_become_null(tmp_path: Path) -> None:
    """NaN and ±inf are written as null; finite values, strings and None are kept."""
    path = tmp_path / METRICS_FILE
    row = {"a": math.nan, "b": math.inf, "c": -math.inf, "d": 1.5, "e": "x", "f": None, "g": 0}
    with MetricsWriter(path) as writer:
        writer.write(row)
    text = path.read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text, text
    expected = {"a": None, "b": None, "c": None, "d": 1.5, "e": "x", "f": None, "g": 0}
    assert json.loads(text) == expected, text


def test_metrics_writer_appends_to_an_existing_file(tmp_path: Path) -> None:
    """A second writer on the same file appends rather than truncating."""
    path = tmp_path / METRICS_FILE
    with MetricsWriter(path) as writer:
        writer.write({"step": 1})
    with MetricsWriter(path) as writer:
        writer.write({"step": 2})
    assert read_metrics(path) == [{"step": 1}, {"step": 2}], path.read_text()


def test_read_metrics_skips_a_torn_last_line(tmp_path: Path) -> None:
    """A partial last line (a crash mid-write by someone else) is dropped, the rest kept."""
    path = tmp_path / METRICS_FILE
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2}\n{"step": 3, "lo', encoding="utf-8")
    assert read_metrics(path) == [{"step": 1, "loss": 0.5}, {"step": 2}], read_metrics(path)


def test_read_metrics_skips_non_object_lines(tmp_path: Path) -> None:
    """Blank lines and JSON values that are not objects are not rows."""
    path = tmp_path / METRICS_FILE
    path.write_text('\n[1, 2]\n{"step": 1}\n3\n', encoding="utf-8")
    assert read_metrics(path) == [{"step": 1}], read_metrics(path)


# --- write_text_atomic -----------------------------------------------------------------------


def test_write_text_atomic_creates_then_replaces(tmp_path: Path) -> None:
    """The file holds exactly the last text written, and nothing else is left in the dir."""
    target = tmp_path / "recipe.yaml"
    write_text_atomic(target, "first: 1\n")
    assert target.read_text(encoding="utf-8") == "first: 1\n"
    write_text_atomic(target, "second: 2\n")
    assert target.read_text(encoding="utf-8") == "second: 2\n", target.read_text()
    assert os.listdir(tmp_path) == ["recipe.yaml"], os.listdir(tmp_path)


def test_write_text_atomic_failed_rename_keeps_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the final rename fails (a full disk), the target is unchanged, the temp file is
    removed and the failure is one StorageError line naming the file and the bytes needed."""
    target = tmp_path / "recipe.yaml"
    target.write_text("old\n", encoding="utf-8")

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StorageError, match=r"disk full while writing recipe.yaml to .*4 bytes"):
        write_text_atomic(target, "new\n")
    assert target.read_text(encoding="utf-8") == "old\n", target.read_text()
    assert os.listdir(tmp_path) == ["recipe.yaml"], os.listdir(tmp_path)


def test_write_text_atomic_failed_write_keeps_old_content(tmp_path: Path) -> None:
    """Text that cannot be encoded fails mid-write without touching the target or leaving junk."""
    target = tmp_path / "recipe.yaml"
    target.write_text("old\n", encoding="utf-8")
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(target, "a: 1\nb: \ud800\n")  # a lone surrogate is not UTF-8
    assert target.read_text(encoding="utf-8") == "old\n", target.read_text()
    assert os.listdir(tmp_path) == ["recipe.yaml"], os.listdir(tmp_path)


def test_write_text_atomic_respects_the_umask(tmp_path: Path, umask_022: None) -> None:
    """The file gets the mode a plain write would give it (0644 under umask 022)."""
    target = tmp_path / "recipe.yaml"
    write_text_atomic(target, "a: 1\n")
    assert _mode(target) == 0o644, oct(_mode(target))


# --- new_run_dir -----------------------------------------------------------------------------


def test_new_run_dir_creates_name_and_stamp_under_root(tmp_path: Path) -> None:
    """Without --out it creates an empty root/<name>-<YYYYmmdd-HHMMSS>."""
    root = tmp_path / "runs"
    run = new_run_dir(None, "addition-gspo", root)
    assert run.parent == root and run.is_dir(), run
    assert re.fullmatch(rf"addition-gspo-{STAMP_RE}", run.name), run.name
    assert list(run.iterdir()) == [], list(run.iterdir())


def test_new_run_dir_never_reuses_a_directory(tmp_path: Path) -> None:
    """Two runs started in the same second get different directories."""
    first = new_run_dir(None, "x", tmp_path)
    second = new_run_dir(None, "x", tmp_path)
    assert first != second, first
    assert re.fullmatch(rf"x-{STAMP_RE}(-\d+)?", second.name), second.name


def test_new_run_dir_accepts_a_fresh_or_empty_out(tmp_path: Path) -> None:
    """An explicit --out is created (with parents) or reused when it holds no run."""
    fresh = tmp_path / "a" / "b"
    assert new_run_dir(fresh, "ignored") == fresh and fresh.is_dir()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert new_run_dir(empty, "ignored") == empty
    assert list(empty.iterdir()) == [], "the write probe was left behind"


def test_new_run_dir_refuses_a_dir_holding_a_run(tmp_path: Path) -> None:
    """An --out with metrics.jsonl is a UserError naming it, and the file is untouched."""
    (tmp_path / METRICS_FILE).write_text('{"step": 1}\n', encoding="utf-8")
    with pytest.raises(UserError) as info:
        new_run_dir(tmp_path, "x")
    assert str(tmp_path) in str(info.value) and METRICS_FILE in str(info.value), info.value
    assert (tmp_path / METRICS_FILE).read_text(encoding="utf-8") == '{"step": 1}\n'


def test_new_run_dir_under_a_regular_file_is_a_user_error(tmp_path: Path) -> None:
    """A location that cannot be a directory is a UserError naming it, not an OSError."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("", encoding="utf-8")
    for out in (blocker / "run", blocker):
        with pytest.raises(UserError) as info:
            new_run_dir(out, "x")
        assert str(out) in str(info.value), info.value
    with pytest.raises(UserError):
        new_run_dir(None, "x", blocker / "runs")


# --- save_model_dir --------------------------------------------------------------------------


def _tiny(seed: int) -> tuple[Any, Any]:
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id, seed)
    return model.eval(), tokenizer


def _logits(model: Any) -> torch.Tensor:
    with torch.no_grad():
        logits: torch.Tensor = model(input_ids=torch.tensor([[6, 10, 39, 7, 8, 43]])).logits
    return logits  # [1, 6, V]


def _hidden_entries(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_save_model_dir_loads_with_from_pretrained(tmp_path: Path) -> None:
    """The saved dir loads with the Auto classes and reproduces the logits exactly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = _tiny(seed=0)
    target = checkpoint_dir(tmp_path, 400)
    save_model_dir(model, tokenizer, target)
    assert target == tmp_path / "checkpoints" / "step_000400"
    assert (target / "model.safetensors").is_file(), sorted(os.listdir(target))
    loaded = AutoModelForCausalLM.from_pretrained(target).eval()
    assert torch.equal(_logits(loaded), _logits(model)), "logits changed through save/load"
    tok = AutoTokenizer.from_pretrained(target)
    assert tok("37+45=")["input_ids"] == [6, 10, 39, 7, 8, 43]
    assert _hidden_entries(target.parent) == [], _hidden_entries(target.parent)


def test_save_model_dir_overwrites_an_existing_target(tmp_path: Path) -> None:
    """Saving over a dir replaces it whole: new weights, old stray files gone, no staging."""
    from transformers import AutoModelForCausalLM

    target = tmp_path / "final"
    save_model_dir(*_tiny(seed=0), target)
    (target / "stale.txt").write_text("from the old save", encoding="utf-8")
    newer, tokenizer = _tiny(seed=1)
    save_model_dir(newer, tokenizer, target)
    assert not (target / "stale.txt").exists(), sorted(os.listdir(target))
    loaded = AutoModelForCausalLM.from_pretrained(target).eval()
    assert torch.equal(_logits(loaded), _logits(newer)), "target still holds the old weights"
    assert _hidden_entries(tmp_path) == [], _hidden_entries(tmp_path)


def test_save_model_dir_failure_keeps_the_old_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If saving fails midway, the previous dir is intact and no staging dir is left."""
    target = tmp_path / "final"
    model, tokenizer = _tiny(seed=0)
    save_model_dir(model, tokenizer, target)
    before = sorted(os.listdir(target))

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tokenizer, "save_pretrained", broken)
    with pytest.raises(StorageError, match=r"disk full while writing the model to .*final"):
        save_model_dir(model, tokenizer, target)
    assert sorted(os.listdir(target)) == before, sorted(os.listdir(target))
    assert _hidden_entries(tmp_path) == [], _hidden_entries(tmp_path)


def test_save_model_dir_respects_the_umask(tmp_path: Path, umask_022: None) -> None:
    """The model dir gets the mode a plain mkdir would give it (0755 under umask 022)."""
    target = tmp_path / "final"
    save_model_dir(*_tiny(seed=0), target)
    assert _mode(target) == 0o755, oct(_mode(target))
