"""Checkpoint manifests read without torch: which checkpoints are complete, which intact.

A checkpoint's `manifest.json` is written last (`checkpoint.save_checkpoint`), so a checkpoint
without one, or missing a file it lists, is incomplete. Reading them needs only JSON and file
hashes, so `gspo compare` and the interrupt messages (`outputs`) can ask about checkpoints
without loading torch; writing and resuming stay in `checkpoint`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gspo_cli.base.storage import hash_mismatch
from gspo_cli.rundir.paths import CHECKPOINTS_DIR, MANIFEST_FILE


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of the checkpoint at `path`, or None when it is missing or unreadable."""
    try:
        manifest: dict[str, Any] = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict | list):  # a list: gspo 0.1's manifests, without hashes
        return None
    return manifest


def is_complete(path: Path) -> bool:
    """The manifest is there and every file it lists exists (cheap: nothing is hashed)."""
    manifest = read_manifest(path)
    return manifest is not None and all((path / f).exists() for f in manifest["files"])


def damage(path: Path) -> str | None:
    """What is wrong with a checkpoint's files, or None when each matches its hash."""
    manifest = read_manifest(path)
    if manifest is None:
        return f"no readable {MANIFEST_FILE}"
    files = manifest["files"]
    if isinstance(files, list):  # an old manifest: existence is all it can tell
        missing = [f for f in files if not (path / f).exists()]
        return f"{missing[0]} is missing" if missing else None
    return hash_mismatch(path, files)


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories, oldest first."""
    root = run_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if p.is_dir() and is_complete(p)]
    return sorted(found, key=lambda p: p.name)
