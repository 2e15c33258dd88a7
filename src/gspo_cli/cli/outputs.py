"""Output places: checked before any work starts, and left as found when a command fails.

A command that will write a directory (`--out`, a run directory, an eval directory) checks
first that it can: a place that is a file, or lies under a file, or under a directory it
may not write, is a `UserError` before any data or model is touched. When the command fails
after creating directories, `remove_empty` takes back the ones it left empty, so a refused
command leaves nothing behind, not even an empty `runs/`; a training stopped at once by Ctrl-C
says what it left (`abort_message`). No torch: checkpoints are read through `manifest`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from gspo_cli.base.errors import UserError
from gspo_cli.rundir.manifest import complete_checkpoints
from gspo_cli.rundir.paths import FINAL_DIR


def first_missing(path: Path) -> Path | None:
    """The topmost of `path` and its parents that does not exist yet: the first directory a
    `mkdir(parents=True)` of `path` creates (None when `path` exists).

    >>> first_missing(Path("/")) is None, first_missing(Path("/no-such-dir-x/a/b"))
    (True, PosixPath('/no-such-dir-x'))
    """
    missing = None
    for candidate in [path, *path.parents]:
        if candidate.exists() or candidate.is_symlink():
            break
        missing = candidate
    return missing


def check_output_dir(path: Path, what: str, flag: str = "--out", files: Sequence[str] = ()) -> None:
    """Refuse, before any work, a directory that cannot be created or written at `path`:
    an existing file, a file among its parents, a parent this user may not write, or a
    directory in the place of one of the `files` to be written into it."""
    if path.exists() and not path.is_dir():
        raise UserError(
            f"cannot write {what} {path}: it is a file, not a directory; give {flag} a "
            "directory (it is created when missing)"
        )
    existing = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    if not existing.is_dir():
        raise UserError(
            f"cannot write {what} {path}: {existing} is a file, so no directory can be made "
            f"under it; give {flag} a directory in a writable place"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"cannot write {what} {path}: {existing} is not writable by this user; give {flag} "
            "a directory in a writable place"
        )
    blocked = [name for name in files if (path / name).is_dir()]
    if blocked:
        raise UserError(
            f"cannot write {what} {path}: {path / blocked[0]} is a directory; move it away or "
            f"give another {flag}"
        )


def remove_empty(path: Path, created: Path | None) -> None:
    """Remove `path` when it is an empty directory, then its parents up to `created` (the
    topmost directory this command made, see `first_missing`) while they are empty too."""
    chain = [path]
    if created is not None and created in path.parents:
        chain += [p for p in path.parents if p == created or created in p.parents]
    for directory in chain:
        try:
            directory.rmdir()  # only ever an empty directory
        except OSError:
            return


def abort_message(run_dir: Path, nproc: str) -> str:
    """What a Ctrl-C that stopped training at once left: a checkpoint to resume from, or
    nothing (then no directory is named that is about to be removed or holds no checkpoint)."""
    if complete_checkpoints(run_dir):
        return (
            "aborted by an interrupt; the last complete checkpoint is intact. "
            f"Resume with: gspo train --resume {run_dir}{nproc}"
        )
    kept = run_dir.is_dir() and any(run_dir.iterdir())
    where = f" ({run_dir} holds no checkpoint)" if kept else ""
    return (
        f"aborted before the first checkpoint: nothing was saved to resume from{where}; "
        "start the run again"
    )


def full_disk_message(run_dir: Path, nproc: str) -> str:
    """What a run stopped by a full disk still has, and how to go on."""
    kept = complete_checkpoints(run_dir) if run_dir.is_dir() else []
    if not kept:
        return "No checkpoint had been written; start the run again once there is space"
    return (
        f"The last complete checkpoint, {kept[-1].name}, is intact; once there is space, "
        f"resume with: gspo train --resume {run_dir}{nproc}"
    )


def compare_abort_message(out_dir: Path, command: str) -> str:
    """What a Ctrl-C that stopped a comparison at once left: runs to reuse or resume, or
    nothing (then the comparison directory, about to be removed if empty, is not named)."""
    runs = [d for d in out_dir.iterdir() if d.is_dir()] if out_dir.is_dir() else []
    if any(complete_checkpoints(d) or (d / FINAL_DIR).is_dir() for d in runs):
        return f"aborted by an interrupt; resume the comparison with: {command}"
    return (
        "aborted before the first checkpoint: nothing was saved to resume from; start the "
        "comparison again"
    )
