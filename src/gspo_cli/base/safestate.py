"""Trainer state in files that cannot run code: tensors in safetensors, the rest in JSON.

A state is a tree of dicts, lists, tuples, strings, numbers, booleans, None and tensors
(an optimiser's `state_dict()`, an LR scheduler's, RNG states, the data position).
`save_state(state, stem)` writes `stem.json` (the tree, each tensor replaced by a
reference) and `stem.safetensors` (the tensors); `load_state(stem)` rebuilds the tree.
Neither file can execute anything when read, unlike a pickle (`torch.save`), so a run
directory downloaded from someone else is safe to resume.

JSON spellings: a tensor is {"$tensor": key}, a tuple {"$tuple": [...]}, a dict whose keys
are not all strings {"$items": [[key, value], ...]}. A string key starting with "$" is
refused on saving, so the spellings never collide with data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from gspo_cli.base.storage import write_file_atomic, write_text_atomic

JSON_SUFFIX = ".json"
TENSORS_SUFFIX = ".safetensors"
_SCALARS = (str, int, float, bool, type(None))


class StateFormatError(ValueError):
    """A state file does not hold what `save_state` writes."""


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous()
        return {"$tensor": key}
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            if any(k.startswith("$") for k in value):
                raise TypeError(f"a state key may not start with '$': {sorted(value)[:3]}")
            return {k: _encode(v, tensors) for k, v in value.items()}
        return {"$items": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    raise TypeError(f"cannot store a {type(value).__name__} in a trainer state")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        raise StateFormatError(f"unexpected JSON value {type(value).__name__}")
    if value.keys() == {"$tensor"}:
        key = value["$tensor"]
        if not isinstance(key, str) or key not in tensors:
            raise StateFormatError(f"tensor {key!r} is not in the tensors file")
        return tensors[key]
    if value.keys() == {"$tuple"} and isinstance(value["$tuple"], list):
        return tuple(_decode(v, tensors) for v in value["$tuple"])
    if value.keys() == {"$items"} and isinstance(value["$items"], list):
        pairs = value["$items"]
        if not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise StateFormatError("a $items entry is not a [key, value] pair")
        return {_hashable(_decode(k, tensors)): _decode(v, tensors) for k, v in pairs}
    if any(k.startswith("$") for k in value):
        raise StateFormatError(f"unknown spelling {sorted(value)[:3]}")
    return {k: _decode(v, tensors) for k, v in value.items()}


def _hashable(key: Any) -> Any:
    if isinstance(key, list | dict | torch.Tensor):
        raise StateFormatError("a dict key is not a plain value")
    return key


def save_state(state: Any, stem: Path) -> list[Path]:
    """Write `stem.json` and `stem.safetensors` atomically; returns both paths."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    tree = json.dumps(_encode(state, tensors), indent=1)
    tensors_path = stem.with_name(stem.name + TENSORS_SUFFIX)
    json_path = stem.with_name(stem.name + JSON_SUFFIX)
    needed = sum(t.numel() * t.element_size() for t in tensors.values())
    write_file_atomic(tensors_path, lambda tmp: save_file(tensors, str(tmp)), needed=needed)
    write_text_atomic(json_path, tree)
    return [json_path, tensors_path]


def load_state(stem: Path) -> Any:
    """The state `save_state` wrote at `stem`. Raises StateFormatError (or OSError) on a
    missing or damaged file; never runs code from either file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    json_path = stem.with_name(stem.name + JSON_SUFFIX)
    tensors_path = stem.with_name(stem.name + TENSORS_SUFFIX)
    try:
        tree = json.loads(json_path.read_text(encoding="utf-8"))
        tensors = load_file(str(tensors_path))
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError) as exc:
        raise StateFormatError(f"{exc}") from None
    return _decode(tree, tensors)


def exists(stem: Path) -> bool:
    return stem.with_name(stem.name + JSON_SUFFIX).is_file()
