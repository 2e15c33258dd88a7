"""`metrics.jsonl`: one JSON object per line, written in one place and read back.

Training rows carry `step` and the per-step figures; evaluation rows carry `step` and
`eval_accuracy`. Each row is flushed whole; a row that cannot be written whole (a full
disk) is cut off again, so the file never ends in a partial line written by us. The
README documents every key.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from gspo_cli.base.storage import writing

Row = dict[str, Any]


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become null rather than invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsWriter:
    """Appends rows to a JSONL file, one unbuffered `write` per line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with writing(path.name, path):
            self._file = path.open("ab", buffering=0)

    @staticmethod
    def line(row: Row) -> str:
        """One row as a JSON line, newline included."""
        return json.dumps({k: _clean(v) for k, v in row.items()}, allow_nan=False) + "\n"

    def write(self, row: Row) -> None:
        data = self.line(row).encode()
        start = self._file.seek(0, os.SEEK_END)
        with writing(f"a row of {self.path.name}", self.path, len(data)):
            try:
                done = 0
                while done < len(data):  # a raw write may take only part
                    done += self._file.write(data[done:]) or 0
            except BaseException:
                os.ftruncate(self._file.fileno(), start)  # no partial row is left
                raise

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def read_metrics(path: Path) -> list[Row]:
    """Every complete row of a metrics file (a torn last line is skipped)."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


class NullWriter:
    """Writes nothing: the metrics writer of every rank but 0 in a multi-process run."""

    def write(self, row: Row) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        pass
