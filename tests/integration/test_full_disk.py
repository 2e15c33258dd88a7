"""Fault injection: a full disk and a kill in the middle of a checkpoint.

A small tmpfs is mounted as the run's disk where the machine allows it (root, Linux);
without one those tests skip, and the patched-writer tests below cover the same paths.
Each failure must end in one line, exit 1, the last complete checkpoint intact (its files
match their hashes), no staging directory or partial row left, and a resume that finishes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gspo_cli.base.errors import StorageError
from gspo_cli.rundir.checkpoint import complete_checkpoints, damage
from gspo_cli.rundir.metrics import MetricsWriter
from gspo_cli.rundir.paths import MANIFEST_FILE

from cli_runs import SMALL, cli_env, run_cli, train, write_fake_run
from refusals import message_lines

# The tiny default's checkpoint is ~10 MB (weights 3.2 MB + AdamW moments 6.4 MB); 16 MB
# holds the run and one checkpoint, but not a second one beside it.
DISK_MB = 16
FAULT_SETS = (*SMALL, "train.steps=4", "train.save_every=1", "train.keep_last=1")


def _mount(path: Path, megabytes: int, remount: bool = False) -> bool:
    options = f"{'remount,' if remount else ''}size={megabytes}m"
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
    )
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A DISK_MB tmpfs mounted at tmp_path/disk (skipped where mounting is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not sys.platform.startswith("linux") or not _mount(disk, DISK_MB):
        pytest.skip("cannot mount a tmpfs here (needs root on Linux)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(path: Path) -> None:
    """Write zeros to `path` until the disk is full."""
    with path.open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError:
            pass
    with path.open("ab", buffering=0) as handle:  # the last bytes too
        try:
            while True:
                handle.write(b"\0" * 512)
        except OSError:
            pass


def hidden(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*"))


def assert_intact_after_failure(run: Path) -> Path:
    """The last complete checkpoint verifies, nothing half-written is left, metrics parse."""
    kept = complete_checkpoints(run)
    assert kept, f"no complete checkpoint left in {run}"
    assert damage(kept[-1]) is None, damage(kept[-1])
    assert hidden(run) == [], f"left behind: {hidden(run)}"
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line)  # every row whole
    return kept[-1]


@pytest.mark.slow
def test_full_disk_mid_run_keeps_the_last_checkpoint_and_resumes(
    warm_tiny: Path, small_disk: Path
) -> None:
    """The disk fills at the second checkpoint: one line naming it with the space free,
    exit 1, step 1 intact; with space again, --resume finishes all 4 steps."""
    run = small_disk / "run"
    failed = train(run, *FAULT_SETS)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "Traceback" not in failed.stderr, failed.stderr
    message = message_lines(failed.stderr)
    assert len(message) == 1, failed.stderr
    assert "disk full while writing checkpoint step 2" in message[0], message[0]
    assert "MB free" in message[0] and "MB needed" in message[0], message[0]
    assert f"resume with: gspo train --resume {run}" in message[0], message[0]
    assert assert_intact_after_failure(run).name == "step_000001"

    assert _mount(small_disk, 64, remount=True)
    resumed = run_cli("train", "--resume", str(run), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout + resumed.stderr
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 4 and (run / "final" / "model.safetensors").is_file()


def _fake_runs(root: Path) -> list[str]:
    """A finished GSPO run and a finished GRPO run (files only) for `gspo compare`."""
    from gspo_cli.recipe import load_recipe

    runs = []
    for algo in ("gspo", "grpo"):
        recipe = load_recipe(None, [f"algo.mode={algo}", "train.steps=2"])
        run = root / algo
        run.mkdir(parents=True)
        write_fake_run(recipe, run, upto=2)
        runs.append(str(run))
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("command", ["prepare", "eval", "compare"])
def test_full_disk_in_prepare_eval_and_compare_is_one_line(
    command: str, warm_tiny: Path, small_disk: Path, tmp_path: Path
) -> None:
    """A disk with no room left: `prepare` (into the cache), `eval --out` and `compare --out`
    end in one line, exit 1, with no staging directory or partial file left."""
    fill(small_disk / "filler")
    env = {"GSPO_CACHE": str(small_disk / "cache")} if command == "prepare" else {}
    out = small_disk / "out"
    args = {
        "prepare": ["prepare", "--quiet", "--force"],
        "eval": ["eval", str(warm_tiny), "--limit", "8", "--out", str(out)],
        "compare": ["compare", *_fake_runs(tmp_path / "runs"), "--out", str(out)],
    }[command]
    done = subprocess.run(
        [sys.executable, "-m", "gspo_cli", *args],
        capture_output=True,
        text=True,
        env=cli_env() | env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    message = message_lines(done.stderr)
    assert len(message) == 1 and "disk full while writing" in message[0], done.stderr
    assert hidden(small_disk) == [], hidden(small_disk)
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())


# --- patched writers (run everywhere) -------------------------------------------------------


def test_metrics_row_that_does_not_fit_is_cut_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row written only in part before ENOSPC is cut off again: the file keeps its whole
    rows, and the failure is one StorageError line."""
    path = tmp_path / "metrics.jsonl"
    writer = MetricsWriter(path)
    writer.write({"step": 1, "reward": 0.5})
    real_write = writer._file.write
    calls = {"n": 0}

    def half_then_full(data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return int(real_write(data[:7]) or 0)  # part of the row lands
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer._file, "write", half_then_full, raising=False)
    with pytest.raises(StorageError, match=r"disk full while writing a row of metrics\.jsonl"):
        writer.write({"step": 2, "reward": 0.75})
    writer.close()
    assert path.read_text() == '{"step": 1, "reward": 0.5}\n'


def test_checkpoint_write_failure_keeps_the_previous_one(
    warm_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC from safetensors while writing a checkpoint (patched): the staging directory
    is removed, the previous checkpoint verifies, and nothing is pruned."""
    from gspo_cli.rundir.checkpoint import save_checkpoint

    run = tmp_path / "run"
    run.mkdir()

    def write(directory: Path) -> None:
        (directory / "model.safetensors").write_bytes(b"x" * 1000)

    save_checkpoint(run, 1, write, keep_last=1)

    def full(directory: Path) -> None:
        (directory / "model.safetensors").write_bytes(b"x" * 10)
        raise type("SafetensorError", (Exception,), {})(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )

    with pytest.raises(StorageError, match=r"checkpoint step 2 .*about 1\.\d KB needed"):
        save_checkpoint(run, 2, full, keep_last=1)
    assert [p.name for p in complete_checkpoints(run)] == ["step_000001"]
    assert damage(run / "checkpoints" / "step_000001") is None
    assert hidden(run) == []
    manifest = json.loads((run / "checkpoints" / "step_000001" / MANIFEST_FILE).read_text())
    assert set(manifest["files"]) == {"model.safetensors"}


KILL_WORKER = Path(__file__).with_name("kill_worker.py")


@pytest.mark.slow
def test_kill_in_the_middle_of_a_checkpoint_then_resume(warm_tiny: Path, tmp_path: Path) -> None:
    """SIGKILL while step 2's checkpoint is half-written: the resume removes the staging
    directory, resumes from step 1 and finishes."""
    run = tmp_path / "run"
    command = [sys.executable, str(KILL_WORKER), "2", "train", "--quiet", "--out", str(run)]
    for s in FAULT_SETS:
        command += ["--set", s]
    killed = subprocess.run(command, capture_output=True, text=True, env=cli_env(), timeout=300)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    staging = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert staging and staging[0].startswith(".step_000002"), staging
    assert [p.name for p in complete_checkpoints(run)] == ["step_000001"]

    resumed = run_cli("train", "--resume", str(run), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert f"removing {staging[0]}" in resumed.stderr, resumed.stderr
    assert f"resuming {run} from step 1" in resumed.stdout + resumed.stderr
    assert hidden(run) == []
    assert [p.name for p in complete_checkpoints(run)] == ["step_000004"]
