"""The run directory: its layout, checkpoints, and how they are verified.

```
runs/<name>-<YYYYmmdd-HHMMSS>/
  recipe.yaml                  the resolved recipe (every default spelled out)
  metrics.jsonl                one row per training step and per evaluation
  completions.jsonl            a sample of each step's prompts, completions, rewards, advantages
  checkpoints/step_000400/     Hugging Face model directory (safetensors + tokenizer)
    trainer_state.json         scheduler, data position, optimiser and RNG layout (JSON)
    trainer_state.safetensors  optimiser and RNG tensors
    optimizer/rank0.* ...      N processes: each rank's optimiser shard (same two formats)
    rng/rank0.* ...            N processes: each rank's RNG states
    manifest.json              written last: every file's sha256; without it, incomplete
  final/                       the last policy, Hugging Face format
    adapter/                   LoRA: the adapter (the model beside it is merged)
```
With LoRA (`model.lora`) a checkpoint holds the adapter in PEFT's format
(adapter_config.json + adapter_model.safetensors) instead of the model.
Nothing in a run directory can run code when read: weights and tensors are safetensors,
the rest JSON (`safestate`). A checkpoint is written in a hidden staging directory and
renamed when complete, so a crash or a full disk never leaves a half-written one under its
real name; resuming verifies every file against the manifest's hashes and falls back to
the newest intact checkpoint. With N processes every rank writes its own files into rank
0's staging directory; rank 0 writes the manifest once all have finished, then renames.
Which checkpoints are complete or intact is read from the manifests by `manifest`, which
needs no torch.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from gspo_cli.base import distributed, safestate
from gspo_cli.base.distributed import SINGLE, Cluster
from gspo_cli.base.errors import CheckpointError, StorageError, UserError
from gspo_cli.base.storage import (
    file_hashes,
    staged_dir,
    staging_leftovers,
    writing,
)
from gspo_cli.base.storage import write_text_atomic as write_text_atomic  # re-exported
from gspo_cli.rundir.manifest import complete_checkpoints as complete_checkpoints  # re-exported
from gspo_cli.rundir.manifest import damage as damage  # re-exported
from gspo_cli.rundir.manifest import is_complete
from gspo_cli.rundir.paths import (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    FINAL_DIR,
    LEGACY_STATE_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    RECIPE_FILE,
    RUNS_ROOT,
    STATE_STEM,
    checkpoint_dir,
    fresh_dir,
)

STATE_FILES = {STATE_STEM + safestate.JSON_SUFFIX, STATE_STEM + safestate.TENSORS_SUFFIX}


def new_run_dir(out: Path | None, name: str, root: Path = RUNS_ROOT) -> Path:
    """Create the run directory: `out` if given (it must not hold a run), else a fresh
    `root/<name>-<time>`. Fails with a UserError if it cannot be created or written."""
    if out is None:
        out = fresh_dir(root, name)
    if (out / METRICS_FILE).exists():
        raise UserError(
            f"{out} already holds a run (it has {METRICS_FILE}); choose a new --out directory, "
            f"or continue it with --resume {out}"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except OSError as exc:
        raise UserError(
            f"cannot write the run directory {out}: {exc.strerror}; pick a writable --out"
        ) from None
    return out


def save_model_dir(model: Any, tokenizer: Any, target: Path) -> None:
    """Save a Hugging Face model directory (safetensors + tokenizer) atomically at `target`."""
    with staged_dir(target, "the model") as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)


def save_checkpoint(
    run_dir: Path,
    step: int,
    write: Callable[[Path], None],
    keep_last: int,
    cluster: Cluster = SINGLE,
) -> Path:
    """Write a complete checkpoint atomically, then delete all but the newest `keep_last`
    complete checkpoints. `write(directory)` runs on every rank and writes that rank's files
    (collectives inside it are fine: every rank calls it once); rank 0 then adds the manifest
    with every file's hash and renames the directory into place.

    A failed write on any rank (a full disk) fails every rank, with the staging directory
    removed and the previous checkpoints untouched: no rank waits for another forever."""
    target, what = checkpoint_dir(run_dir, step), f"checkpoint step {step}"
    error: Exception | None = None
    if cluster.is_main:
        announced = False
        try:
            needed = _newest_size(run_dir)
            with staged_dir(target, what, needed) as staging:
                distributed.broadcast(cluster, str(staging))
                announced = True
                _write_together(write, staging, what, target, cluster)
                manifest = {
                    "step": step,
                    "world_size": cluster.world_size,
                    "files": file_hashes(staging),
                    "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "torch": torch.__version__,
                }
                (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), "utf-8")
        except Exception as exc:
            error = exc
            if not announced:
                distributed.broadcast(cluster, "")  # the others must not wait to write
    else:
        shared = distributed.broadcast(cluster, "")
        try:
            if not shared:
                raise StorageError(f"{what}: rank 0 could not start it (see its message)")
            _write_together(write, Path(shared), what, target, cluster)
        except Exception as exc:
            error = exc
    if distributed.any_rank(cluster, error is not None):
        raise error or StorageError(f"{what} failed on another process (see its message)")
    if cluster.is_main:
        for old in complete_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    distributed.barrier(cluster)  # nobody reads or prunes before the rename
    return target


def _write_together(
    write: Callable[[Path], None], staging: Path, what: str, target: Path, cluster: Cluster
) -> None:
    """`write(staging)` on every rank; if it failed on any rank, it fails on all (a full disk
    as a StorageError line on the rank it happened on)."""
    failure: Exception | None = None
    try:
        with writing(what, target):
            write(staging)
    except Exception as exc:
        failure = exc
    if distributed.any_rank(cluster, failure is not None):
        raise failure or StorageError(f"{what} failed on another process (see its message)")


def _newest_size(run_dir: Path) -> int | None:
    """Bytes of the newest complete checkpoint (about what the next one needs), if any."""
    complete = complete_checkpoints(run_dir)
    if not complete:
        return None
    return sum(p.stat().st_size for p in complete[-1].rglob("*") if p.is_file())


def latest_checkpoint(run_dir: Path, warn: Callable[[str], None]) -> Path:
    """The newest intact checkpoint of a run. Incomplete ones are reported and skipped,
    staging directories left by a killed write are removed, and a checkpoint whose files
    do not match their hashes is reported and the next older one tried."""
    if not (run_dir / RECIPE_FILE).is_file():
        raise UserError(
            f"{run_dir} is not a run directory (no {RECIPE_FILE}); give the directory that "
            "`gspo train` created"
        )
    root = run_dir / CHECKPOINTS_DIR
    for leftover in staging_leftovers(root, "step_"):
        warn(f"removing {leftover.name}, a checkpoint interrupted while being written")
        shutil.rmtree(leftover, ignore_errors=True)
    for path in sorted(root.glob("step_*")) if root.is_dir() else []:
        if path.is_dir() and not is_complete(path):
            warn(f"ignoring incomplete checkpoint {path} (interrupted while being written)")
    complete = complete_checkpoints(run_dir)
    for path in reversed(complete):
        problem = damage(path)
        if problem is None:
            return path
        warn(f"ignoring damaged checkpoint {path}: {problem}; trying an older one")
    if complete:
        raise CheckpointError(
            f"{run_dir} has no intact checkpoint to resume from (all {len(complete)} are "
            "damaged, see the warnings); start a new run"
        )
    raise CheckpointError(
        f"{run_dir} has no complete checkpoint to resume from; start a new run, or set "
        "train.save_every so that the next run writes checkpoints"
    )


def load_trainer_state(path: Path) -> dict[str, Any]:
    """The trainer state saved in a checkpoint, read without running any code from it:
    JSON + safetensors, or an old checkpoint's pickle read with `weights_only=True` (plain
    types and tensors only)."""
    try:
        if safestate.exists(path / STATE_STEM):
            state = safestate.load_state(path / STATE_STEM)
        elif (path / LEGACY_STATE_FILE).is_file():
            state = torch.load(path / LEGACY_STATE_FILE, weights_only=True)
        else:
            raise CheckpointError(f"{path} has no trainer state; resume from another checkpoint")
    except CheckpointError:
        raise
    except Exception as exc:  # a damaged file, or a pickle holding more than plain data
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot read the trainer state in {path} ({first[:200]}); it is damaged or "
            "not a gspo checkpoint, and nothing from it was run; resume from another checkpoint"
        ) from None
    if not isinstance(state, dict) or not {"step", "prompts_used"} <= state.keys():
        raise CheckpointError(f"{path}: the trainer state is not a gspo trainer state")
    return state


def link_final(
    checkpoint: Path, run_dir: Path, merge: Callable[[Path, Path], None] | None = None
) -> Path:
    """`final/`: the last checkpoint's model files, hard-linked (copied across devices).
    With LoRA (`merge` given) the checkpoint's adapter files go to `final/adapter/` and
    `merge(adapter_dir, final_staging)` writes the merged model beside them."""
    target = run_dir / FINAL_DIR
    skip = {*STATE_FILES, LEGACY_STATE_FILE, MANIFEST_FILE}
    with staged_dir(target, "the final model") as staging:
        files = staging / ADAPTER_DIR if merge is not None else staging
        files.mkdir(exist_ok=True)
        for item in checkpoint.iterdir():
            if item.name in skip or not item.is_file():  # model files only
                continue
            try:
                os.link(item, files / item.name)
            except OSError:
                shutil.copy2(item, files / item.name)
        if merge is not None:
            merge(files, staging)
    return target
