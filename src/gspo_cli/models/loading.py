"""Loading a model and its tokenizer by hub id, local directory or embedded name: the
device and dtype, the tokenizer made ready for left-padded generation, and one-line errors
for a name that cannot be found or a directory whose files are damaged."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gspo_cli.base.errors import ModelError
from gspo_cli.models.tiny import EMBEDDED_MODELS, build_tokenizer, ensure_tiny_model, tiny_model_dir


def pick_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """`auto` is bf16 on CUDA with bf16 support and float32 otherwise."""
    if requested == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        requested
    ]


def check_model_source(name: str) -> str:
    """The name as a local directory or hub id; a local-looking path must exist."""
    if name in EMBEDDED_MODELS:
        return name
    looks_local = name.startswith((".", "/", "~")) or Path(name).exists()
    if looks_local and not Path(name).expanduser().is_dir():
        what = "is a file" if Path(name).expanduser().exists() else "no such directory exists"
        raise ModelError(
            f"model.name {name!r} looks like a local path but {what}; point it at a Hugging "
            "Face model directory (with config.json) or use a hub id"
        )
    return str(Path(name).expanduser()) if looks_local else name


def resolve_model_path(name: str, announce: Callable[[str], None]) -> str:
    """The embedded default's cached directory, or the name as given (hub id or local path)."""
    if name in EMBEDDED_MODELS:
        return str(ensure_tiny_model(announce, name))
    return check_model_source(name)


def _fix_tokenizer(tokenizer: Any, name: str) -> Any:
    """Pad on the left (generation), with EOS when there is no pad token; require an EOS."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:  # many causal LMs ship without one; EOS is safe with masks
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise ModelError(f"tokenizer of {name!r} has no EOS token; completions could never stop")
    return tokenizer


def load_error(name: str, exc: Exception, path: Path) -> ModelError:
    """One line on why a model or tokenizer did not load: a damaged file of a local
    directory named, else the library's first line (an OSError or ValueError: the name is
    wrong or the hub unreachable). Anything else is a bug and is raised as it is."""
    damaged = damaged_file(path)
    if damaged is not None:
        return ModelError(f"cannot load model {name!r}: {damaged}; copy or download it again")
    if not isinstance(exc, OSError | ValueError):
        raise exc
    first = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
    return ModelError(
        f"cannot load model {name!r}: {first}. If the hub is unreachable (offline), "
        "download it elsewhere and set model.name to its local directory"
    )


def load_tokenizer(name: str, announce: Callable[[str], None]) -> Any:
    """The tokenizer of model `name` alone, without loading (or, for the embedded default,
    building and warm-starting) the model: what preparing data needs."""
    from transformers import AutoTokenizer

    if name in EMBEDDED_MODELS and not (tiny_model_dir(name) / "config.json").is_file():
        return _fix_tokenizer(build_tokenizer(), name)
    path = resolve_model_path(name, announce)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise load_error(name, exc, Path(path)) from None
    return _fix_tokenizer(tokenizer, name)


def load_policy(
    name: str, dtype: str, device: torch.device, announce: Callable[[str], None]
) -> tuple[Any, Any]:
    """Load (model, tokenizer) by hub id or local path; the tokenizer pads on the left."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name, announce)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(dtype, device))
    except Exception as exc:
        raise load_error(name, exc, Path(path)) from None
    return model.to(device), _fix_tokenizer(tokenizer, name)


def damaged_file(directory: Path) -> str | None:
    """The first weights or JSON file of a local model directory that cannot be read
    (truncated or garbled), said in words; None when all read (or it is not a directory)."""
    from safetensors import safe_open

    if not directory.is_dir():
        return None
    for file in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as weights:
                weights.keys()
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            return f"{file} is damaged ({first})"
    for file in sorted(directory.glob("*.json")):
        try:
            json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return f"{file} is damaged (not valid JSON: {exc})"
    return None
