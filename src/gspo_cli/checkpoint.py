"""The run directory: its layout and atomic writes of text files and model directories.

```
runs/<name>-<YYYYmmdd-HHMMSS>/
  recipe.yaml          the resolved recipe (every default spelled out)
  metrics.jsonl        one row per training step and per evaluation
  checkpoints/step_000400/   Hugging Face model directory (safetensors + tokenizer)
  final/               the last policy, same format
```
Every file and directory is written under a temporary name and renamed when complete,
so a crash never leaves a half-written one under its real name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from gspo_cli.errors import UserError

RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.jsonl"
FINAL_DIR = "final"
CHECKPOINTS_DIR = "checkpoints"


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
            f"{out} already holds a run (it has {METRICS_FILE}); choose a new --out directory"
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
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS_DIR / f"step_{step:06d}"
