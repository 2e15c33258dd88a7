"""Writing files so that a crash or a full disk never leaves a half-written one.

Every file is written under a temporary name beside its target and renamed when complete
(`write_text_atomic`, `write_file_atomic`); every directory is built in a hidden staging
directory and renamed into place (`staged_dir`). Readers see the old version or the new
one, never a mix.

A write that fails because the disk is full (or quota, read-only, I/O error) ends the
command with one line, `StorageError` (exit 1): what was being written, where, how much
space is free there and, when known, how much was needed. Wrap a write in
`writing(what, where, needed)` to get that line instead of the library's traceback.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from gspo_cli.base.errors import StorageError

# errno values that mean "the storage failed", not "the program is wrong".
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG}
# The same failures as libraries without an errno word them (safetensors: "os error 28").
_STORAGE_WORDS = (
    "No space left",
    "os error 28",
    "StorageFull",
    "Disk quota",
    "os error 122",
    "Input/output error",
    "os error 5)",
    "Read-only file system",
    "file write failed",
)
# Below this much free space, any failed write is taken to be a full disk.
_NEARLY_FULL = 1 << 20  # bytes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _free_bytes(where: Path) -> int | None:
    """Free bytes on the file system holding `where` (its nearest existing parent)."""
    for place in [where, *where.parents]:
        if place.exists():
            try:
                return shutil.disk_usage(place).free
            except OSError:
                return None
    return None


def _human(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def is_storage_failure(exc: BaseException, where: Path) -> bool:
    """Whether `exc`, raised while writing under `where`, is the storage failing."""
    if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
        return True
    if isinstance(exc, OSError | RuntimeError) or type(exc).__name__ == "SafetensorError":
        if any(word in str(exc) for word in _STORAGE_WORDS):
            return True
        free = _free_bytes(where)
        return free is not None and free < _NEARLY_FULL
    return False


def storage_message(what: str, where: Path, exc: BaseException, needed: int | None) -> str:
    """One line: what could not be written where, the space free and needed."""
    cause = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else "write failed"
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EIO):
        return f"cannot write {what} to {where}: {cause.lower()}; write to another place"
    free = _free_bytes(where)
    free_text = f"{_human(free)} free" if free is not None else "free space unknown"
    need_text = f", about {_human(needed)} needed" if needed else ""
    return (
        f"disk full while writing {what} to {where} ({free_text}{need_text}); "
        "free some space or write to another place"
    )


@contextmanager
def writing(what: str, where: Path, needed: int | None = None) -> Iterator[None]:
    """Turn a storage failure inside the block into one `StorageError` line. Nested, the
    outermost block names what failed (a checkpoint, not one of its files)."""
    try:
        yield
    except StorageError as inner:
        if inner.failure is None:
            raise
        size = needed or inner.needed
        raise StorageError(
            storage_message(what, where, inner.failure, size), inner.failure, size
        ) from None
    except Exception as exc:
        if not is_storage_failure(exc, where):
            raise
        raise StorageError(storage_message(what, where, exc, needed), exc, needed) from None


def write_file_atomic(
    path: Path, write: Callable[[Path], None], what: str = "", needed: int | None = None
) -> None:
    """Call `write(tmp)` for a temporary path beside `path`, then rename it to `path`.
    A failure (a full disk included) removes the temporary file and leaves `path` as it was."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with writing(what or path.name, path, needed):
            write(tmp)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str, what: str = "") -> None:
    """Write `text` to `path` via a temporary file in the same directory and a rename."""
    data = text.encode()

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    write_file_atomic(path, write, what, len(data))


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
def staged_dir(target: Path, what: str = "", needed: int | None = None) -> Iterator[Path]:
    """Yield a hidden staging directory beside `target`; on success it replaces `target`.
    On any failure (a full disk: one `StorageError` line) the staging directory is removed
    and `target` is as it was."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with writing(what or target.name, target, needed):
            yield staging
            replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def staging_leftovers(parent: Path, name: str) -> list[Path]:
    """Hidden staging directories of `parent/name*` left by a killed writer."""
    return sorted(p for p in parent.glob(f".{name}*") if p.is_dir()) if parent.is_dir() else []


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, hex."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def file_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory`, keyed by its relative path."""
    return {
        str(p.relative_to(directory)): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def hash_mismatch(directory: Path, hashes: dict[str, str]) -> str | None:
    """The first file under `directory` that is missing or differs from its sha256 in
    `hashes` (relative path → hex), said in words; None when all match."""
    for name, expected in hashes.items():
        file = directory / name
        if not file.is_file():
            return f"{name} is missing"
        if sha256_file(file) != expected:
            return f"{name} does not match its hash (damaged or changed)"
    return None
