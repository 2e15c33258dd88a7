"""`prepare`: a recipe's task rendered for a tokenizer, cached, with a manifest.

Every Example's prompt is rendered as the model sees it (the tokenizer's chat template when it
has one), prompts over `data.max_prompt_tokens` are dropped and counted, and `train.jsonl`,
`test.jsonl` and `manifest.json` are written to `$GSPO_CACHE/prepared/<task>-<key>/`, where the
key hashes the data section (`eval_size` aside), the source's files and the tokenizer. The
directory is built under a temporary name and renamed when complete, so a reader sees all of it
or none; a repeat finds it and does nothing, and a damaged copy (content hash mismatch) is
rebuilt. `train` and `eval` call `load_task`, which prepares what is missing and says so.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from gspo_cli.base.errors import DataError
from gspo_cli.base.storage import staged_dir
from gspo_cli.data import (
    HOLDOUT_PERCENT,
    SPLITS,
    Example,
    Row,
    Source,
    Split,
    locate_source,
    render_prompt,
    source_examples,
)
from gspo_cli.recipe import DataSection
from gspo_cli.rundir.paths import prepared_root

Progress = Callable[[str, int, int], None]  # (split, rows done, rows in the split)

PREPARED_VERSION = 2  # bump when the prepared files' format changes: the cache key includes it
# 2: prompts rendered with enable_thinking=False (Qwen3 templates)
MANIFEST_FILE = "manifest.json"
_RENDER_CHUNK = 256  # prompts rendered and tokenized per progress update


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of what decides rendered prompts and their lengths: the tokenizer's model,
    normaliser, pre-tokenizer and special tokens (padding settings aside) and chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("padding", None)
        spec.pop("truncation", None)
        body = json.dumps(spec, sort_keys=True)
    else:
        body = json.dumps(sorted(tokenizer.get_vocab().items()))
    template = json.dumps(getattr(tokenizer, "chat_template", None), sort_keys=True)
    return hashlib.sha256(f"{body}\0{template}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SplitCounts:
    source_split: str  # the split's name in the source (or how it was made)
    rows: int  # examples read
    kept: int  # examples written
    dropped: int  # prompts over data.max_prompt_tokens
    prompt_tokens_max: int  # of the kept prompts
    prompt_tokens_mean: float


def render_split(
    examples: list[Example],
    tokenizer: Any,
    max_tokens: int,
    progress: Callable[[int, int], None],
) -> tuple[list[Row], int]:
    """Prepared rows (text, rendered prompt, reference, prompt_tokens) of the examples whose
    rendered prompt has at most `max_tokens` tokens (0: all), and how many were dropped."""
    rows: list[Row] = []
    dropped = 0
    for start in range(0, len(examples), _RENDER_CHUNK):
        chunk = examples[start : start + _RENDER_CHUNK]
        prompts = [render_prompt(tokenizer, e.prompt) for e in chunk]
        ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        for example, prompt, tokens in zip(chunk, prompts, ids, strict=True):
            if max_tokens and len(tokens) > max_tokens:
                dropped += 1
                continue
            rows.append(
                {
                    "text": example.prompt,
                    "prompt": prompt,
                    "reference": example.reference,
                    "prompt_tokens": len(tokens),
                }
            )
        progress(start + len(chunk), len(examples))
    return rows, dropped


@dataclass(frozen=True)
class ContextFit:
    """A model's context and the completion length a recipe reserves in it."""

    context: int  # the model's max_position_embeddings, in tokens
    new_tokens: int  # rollout.max_new_tokens

    @property
    def room(self) -> int:
        """The longest prompt whose completion still fits the context, in tokens."""
        return self.context - self.new_tokens


def fit_context(
    rows: dict[Split, list[Row]], fit: ContextFit, announce: Callable[[str], None]
) -> dict[Split, list[Row]]:
    """The rows whose prompt leaves room for `fit.new_tokens` in the context; the dropped
    ones counted in one announced line; a DataError when a split would be left empty."""
    kept = {s: [r for r in rows[s] if r["prompt_tokens"] <= fit.room] for s in rows}
    why = (
        f"{fit.room} tokens (model context {fit.context} - rollout.max_new_tokens {fit.new_tokens})"
    )
    for split in rows:
        if rows[split] and not kept[split]:
            raise DataError(
                f"all {len(rows[split])} {split} prompts are longer than {why}, so none could "
                "be completed within the context; lower rollout.max_new_tokens"
            )
    dropped = [
        f"{len(rows[s]) - len(kept[s])} of {len(rows[s])} {s}"
        for s in rows
        if len(kept[s]) < len(rows[s])
    ]
    if dropped:
        announce(
            f"dropped {' and '.join(dropped)} prompts longer than {why}; lower "
            "rollout.max_new_tokens to keep them"
        )
    return kept


# --- prepare ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    directory: Path
    manifest: dict[str, Any]
    status: Literal["reused", "built", "rebuilt"]

    def counts(self) -> dict[str, SplitCounts]:
        return {s: SplitCounts(**self.manifest["splits"][s]) for s in SPLITS}


def prepared_dir(data: DataSection, source: Source, fingerprint: str) -> Path:
    """`$GSPO_CACHE/prepared/<task>-<key>`: the key hashes everything the content depends on."""
    material = {
        "version": PREPARED_VERSION,
        "data": data.model_dump(mode="json", exclude={"eval_size"}),
        "source": source.fingerprint,
        "tokenizer": fingerprint,
    }
    key = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:12]
    return prepared_root() / f"{data.task}-{key}"


def content_hash(directory: Path) -> str:
    """sha256 over the prepared split files, in split order."""
    digest = hashlib.sha256()
    for split in SPLITS:
        digest.update(split.encode())
        digest.update((directory / f"{split}.jsonl").read_bytes())
    return digest.hexdigest()


def _reusable(directory: Path) -> dict[str, Any] | None:
    """The manifest of a complete, undamaged prepared directory, else None."""
    try:
        manifest: dict[str, Any] = json.loads((directory / MANIFEST_FILE).read_text("utf-8"))
        return manifest if manifest.get("content_hash") == content_hash(directory) else None
    except (OSError, ValueError):
        return None


def prepare(
    data: DataSection,
    tokenizer: Any,
    *,
    model_name: str,
    force: bool = False,
    announce: Callable[[str], None] = lambda text: None,
    progress: Progress = lambda split, done, total: None,
) -> Prepared:
    """Prepare the recipe's data for this tokenizer, or reuse an identical earlier result."""
    started = time.perf_counter()
    source = locate_source(data)
    fingerprint = tokenizer_fingerprint(tokenizer)
    target = prepared_dir(data, source, fingerprint)
    existing = _reusable(target) if target.exists() else None
    if existing is not None and not force:
        return Prepared(target, existing, "reused")
    status: Literal["built", "rebuilt"] = "rebuilt" if target.exists() else "built"
    why = "--force" if existing is not None else "its files were incomplete or changed"
    origin = "generated in code" if source.kind == "generated" else f"from {source.name}"
    announce(
        f"rebuilding the prepared {data.task} data in {target} ({why})"
        if status == "rebuilt"
        else f"preparing {data.task} data ({origin}) for this tokenizer in {target}"
    )
    splits, rendered = _render_splits(data, source, tokenizer, progress)
    manifest = {
        "version": PREPARED_VERSION,
        "task": data.task,
        "source": source.name,
        "source_kind": source.kind,
        "source_fingerprint": source.fingerprint,
        "model": model_name,
        "tokenizer": fingerprint,
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "splits": splits,
        "recipe": {"data": data.model_dump(mode="json"), "model": {"name": model_name}},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write_prepared(target, rendered, manifest, started)
    return Prepared(target, json.loads((target / MANIFEST_FILE).read_text("utf-8")), status)


def _render_splits(
    data: DataSection, source: Source, tokenizer: Any, progress: Progress
) -> tuple[dict[str, Any], dict[str, list[Row]]]:
    """Each split's rows rendered for the tokenizer (over-long prompts dropped) and its
    counts for the manifest; a DataError when a split would be left empty."""
    examples = source_examples(data, source)
    names = _source_split_names(data, source)
    splits: dict[str, Any] = {}
    rendered: dict[str, list[Row]] = {}
    for split in SPLITS:
        total = len(examples[split])
        rows, dropped = render_split(
            examples[split], tokenizer, data.max_prompt_tokens, functools.partial(progress, split)
        )
        if not rows:
            raise DataError(
                f"every prompt of the {split} split ({total}) is longer than "
                f"data.max_prompt_tokens {data.max_prompt_tokens}; raise it"
            )
        lengths = [r["prompt_tokens"] for r in rows]
        splits[split] = asdict(
            SplitCounts(
                names[split], total, len(rows), dropped, max(lengths), sum(lengths) / len(lengths)
            )
        )
        rendered[split] = rows
    return splits, rendered


def _source_split_names(data: DataSection, source: Source) -> dict[Split, str]:
    if source.kind == "generated":
        return {"train": "generated", "test": "generated (fixed seed)"}
    if source.kind == "local" and source.files["train"] == source.files["test"]:
        return {"train": f"{100 - HOLDOUT_PERCENT}% of the file", "test": "held out"}
    return {"train": data.train_split, "test": data.test_split}


def _write_prepared(
    target: Path, rendered: dict[str, list[Row]], manifest: dict[str, Any], started: float
) -> None:
    """Write the splits and the manifest into a staging directory, then rename it to target
    (a full disk: one line, and no staging directory left)."""
    try:
        with staged_dir(target, "the prepared data") as staging:
            for split, rows in rendered.items():
                with (staging / f"{split}.jsonl").open("w", encoding="utf-8") as handle:
                    for row in rows:
                        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            manifest["content_hash"] = content_hash(staging)
            manifest["seconds"] = round(time.perf_counter() - started, 3)
            (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
    except OSError:  # another process prepared the same data meanwhile: keep theirs
        if _reusable(target) is None:
            raise


def _split_rows(prepared: Prepared, split: Split) -> list[Row]:
    path = prepared.directory / f"{split}.jsonl"
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_split(prepared: Prepared, split: Split) -> list[Example]:
    """The Examples of a prepared split, in order."""
    return [Example(row["text"], row["reference"]) for row in _split_rows(prepared, split)]


def summary_line(prepared: Prepared) -> str:
    """One line on a prepared directory: examples kept per split, dropped ones, where."""
    counts = prepared.counts()
    parts = [f"{s} {counts[s].kept}" for s in SPLITS]
    dropped = sum(c.dropped for c in counts.values())
    limit = prepared.manifest["recipe"]["data"]["max_prompt_tokens"]
    note = f" ({dropped} over {limit} prompt tokens dropped)" if dropped else ""
    task = prepared.manifest["task"]
    return f"{task} data: {', '.join(parts)} examples{note} in {prepared.directory}"


def load_task(
    data: DataSection,
    tokenizer: Any,
    model_name: str,
    announce: Callable[[str], None],
    fit: ContextFit | None = None,
) -> tuple[Prepared, dict[Split, list[Example]]]:
    """Both splits of the recipe's task, prepared first when they are not yet (and said so);
    with `fit`, without the prompts that leave no room for a completion in the context."""
    prepared = prepare(data, tokenizer, model_name=model_name, announce=announce)
    if prepared.status != "reused":
        announce(f"prepared {summary_line(prepared)}")
    rows = {s: _split_rows(prepared, s) for s in SPLITS}
    if fit is not None:
        rows = fit_context(rows, fit, announce)
    return prepared, {s: [Example(r["text"], r["reference"]) for r in rows[s]] for s in SPLITS}
