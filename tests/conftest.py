"""Shared fixtures: offline environment and a tiny untrained Qwen3 built from config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny Qwen3 + character tokenizer saved as a Hugging Face directory."""
    from gspo_cli.tiny import build_model, build_tokenizer

    path = tmp_path_factory.mktemp("tiny-model")
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id, seed=0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never read or write the user's ~/.cache/gspo from tests."""
    monkeypatch.setenv("GSPO_CACHE", str(session_cache(tmp_path_factory)))


def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test session's GSPO_CACHE: shared by every test, never the user's."""
    return tmp_path_factory.getbasetemp() / "gspo-cache"


@pytest.fixture(scope="session")
def warm_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded default, built and warm-started once (about 35 s) into the session cache."""
    from gspo_cli.tiny import ensure_tiny_model

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GSPO_CACHE", str(session_cache(tmp_path_factory)))
        return ensure_tiny_model(lambda _: None)
