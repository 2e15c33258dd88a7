"""The run directory: its layout, checkpoints, and atomic writes.

```
runs/<name>-<YYYYmmdd-HHMMSS>/
  recipe.yaml                  the resolved recipe (every default spelled out)
  metrics.jsonl                one row per training step and per evaluation
  completions.jsonl            a sample of each step's prompts, completions, rewards, advantages
  checkpoints/step_000400/     Hugging Face model directory (safetensors + tokenizer)
    trainer_state.pt           optimiser, scheduler, RNG states, data position
    optimizer/                 N processes: optimiser shards, one per rank (torch DCP format)
    rng/rank0.pt ...           N processes: each rank's RNG states
    manifest.json              written last: a checkpoint without it is incomplete
  final/                       the last policy, Hugging Face format
```
Every file and directory is written under a temporary name and renamed when complete,
so a crash never leaves a half-written one under its real name. With N processes every
rank writes its own files into rank 0's staging directory; rank 0 writes the manifest
once all have finished, then renames.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from gspo_cli import distributed
from gspo_cli.distributed import SINGLE, Cluster
from gspo_cli.errors import CheckpointError, UserError

RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.jsonl"
COMPLETIONS_FILE = "completions.jsonl"
FINAL_DIR = "final"
CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "trainer_state.pt"
MANIFEST_FILE = "manifest.json"
OPTIMIZER_DIR = "optimizer"
RNG_DIR = "rng"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` via a temporary file in the same directory and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cache_root() -> Path:
    """Where cached artefacts (the tiny model, prepared data) live: $GSPO_CACHE, else
    ~/.cache/gspo."""
    env = os.environ.get("GSPO_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "gspo"


def replace_dir(staging: Path, target: Path) -> None:
    """Move a completed `staging` directory to `target`, replacing any old one; a reader sees
    the old directory or the new one, never a mix (the old one is renamed aside first)."""
    staging.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; give what mkdir() would
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(target)


@contextmanager
def _staged_dir(target: Path) -> Iterator[Path]:
    """Yield a hidden staging directory beside `target`; on success it replaces `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def new_run_dir(out: Path | None, name: str, root: Path = Path("runs")) -> Path:
    """Create the run directory: `out` if given (it must not hold a run), else a fresh
    `root/<name>-<time>`. Fails with a UserError if it cannot be created or written."""
    if out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = root / f"{name}-{stamp}"
        suffix = 1
        while out.exists():
            suffix += 1
            out = root / f"{name}-{stamp}-{suffix}"
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
    with _staged_dir(target) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS_DIR / f"step_{step:06d}"


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
    and renames the directory into place."""
    target = checkpoint_dir(run_dir, step)
    if cluster.is_main:
        with _staged_dir(target) as staging:
            distributed.broadcast(cluster, str(staging))
            write(staging)
            distributed.barrier(cluster)  # every rank's files are complete
            manifest = {
                "step": step,
                "world_size": cluster.world_size,
                "files": sorted(p.name for p in staging.iterdir()),
                "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "torch": torch.__version__,
            }
            (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        for old in complete_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    else:
        write(Path(distributed.broadcast(cluster, "")))
        distributed.barrier(cluster)
    distributed.barrier(cluster)  # nobody reads or prunes before the rename
    return target


def _is_complete(path: Path) -> bool:
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(manifest, dict) and all((path / f).exists() for f in manifest["files"])


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories, oldest first."""
    root = run_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if p.is_dir() and _is_complete(p)]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(run_dir: Path, warn: Callable[[str], None]) -> Path:
    """The newest complete checkpoint of a run; incomplete ones are reported and skipped."""
    if not (run_dir / RECIPE_FILE).is_file():
        raise UserError(
            f"{run_dir} is not a run directory (no {RECIPE_FILE}); give the directory that "
            "`gspo train` created"
        )
    root = run_dir / CHECKPOINTS_DIR
    candidates = sorted(root.iterdir()) if root.is_dir() else []
    for path in candidates:
        if path.is_dir() and not _is_complete(path):
            warn(f"ignoring incomplete checkpoint {path} (interrupted while being written)")
    complete = complete_checkpoints(run_dir)
    if not complete:
        raise CheckpointError(
            f"{run_dir} has no complete checkpoint to resume from; start a new run, or set "
            "train.save_every so that the next run writes checkpoints"
        )
    return complete[-1]


def load_trainer_state(path: Path) -> dict[str, Any]:
    """The trainer state saved in a checkpoint."""
    state: dict[str, Any] = torch.load(path / STATE_FILE, weights_only=False)
    return state


def link_final(checkpoint: Path, run_dir: Path) -> Path:
    """`final/`: the last checkpoint's model files, hard-linked (copied across devices)."""
    target = run_dir / FINAL_DIR
    with _staged_dir(target) as staging:
        for item in checkpoint.iterdir():
            if item.name in (STATE_FILE, MANIFEST_FILE) or not item.is_file():  # model files only
                continue
            try:
                os.link(item, staging / item.name)
            except OSError:
                shutil.copy2(item, staging / item.name)
    return target
