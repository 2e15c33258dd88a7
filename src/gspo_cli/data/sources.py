"""Reading a dataset source: a hub dataset id (`datasets.load_dataset(source, config,
split=...)`, imported only then), a local JSONL, JSON or Parquet file (10% of it, chosen
with a fixed seed, held out for the test split) or a folder holding `train`/`test` files."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gspo_cli.base.errors import DataError
from gspo_cli.data.example import SPLITS, Row, Split
from gspo_cli.recipe import DataSection

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


HOLDOUT_PERCENT = 10  # of a single-file source, held out as its test split


_HOLDOUT_SEED = 20250723


@dataclass(frozen=True)
class Source:
    """Where a recipe's rows come from, resolved; `fingerprint` enters the cache key."""

    kind: Literal["generated", "hub", "local"]
    name: str  # as written in the recipe (generated: the task)
    files: dict[str, tuple[Path, ...]]  # local: the files of each split (a single file: both)
    fingerprint: Any


def _looks_local(source: str) -> bool:
    """A path rather than a hub id (`owner/name`): it exists, starts like a path, ends in a
    data file suffix, or has more than one `/`."""
    return (
        source.startswith((".", "/", "~"))
        or Path(source).expanduser().exists()
        or source.endswith(LOCAL_SUFFIXES)
        or source.count("/") > 1
    )


def _names_split(path: Path, split: str) -> bool:
    stem = path.name[: -len(path.suffix)]
    return stem == split or stem.startswith((f"{split}-", f"{split}_", f"{split}."))


def split_files(folder: Path, split: str, config: str | None) -> tuple[Path, ...]:
    """The data files of one split in a folder (in `folder/<config>` when that exists)."""
    root = folder
    if config is not None:
        root = folder / config
        if not root.is_dir():
            raise DataError(
                f"data.config {config!r}: {folder} has no folder {config!r}; remove data.config "
                "or name one of its folders"
            )
    candidates = [
        p
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and p.suffix in LOCAL_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    found = tuple(p for p in candidates if _names_split(p, split))
    if not found:
        present = ", ".join(str(p.relative_to(root)) for p in candidates[:8]) or "none"
        raise DataError(
            f"{root}: no {split!r} split: expected {split}.jsonl, {split}.json, "
            f"{split}.parquet or {split}-*.parquet (data files there: {present}); set "
            "data.train_split / data.test_split to the split names it has"
        )
    folders = sorted({str(p.parent.relative_to(root)) for p in found})
    if len(folders) > 1:
        raise DataError(
            f"{root}: split {split!r} is in several folders ({', '.join(folders)}); set "
            "data.config to the folder to read"
        )
    return found


def locate_source(data: DataSection) -> Source:
    """Resolve the recipe's source: generated, a hub id, or local files (which must exist)."""
    if data.source is None:
        return Source("generated", data.task, {}, {"generated": data.task})
    if not _looks_local(data.source):
        return Source("hub", data.source, {}, {"hub": data.source, "config": data.config})
    path = Path(data.source).expanduser().resolve()
    if not path.exists():
        raise DataError(
            f"data.source {data.source!r}: no such file or folder; give a JSONL, JSON or "
            "Parquet file, a folder with train/test files, or a hub id such as openai/gsm8k"
        )
    if path.is_file():
        if path.suffix not in LOCAL_SUFFIXES:
            raise DataError(
                f"data.source {data.source!r}: {path.suffix or 'no suffix'} is not a data "
                "file; give a .jsonl, .json or .parquet file"
            )
        files: dict[str, tuple[Path, ...]] = {"train": (path,), "test": (path,)}
    else:
        files = {
            "train": split_files(path, data.train_split, data.config),
            "test": split_files(path, data.test_split, data.config),
        }
    used = sorted({p for paths in files.values() for p in paths})
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in used]
    return Source("local", data.source, files, {"local": str(path), "files": stats})


def read_file(path: Path) -> list[Row]:
    """The records of a JSONL, JSON (a list of objects, or JSON lines) or Parquet file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows: list[Any] = pq.read_table(path).to_pylist()
        except Exception as exc:
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot read it as UTF-8 text ({exc})") from None
        rows = _parse_json_records(path, text)
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise DataError(
                f"{path}: record {number} is a {type(row).__name__}, not an object with fields"
            )
    return rows


def _parse_json_records(path: Path, text: str) -> list[Any]:
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # perhaps JSON lines in a .json file
        if isinstance(data, list):
            return data
        if data is not None:
            raise DataError(f"{path}: expected a list of objects, got a {type(data).__name__}")
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {number} is not valid JSON ({exc.msg})") from None
    return rows


def read_hub(source: str, config: str | None, split: str) -> list[Row]:
    """One split of a hub dataset; a DataError that says the hub is unreachable when it is."""
    import datasets

    datasets.utils.logging.disable_progress_bar()
    try:
        dataset = datasets.load_dataset(source, config, split=split)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, ConnectionError) or "offline" in first.lower():
            raise DataError(
                f"data.source {source!r}: the hub is unreachable ({first}), and there is no "
                "local file or folder by that name; a local path works: download the dataset "
                "elsewhere and set data.source to its JSONL/JSON/Parquet file or folder"
            ) from None
        raise DataError(
            f"data.source {source!r} (config {config}, split {split!r}): cannot load it: {first}"
        ) from None
    rows: list[Row] = dataset.to_list()
    return rows


def _holdout(rows: list[Row]) -> dict[Split, list[Row]]:
    """A single file's rows split into train and a fixed-seed 10% test split (at least one)."""
    order = list(range(len(rows)))
    random.Random(_HOLDOUT_SEED).shuffle(order)
    n_test = max(1, len(rows) * HOLDOUT_PERCENT // 100)
    test = set(order[:n_test])
    return {
        "train": [r for i, r in enumerate(rows) if i not in test],
        "test": [r for i, r in enumerate(rows) if i in test],
    }


def read_rows(data: DataSection, source: Source) -> dict[Split, list[Row]]:
    """The raw records of both splits of a hub or local source."""
    names = {"train": data.train_split, "test": data.test_split}
    if source.kind == "hub":
        return {s: read_hub(source.name, data.config, names[s]) for s in SPLITS}
    if source.files["train"] == source.files["test"]:
        return _holdout(_local_rows(data, source.files["train"][0]))
    return {s: [row for f in source.files[s] for row in _local_rows(data, f)] for s in SPLITS}


def _local_rows(data: DataSection, path: Path) -> list[Row]:
    """A local file's records; a null question or answer is refused naming file and record
    (as text it would become the reference "None")."""
    rows = read_file(path)
    fields = [(data.prompt_field, "prompt_field"), (data.answer_field, "answer_field")]
    for number, row in enumerate(rows, 1):
        for field, key in fields:
            if field is not None and field in row and row[field] is None:
                raise DataError(
                    f"{path}: record {number} has {field}: null (data.{key}); give it a value "
                    "or remove the record"
                )
    return rows
