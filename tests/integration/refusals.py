"""The bad-input suite's one check: a refused command exits with its code, says what is
wrong in one line without a traceback, and leaves nothing behind.

Each `test_bad_input*.py` file holds a table of cases (arguments, files to set up, the
expected exit code and a fragment of the message) and calls `assert_refused` per case.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from typer.testing import CliRunner

from gspo_cli.cli import app

runner = CliRunner()


def tree(root: Path) -> dict[str, int]:
    """Every path under `root` (relative) with its size (-1 for a directory)."""
    return {
        str(p.relative_to(root)): (-1 if p.is_dir() else p.stat().st_size)
        for p in sorted(root.rglob("*"))
    }


def message_lines(output: str) -> list[str]:
    """The lines of the final message: from the first `error:`/`interrupted:`/`stopped:`."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(("error:", "interrupted:", "stopped:")):
            return lines[i:]
    return []


def assert_refused(
    args: Sequence[str],
    cwd: Path,
    *,
    code: int,
    fragment: str,
    watch: Sequence[Path] = (),
    may_create: Sequence[str] = (),
) -> str:
    """Run `gspo ARGS` in `cwd` and check the refusal; returns the output.

    Nothing under `cwd` (and the `watch` folders) may be created, changed or removed,
    except the relative paths in `may_create` (e.g. a cache the command legitimately fills).
    """
    roots = [cwd, *watch]
    before = [tree(r) for r in roots]
    result = runner.invoke(app, list(args))
    output = result.output
    assert result.exit_code == code, f"exit {result.exit_code}, wanted {code}:\n{output}"
    assert "Traceback" not in output, output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    message = message_lines(output)
    assert len(message) == 1, f"wanted a one-line message, got:\n{output}"
    assert fragment in message[0], f"{fragment!r} not in:\n{output}"
    for root, old in zip(roots, before, strict=True):
        new = tree(root)
        created = {k for k in new.keys() - old.keys() if not k.startswith(tuple(may_create))}
        assert not created, f"left behind under {root}: {sorted(created)}"
        changed = [k for k in old if new.get(k) != old[k]]
        assert not changed, f"changed or removed under {root}: {changed}"
    return output
